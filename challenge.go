package acmetls

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/acmetls/acmetls/storage"
)

const acmeTLS1Protocol = "acme-tls/1"

// challenges holds the answers to the challenges this process presented.
// The same answers are written to storage, so a sibling process that the
// CA reaches instead answers too.
type challenges struct {
	mu    sync.RWMutex                // guards http and alpn
	http  map[string]string           // token -> key authorization
	alpn  map[string]*tls.Certificate // name -> tls-alpn-01 certificate
	reads tokenBucket                 // storage reads for names not served
}

// isChallengeHello reports whether hello is a tls-alpn-01 validation: a
// ClientHello whose only protocol is acme-tls/1 (RFC 8737 §3).
func isChallengeHello(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmeTLS1Protocol
}

// solver answers http-01 and tls-alpn-01 challenges for a Manager.
type solver struct{ m *Manager }

var _ acmez.Solver = solver{}

// Present publishes the answer in memory and in storage. An answer storage
// refuses fails the challenge before the CA is asked to validate: in a
// fleet, the CA may reach a frontend that could not read it, and a failed
// validation counts against the CA's limits.
func (s solver) Present(ctx context.Context, chal acme.Challenge) error {
	rec := storage.ChallengeRecord{
		Type:             chal.Type,
		Identifier:       chal.Identifier.Value,
		Token:            chal.Token,
		KeyAuthorization: chal.KeyAuthorization,
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	c := &s.m.chal
	switch chal.Type {
	case acme.ChallengeTypeHTTP01:
		c.mu.Lock()
		if c.http == nil {
			c.http = make(map[string]string)
		}
		c.http[chal.Token] = chal.KeyAuthorization
		c.mu.Unlock()
		return storeAnswer(ctx, s.m, storage.HTTPChallengeKey(chal.Token), b)
	case acme.ChallengeTypeTLSALPN01:
		cert, err := acmez.TLSALPN01ChallengeCert(chal)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if c.alpn == nil {
			c.alpn = make(map[string]*tls.Certificate)
		}
		c.alpn[chal.Identifier.Value] = cert
		c.mu.Unlock()
		return storeAnswer(ctx, s.m, storage.TLSALPNChallengeKey(chal.Identifier.Value), b)
	}
	return fmt.Errorf("acmetls: unsupported challenge type %q", chal.Type)
}

// storeAnswer writes a challenge answer for the fleet; storage refusing it
// is a storage failure, not the name's.
func storeAnswer(ctx context.Context, m *Manager, key string, b []byte) error {
	if err := m.store.Store(ctx, key, b); err != nil {
		return &storageError{op: "storing the challenge answer " + key, err: err}
	}
	return nil
}

// CleanUp withdraws the answer from memory and storage.
func (s solver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	c := &s.m.chal
	switch chal.Type {
	case acme.ChallengeTypeHTTP01:
		c.mu.Lock()
		delete(c.http, chal.Token)
		c.mu.Unlock()
		return s.m.store.Delete(ctx, storage.HTTPChallengeKey(chal.Token))
	case acme.ChallengeTypeTLSALPN01:
		c.mu.Lock()
		delete(c.alpn, chal.Identifier.Value)
		c.mu.Unlock()
		return s.m.store.Delete(ctx, storage.TLSALPNChallengeKey(chal.Identifier.Value))
	}
	return nil
}

// httpAnswer returns the key authorization for an http-01 token asked for
// host, from memory and then from storage (see mayReadAnswer). A string
// that cannot be a token is no pending challenge, without a storage read.
func (m *Manager) httpAnswer(ctx context.Context, host, token string) (string, error) {
	if !storage.ValidToken(token) {
		return "", errNoChallenge
	}
	m.chal.mu.RLock()
	ka, ok := m.chal.http[token]
	m.chal.mu.RUnlock()
	if ok {
		return ka, nil
	}
	if name, err := normalizeName(host); err != nil || !m.mayReadAnswer(ctx, name) {
		return "", errNoChallenge
	}
	rec, err := m.loadChallenge(ctx, storage.HTTPChallengeKey(token))
	if err != nil {
		return "", err
	}
	if rec.Token != token {
		return "", errNoChallenge // a record for a token that differs in case only
	}
	m.pending(host)
	return rec.KeyAuthorization, nil
}

// alpnCert returns the tls-alpn-01 certificate for name, from memory and
// then from storage (see mayReadAnswer).
func (m *Manager) alpnCert(ctx context.Context, name string) (*tls.Certificate, error) {
	if ip, ok := reverseIP(name); ok {
		name = ip // the validation of an IP address names it in reverse
	}
	m.chal.mu.RLock()
	cert, ok := m.chal.alpn[name]
	m.chal.mu.RUnlock()
	if ok {
		return cert, nil
	}
	if !m.mayReadAnswer(ctx, name) {
		return nil, errNoChallenge
	}
	rec, err := m.loadChallenge(ctx, storage.TLSALPNChallengeKey(name))
	if err != nil {
		return nil, err
	}
	if rec.Identifier != name {
		return nil, fmt.Errorf("acmetls: stored tls-alpn-01 answer is for %q, not %q", rec.Identifier, name)
	}
	m.pending(name)
	return acmez.TLSALPN01ChallengeCert(acme.Challenge{
		Type:             acme.ChallengeTypeTLSALPN01,
		Identifier:       acme.Identifier{Type: "dns", Value: name},
		Token:            rec.Token,
		KeyAuthorization: rec.KeyAuthorization,
	})
}

// mayReadAnswer reports whether storage may be read for a challenge
// answer for name. A name this Manager would serve itself (managed,
// allowed on demand, perhaps stored) may be in validation by another
// process: always. Any other name could be too, if the frontends of a
// fleet are told different names, but a validation request costs a client
// nothing: such reads are limited to a few a second for the process, so
// that random names are not load on the shared database.
func (m *Manager) mayReadAnswer(ctx context.Context, name string) bool {
	if m.isManaged(name) || m.mayBeStored(name) {
		return true
	}
	if m.denied.check(name, m.now()) == nil && m.allowed(ctx, name) == nil {
		return true
	}
	return m.chal.reads.allow(m.now())
}

// pending notes that another process is validating host, whose answer
// this one gave from storage: storage will hold its certificate soon, so
// handshakes for it read storage, whatever the last listing said.
func (m *Manager) pending(host string) {
	if name, err := normalizeName(host); err == nil {
		m.names.add(name)
	}
}

// The bound on storage reads for challenge answers for names this
// Manager would not serve.
const (
	answerReadsPerSecond = 5
	answerReadsBurst     = 20
)

// errNoChallenge is returned when no challenge is pending for a token or
// name.
var errNoChallenge = errors.New("acmetls: no pending challenge")

func (m *Manager) loadChallenge(ctx context.Context, key string) (*storage.ChallengeRecord, error) {
	b, err := m.store.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoChallenge
	}
	if err != nil {
		return nil, fmt.Errorf("acmetls: loading challenge answer: %w", err)
	}
	return storage.ParseChallengeRecord(b)
}
