package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/ocsp"
	"github.com/acmetls/acmetls/storage"
)

// minStapleRefresh is the least time between two fetches of a staple,
// whatever a responder's validity periods.
const minStapleRefresh = 5 * time.Second

// stapleFetchTimeout bounds a fetch made while a certificate is loaded or
// obtained; Run retries later what did not come in time.
const stapleFetchTimeout = 5 * time.Second

// stapling is when a certificate's staple is next fetched (zero: the
// certificate names no responder) and until when the one attached is good
// (zero: none attached).
type stapling struct{ next, until, at time.Time }

// unixOrZero is t in Unix seconds, zero for the zero time.
func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// handshakeKey marks a context whose work a handshake waits for.
type handshakeKey struct{}

// forHandshake returns ctx marked as a handshake's: a staple not in storage
// is then fetched in the background rather than waited for.
func forHandshake(ctx context.Context) context.Context {
	return context.WithValue(ctx, handshakeKey{}, true)
}

// staple attaches an OCSP staple to cc, the compact form of c, if c's leaf
// names a responder: the stored staple if it checks, else a fresh one from
// the responder, checked and stored. A revoked status is returned as such,
// and the certificate must be replaced.
//
// For a handshake (see forHandshake), a staple not in storage is not
// waited for, unless the certificate requires one (MustStaple): staple
// returns later, and the caller fetches it in the background once the
// certificate is tracked. A responder that is slow or down never delays a
// handshake.
func (m *Manager) staple(ctx context.Context, name string, kt KeyType, c, cc *tls.Certificate) (st stapling, revoked *ocsp.Response, later bool) {
	if ocsp.Responder(c.Leaf) == "" {
		return stapling{}, nil, false
	}
	now := m.now()
	issuer, err := issuerOf(c)
	if err != nil {
		m.logger().Named("ocsp").Warn("no issuer to check staples against", zapName(name), zapErr(err))
		return stapling{}, nil, false
	}
	attach := func(r *ocsp.Response, der []byte) stapling {
		cc.OCSPStaple = der
		return stapling{next: m.stapleRefresh(r, now), until: stapleUntil(r), at: r.ThisUpdate}
	}
	if der, err := m.store.Load(ctx, storage.StapleKey(name, string(kt))); err == nil {
		if r, err := ocsp.Check(der, c.Leaf, issuer, now); err == nil && servable(r, now) {
			return attach(r, der), nil, false
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		m.logger().Named("ocsp").Warn("loading staple", zapName(name), zapErr(err))
	}
	if ctx.Value(handshakeKey{}) != nil && !m.MustStaple {
		// Run fetches it if the background fetch fails.
		return stapling{next: now.Add(time.Minute)}, nil, true
	}
	fctx, cancel := context.WithTimeout(ctx, stapleFetchTimeout)
	defer cancel()
	r, der, err := m.fetchStaple(fctx, name, kt, c.Leaf, issuer)
	switch {
	case err != nil:
		m.logger().Named("ocsp").Warn("fetching staple", zapName(name), zapKeyType(kt), zapErr(err))
		return stapling{next: now.Add(time.Minute)}, nil, false
	case r.Status == ocsp.Revoked:
		return stapling{next: now}, r, false
	case servable(r, now):
		return attach(r, der), nil, false
	}
	return stapling{next: m.stapleRefresh(r, now)}, nil, false
}

// stapleRefresh is when to fetch again after r: its middle, jittered, and
// never sooner than minStapleRefresh.
func (m *Manager) stapleRefresh(r *ocsp.Response, now time.Time) time.Time {
	return maxTime(ocsp.RefreshAt(r, rand.Float64()), now.Add(minStapleRefresh))
}

// fetchStaple asks the responder, checks the answer and stores it if it
// may be stapled.
//
// A frontend of a validation server asks no responder: it reads the
// staple the validation server stored, and checks it the same way.
func (m *Manager) fetchStaple(ctx context.Context, name string, kt KeyType, leaf, issuer *x509.Certificate) (*ocsp.Response, []byte, error) {
	var der []byte
	var err error
	if m.Validator != nil {
		der, err = m.store.Load(ctx, storage.StapleKey(name, string(kt)))
	} else {
		der, err = ocsp.Fetch(ctx, m.ocspHTTP, leaf, issuer)
	}
	if err != nil {
		return nil, nil, err
	}
	r, err := ocsp.Check(der, leaf, issuer, m.now())
	if err != nil {
		return nil, nil, err
	}
	if r.Status == ocsp.Good && m.Validator == nil {
		if err := m.store.Store(ctx, storage.StapleKey(name, string(kt)), der); err != nil {
			m.logger().Named("ocsp").Warn("storing staple", zapName(name), zapErr(err))
		}
	}
	return r, der, nil
}

// issuerOf parses the certificate after the leaf in c's chain.
func issuerOf(c *tls.Certificate) (*x509.Certificate, error) {
	if len(c.Certificate) < 2 {
		return nil, errors.New("the chain has no issuer certificate")
	}
	return x509.ParseCertificate(c.Certificate[1])
}

// refreshStaple fetches a new staple for t from Run: it keeps the last
// valid staple while the responder fails, drops it before its nextUpdate,
// and replaces a revoked certificate at once.
func (m *Manager) refreshStaple(ctx context.Context, t *tracked) {
	kt := t.keyType()
	c, _, err := m.readCert(ctx, t.name, kt)
	if err != nil || c == nil || string(c.Leaf.SerialNumber.Bytes()) != t.serial {
		return // replaced, or unreadable: the renewal path handles it
	}
	issuer, err := issuerOf(c)
	if err != nil {
		return
	}
	now := m.now()
	r, der, err := m.fetchStaple(ctx, t.name, kt, c.Leaf, issuer)
	next := now.Add(10 * time.Minute)
	switch {
	case err != nil:
		m.logger().Named("ocsp").Warn("refreshing staple", zapName(t.name), zapKeyType(kt), zapErr(err))
	case r.Status == ocsp.Revoked:
		m.revoked(ctx, t, r)
		return
	case servable(r, now):
		m.setStaple(t, der, stapleUntil(r), r.ThisUpdate)
		next = m.stapleRefresh(r, now)
	}
	m.reschedule(t, func(t *tracked) { t.stapleNext = next })
}

// servable reports whether a staple from r, as Check returned it, may be
// attached at now.
func servable(r *ocsp.Response, now time.Time) bool {
	return ocsp.Stapleable(r, now) && now.Before(stapleUntil(r))
}

// stapleUntil is when a staple from r stops being served: shortly before
// its nextUpdate, so that no client, and no late timer, sees it expired.
func stapleUntil(r *ocsp.Response) time.Time {
	margin := min(time.Minute, r.NextUpdate.Sub(r.ThisUpdate)/10)
	return r.NextUpdate.Add(-margin)
}

// setStaple attaches staple der, to be served until until, to t's
// certificate in the cache, if the one cached is still t's: a renewal
// that lands meanwhile keeps its own (or none).
func (m *Manager) setStaple(t *tracked, der []byte, until, at time.Time) {
	p := m.cache.lookup(t.name, true)
	if p == nil {
		return
	}
	old := p.get(t.keyType())
	if old == nil || !hasSerial(old, t.serial) {
		return
	}
	c := *old
	c.OCSPStaple = der
	if !m.cache.replace(t.name, t.keyType(), old, &c) {
		return
	}
	m.sched.mu.Lock()
	defer m.sched.mu.Unlock()
	if m.sched.certs[t.trackKey] == t {
		t.stapleUntil, t.stapleAt = until, at.Unix()
		m.sched.push(t)
	}
}

// dropStaple serves t's certificate without a staple from now on.
func (m *Manager) dropStaple(t *tracked) {
	p := m.cache.lookup(t.name, true)
	if p == nil {
		return
	}
	old := p.get(t.keyType())
	if old == nil || old.OCSPStaple == nil || !hasSerial(old, t.serial) {
		return
	}
	c := *old
	c.OCSPStaple = nil
	m.cache.replace(t.name, t.keyType(), old, &c)
}

// hasSerial reports whether c's leaf has serial (big-endian bytes).
func hasSerial(c *tls.Certificate, serial string) bool {
	if len(c.Certificate) == 0 {
		return false
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	return err == nil && string(leaf.SerialNumber.Bytes()) == serial
}

// revoked reports a revoked certificate and replaces it at once; a new key
// is always generated, so a compromised one is never reused.
func (m *Manager) revoked(ctx context.Context, t *tracked, r *ocsp.Response) {
	m.sched.mu.Lock()
	t.stapleUntil, t.stapleAt = time.Time{}, 0
	m.sched.mu.Unlock()
	m.dropStaple(t) // its last good staple is a lie now
	err := fmt.Errorf("acmetls: certificate revoked at %s (reason %d)", r.RevokedAt.Format(time.RFC3339), r.RevocationReason)
	m.emit(Event{Kind: EventRevoked, ServerName: t.name, KeyType: t.keyType(), NotAfter: t.notAfter, Err: err})
	m.logger().Named("ocsp").Error("certificate revoked; replacing it", zapName(t.name), zapKeyType(t.keyType()),
		zap.Int("reason", r.RevocationReason))
	_ = m.renew(ctx, t, true)
}
