package acmetls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"
)

// GetCertificate returns the certificate for a TLS handshake; use it as
// tls.Config.GetCertificate, or take [Manager.TLSConfig].
//
// A certificate in memory is returned without allocating or taking a
// lock. Otherwise storage is read, once per name however many
// handshakes wait; if storage has nothing usable and the name is managed
// or allowed on demand, the certificate is obtained from the CA: the key
// type this client supports first, the others in the background. Waiting
// handshakes give up when their context, hello.Context(), ends.
//
// It refuses server names that are not valid DNS names with a [*NameError],
// and names it may not obtain with an error wrapping [ErrNotManaged].
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if err := m.init(); err != nil {
		return nil, err
	}
	challenge := isChallengeHello(hello)
	if !challenge {
		// Only normalized names are cached: a name found in the cache
		// needs no further checks.
		if p := m.cache.get(hello.ServerName); p != nil {
			if c := p.choose(hello); c != nil {
				return c, nil
			}
		}
	}
	name, err := normalizeName(hello.ServerName)
	if err != nil {
		return nil, err
	}
	if challenge {
		return m.alpnCert(helloContext(hello), name)
	}
	return m.getCertificateSlow(forHandshake(helloContext(hello)), hello, name)
}

// helloContext returns the handshake's context; a ClientHelloInfo built by
// hand has none.
func helloContext(hello *tls.ClientHelloInfo) context.Context {
	if ctx := hello.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// getCertificateSlow serves a name the cache cannot: storage first, then
// the CA.
func (m *Manager) getCertificateSlow(ctx context.Context, hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	cached := m.cache.lookup(name, true)
	if cached != nil {
		if c := cached.choose(hello); c != nil {
			return c, nil
		}
	}
	// A certificate whose first issuance is backing off, or a name that
	// the policy recently denied, is not looked up again.
	key := name
	if cached != nil {
		key = ""
		if kt := m.missingKeyType(hello, cached); kt != "" {
			key = failingKey(name, cached, kt)
		}
	}
	if key != "" {
		if err := m.failing.check(key, m.now()); err != nil {
			return nil, err
		}
	}
	if !m.isManaged(name) {
		if err := m.denied.check(name, m.now()); err != nil {
			return nil, err
		}
	}
	p, err := m.loads.Do(ctx, name, func(ctx context.Context) (*certPair, error) {
		return m.loadStored(ctx, name)
	})
	if err != nil {
		return nil, err
	}
	if p != nil {
		if c := p.choose(hello); c != nil {
			return c, nil
		}
	}
	kt := m.missingKeyType(hello, p)
	if kt == "" {
		// Every configured type is cached, and the fast check accepted
		// none: let crypto/tls decide, and fail with its own error.
		return fallbackChoice(hello, p)
	}
	if err := m.allowed(ctx, name); err != nil {
		return nil, err
	}
	c, err := m.certFor(ctx, name, kt)
	if err != nil {
		var bo *backingOffError
		if errors.As(err, &bo) {
			// Storage holds no certificate of this type, and the CA may
			// not be asked yet: later handshakes that need it fail
			// without reading storage, for a while. Briefly, as another
			// frontend may obtain it.
			now := m.now()
			m.failing.remember(failingKey(name, p, kt), err, minTime(bo.next, now.Add(failingMemory)))
		}
		return nil, err
	}
	cached = m.cache.get(name)
	for _, other := range m.keyTypes() {
		if other != kt && (cached == nil || cached.get(other) == nil) {
			m.obtains.Go(ctx, name+"/"+string(other), func(ctx context.Context) (*tls.Certificate, error) {
				return m.loadOrObtain(ctx, name, other)
			})
		}
	}
	return c, nil
}

// failingKey is the key under which failing remembers a failed first
// issuance of kt for name, while p is cached for it: the name alone when
// nothing is, so that no handshake for it reads storage; the name and the
// key type otherwise, so that only the clients that need that type wait.
func failingKey(name string, p *certPair, kt KeyType) string {
	if p == nil {
		// Nothing to serve any client: one key for the name.
		return name
	}
	return name + "/" + string(kt)
}

// forgetFailing forgets the failed first issuances of name, of every key
// type.
func (m *Manager) forgetFailing(name string) {
	m.failing.forget(name)
	for _, kt := range m.keyTypes() {
		m.failing.forget(name + "/" + string(kt))
	}
}

// loadStored reads every key type of name from storage into the cache.
func (m *Manager) loadStored(ctx context.Context, name string) (*certPair, error) {
	var p *certPair
	for _, kt := range m.keyTypes() {
		c, err := m.loadCert(ctx, name, kt)
		if err != nil {
			return p, err
		}
		if c != nil {
			p = p.with(kt, c)
		}
	}
	return p, nil
}

// missingKeyType returns the first configured key type that the client
// supports and that p lacks, or "" if there is none.
func (m *Manager) missingKeyType(hello *tls.ClientHelloInfo, p *certPair) KeyType {
	var firstMissing KeyType
	for _, kt := range m.keyTypes() {
		if p != nil && p.get(kt) != nil {
			continue
		}
		if supports(hello, kt) {
			return kt
		}
		if firstMissing == "" {
			firstMissing = kt
		}
	}
	if p == nil {
		// Nothing stored and no type fits as far as the fast check can
		// tell: obtain the preferred type; crypto/tls has the last word.
		return firstMissing
	}
	return ""
}

// fallbackChoice asks crypto/tls which cached certificate the client
// supports; it handles what the fast check does not (GODEBUG settings,
// FIPS mode).
func fallbackChoice(hello *tls.ClientHelloInfo, p *certPair) (*tls.Certificate, error) {
	var firstErr error
	for _, c := range []*tls.Certificate{p.ecdsa, p.rsa} {
		if c == nil {
			continue
		}
		err := hello.SupportsCertificate(c)
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, fmt.Errorf("acmetls: client for %q supports none of the certificate key types: %w", hello.ServerName, firstErr)
}

// denials remembers names the on-demand policy refused, briefly, so that a
// flood of handshakes for unknown names costs one decision each.
type denials struct {
	mu     sync.Mutex // guards byName
	byName map[string]denial
}

type denial struct {
	err   error
	until time.Time
}

// maxDenials bounds the memory a flood of random names can take.
const maxDenials = 10_000

// failingMemory is how long a frontend answers handshakes that wait on a
// first issuance that backs off without looking at storage: at most one
// storage read per name (and key type) and minute, and a certificate
// another frontend obtained meanwhile is served within a minute.
const failingMemory = time.Minute

func (d *denials) check(name string, now time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.byName[name]; ok {
		if now.Before(e.until) {
			return e.err
		}
		delete(d.byName, name)
	}
	return nil
}

// forget drops what is remembered of name.
func (d *denials) forget(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.byName, name)
}

func (d *denials) remember(name string, err error, until time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byName == nil || len(d.byName) >= maxDenials {
		d.byName = make(map[string]denial)
	}
	d.byName[name] = denial{err: err, until: until}
}
