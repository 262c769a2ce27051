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
	mu   sync.RWMutex                // guards http and alpn
	http map[string]string           // token -> key authorization
	alpn map[string]*tls.Certificate // name -> tls-alpn-01 certificate
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
		return s.m.store.Store(ctx, storage.HTTPChallengeKey(chal.Token), b)
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
		return s.m.store.Store(ctx, storage.TLSALPNChallengeKey(chal.Identifier.Value), b)
	}
	return fmt.Errorf("acmetls: unsupported challenge type %q", chal.Type)
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

// httpAnswer returns the key authorization for an http-01 token, from
// memory and then from storage. A string that cannot be a token is no
// pending challenge, without a storage read.
func (m *Manager) httpAnswer(ctx context.Context, token string) (string, error) {
	if !storage.ValidToken(token) {
		return "", errNoChallenge
	}
	m.chal.mu.RLock()
	ka, ok := m.chal.http[token]
	m.chal.mu.RUnlock()
	if ok {
		return ka, nil
	}
	rec, err := m.loadChallenge(ctx, storage.HTTPChallengeKey(token))
	if err != nil {
		return "", err
	}
	if rec.Token != token {
		return "", errNoChallenge // a record for a token that differs in case only
	}
	return rec.KeyAuthorization, nil
}

// alpnCert returns the tls-alpn-01 certificate for name, from memory and
// then from storage.
func (m *Manager) alpnCert(ctx context.Context, name string) (*tls.Certificate, error) {
	m.chal.mu.RLock()
	cert, ok := m.chal.alpn[name]
	m.chal.mu.RUnlock()
	if ok {
		return cert, nil
	}
	rec, err := m.loadChallenge(ctx, storage.TLSALPNChallengeKey(name))
	if err != nil {
		return nil, err
	}
	if rec.Identifier != name {
		return nil, fmt.Errorf("acmetls: stored tls-alpn-01 answer is for %q, not %q", rec.Identifier, name)
	}
	return acmez.TLSALPN01ChallengeCert(acme.Challenge{
		Type:             acme.ChallengeTypeTLSALPN01,
		Identifier:       acme.Identifier{Type: "dns", Value: name},
		Token:            rec.Token,
		KeyAuthorization: rec.KeyAuthorization,
	})
}

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
