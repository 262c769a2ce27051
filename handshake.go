package acmetls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
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
// handshakes give up when their context, hello.Context(), ends, and after
// 30 seconds at most; an issuance that nobody waits for any more is
// dropped unless it has reached the CA.
//
// A Manager whose [Manager.Run] is not running maintains its
// certificates from here: a handshake that finds anything due starts,
// in the background, the renewals and staple work Run would do. Until
// the renewal is done, the certificate in memory is served, even expired.
//
// It refuses server names that are not valid DNS names with a [*NameError],
// and names it may not obtain with an error wrapping [ErrNotManaged].
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if err := m.init(); err != nil {
		return nil, err
	}
	challenge := isChallengeHello(hello)
	sni := hello.ServerName
	if sni == "" {
		sni = m.noServerName(hello)
	}
	if !challenge && len(sni) <= maxNameLen {
		// Only normalized names are cached: a name found in the cache
		// needs no further checks.
		if p := m.cache.get(sni); p != nil {
			if c := p.choose(hello); c != nil {
				if m.running.Load() == 0 && m.sched.due.Load() {
					m.unattended()
				}
				m.stats.count(fromMemory, hello)
				return c, nil
			}
		}
	}
	name, err := normalizeName(sni)
	if err != nil {
		if sni == "" || !isIP(sni) || !m.isManaged(sni) {
			m.stats.count(refused, hello)
			return nil, err
		}
		name = sni // an IP address given to ManageSync
	}
	if challenge {
		return m.alpnCert(helloContext(hello), name)
	}
	if m.running.Load() == 0 && m.sched.due.Load() {
		m.unattended()
	}
	cached := m.cache.lookup(name, true)
	if cached != nil {
		if c := cached.choose(hello); c != nil {
			m.stats.count(fromMemory, hello)
			return c, nil
		}
	}
	c, err := m.getCertificateSlow(helloContext(hello), hello, name, cached)
	if err != nil {
		m.stats.count(refused, hello)
		return nil, err
	}
	m.stats.count(loaded, hello)
	return c, nil
}

// noServerName is the name served to a client that sent none:
// DefaultServerName, else the address the client dialed if it is an IP
// address given to ManageSync, else none.
func (m *Manager) noServerName(hello *tls.ClientHelloInfo) string {
	if m.DefaultServerName != "" || hello.Conn == nil {
		return m.DefaultServerName
	}
	if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
		if addr, ok := netip.AddrFromSlice(a.IP); ok {
			if ip := addr.Unmap().String(); m.isManaged(ip) {
				return ip
			}
		}
	}
	return ""
}

// handshakeWait is the longest a handshake waits for storage or the CA.
// crypto/tls does not tell a handshake that its client left, so this is
// how a first issuance learns that nobody waits for it any more: one that
// has not reached the CA yet is then dropped (one at the CA finishes, for
// the next client).
const handshakeWait = 30 * time.Second

func (m *Manager) handshakeWait() time.Duration {
	if m.handshakeTimeout > 0 {
		return m.handshakeTimeout
	}
	return handshakeWait
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
// the CA. A name that is neither managed nor stored (as far as the listing
// of stored names tells) is put to the on-demand policy before anything
// else, so a refusal reads no storage. cached is what the cache holds of
// name, with no certificate this client accepts.
func (m *Manager) getCertificateSlow(ctx context.Context, hello *tls.ClientHelloInfo, name string, cached *certPair) (*tls.Certificate, error) {
	now := m.now()
	kt := m.missingKeyType(hello, cached)
	if cached != nil && kt == "" {
		// Every configured type is cached, and the fast check accepted
		// none: let crypto/tls decide, and fail with its own error.
		return fallbackChoice(hello, cached)
	}
	// A first issuance backing off is not looked up again for a while.
	if err := m.failing.check(failingKey(name, cached, kt), now); err != nil {
		return nil, err
	}
	managed, decided := m.isManaged(name), false
	if !managed {
		if err := m.denied.check(name, now); err != nil {
			return nil, err
		}
		if cached == nil && !m.mayBeStored(name) {
			// Only the policy can make this name servable.
			if err := m.allowed(ctx, name); err != nil {
				return nil, err
			}
			decided = true
		}
	}
	// From here on the handshake waits for storage or the CA.
	ctx, cancel := context.WithTimeout(forHandshake(ctx), m.handshakeWait())
	defer cancel()
	p := cached
	if !decided {
		var err error
		p, err = m.loads.Do(ctx, name, func(ctx context.Context) (*certPair, error) {
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
		if kt = m.missingKeyType(hello, p); kt == "" {
			return fallbackChoice(hello, p)
		}
		if !managed {
			if err := m.allowed(ctx, name); err != nil {
				// Storage was read for it: remember the refusal.
				m.denied.remember(name, err, now.Add(m.OnDemand.denialTTL()))
				return nil, err
			}
		}
	}
	c, err := m.certFor(ctx, name, kt)
	if err != nil {
		var bo *backingOffError
		if errors.As(err, &bo) {
			// Storage holds no certificate of this type, and the CA may
			// not be asked yet: later handshakes that need it fail
			// without reading storage, for a while. Briefly, as another
			// frontend may obtain it.
			m.failing.remember(failingKey(name, p, kt), err, minTime(bo.next, now.Add(failingMemory)))
		}
		return nil, err
	}
	cached = m.cache.get(name)
	for _, other := range m.keyTypes() {
		if other != kt && (cached == nil || cached.get(other) == nil) {
			m.obtains.Go(inBackground(ctx), name+"/"+string(other), func(ctx context.Context) (*tls.Certificate, error) {
				return m.loadOrObtain(ctx, name, other)
			})
		}
	}
	return c, nil
}

// loadStored reads every key type of name from storage into the cache;
// if storage holds none for name, the wildcard of its parent, if the
// listing of stored names says it holds that (one another process
// obtained, or this one before a restart).
func (m *Manager) loadStored(ctx context.Context, name string) (*certPair, error) {
	p, err := m.loadStoredExact(ctx, name)
	if p != nil || err != nil || strings.HasPrefix(name, "*.") || isIP(name) {
		return p, err
	}
	_, parent, ok := splitFirstLabel(name)
	if !ok || !strings.Contains(parent, ".") {
		return nil, nil
	}
	if maybe, known := m.names.mayHold(name); !known || !maybe {
		// The listing says no wildcard is stored either, or is not
		// taken yet: one read per unknown name until it is.
		return nil, nil
	}
	return m.loadStoredExact(ctx, "*."+parent)
}

// loadStoredExact reads every key type of name from storage into the
// cache.
func (m *Manager) loadStoredExact(ctx context.Context, name string) (*certPair, error) {
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
