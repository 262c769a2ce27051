package acmetls

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// obtainTimeout bounds one issuance: lock, order, validation, download.
const obtainTimeout = 5 * time.Minute

// loadOrObtain returns the certificate of name for kt from storage, or
// obtains it from the CA: under the storage lock for the name and key type,
// storage is read again, so processes sharing storage place one order.
// Failures back off as the renewal state in storage says. The result is
// cached and maintained.
func (m *Manager) loadOrObtain(ctx context.Context, name string, kt KeyType) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, obtainTimeout)
	defer cancel()
	if c, err := m.loadCert(ctx, name, kt); c != nil || err != nil {
		return c, err
	}
	st, err := m.loadState(ctx, name, kt)
	if err != nil {
		return nil, err
	}
	if !st.MayAttempt(m.now()) {
		return nil, &backingOffError{next: st.NextAttempt, msg: fmt.Sprintf("%v: %q (%s) failed %d times, next attempt at %s: %s",
			errBackingOff, name, kt, st.Failures, st.NextAttempt.Format(time.RFC3339), st.LastError)}
	}
	lock := storage.CertLockName(name, string(kt))
	m.logger().Named("obtain").Debug("taking storage lock", zap.String("lock", lock))
	if err := m.store.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("acmetls: locking %s: %w", lock, err)
	}
	defer m.unlock(lock)
	if c, err := m.loadCert(ctx, name, kt); c != nil || err != nil {
		return c, err
	}
	select {
	case m.orders <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("acmetls: waiting to order a certificate for %q: %w", name, ctx.Err())
	}
	ctx, note := withRetryAfterNote(ctx)
	c, ri, err := m.obtain(ctx, name, kt, nil)
	<-m.orders
	if err != nil {
		st = st.Failed(m.now(), err.Error(), problemType(err), note.get())
		if serr := m.saveState(ctx, name, kt, st); serr != nil {
			err = errors.Join(err, serr)
		}
		m.emit(Event{Kind: EventObtainFailed, ServerName: name, KeyType: kt,
			Attempt: st.Failures, NextAttempt: st.NextAttempt, Err: err})
		return nil, err
	}
	if st.Failures > 0 {
		m.clearState(ctx, name, kt)
	}
	m.forgetFailing(name)
	m.emit(Event{Kind: EventObtained, ServerName: name, KeyType: kt, NotAfter: c.Leaf.NotAfter})
	return m.cacheCert(ctx, name, kt, c, ri)
}

// loadCert reads, checks, caches and tracks the stored certificate of name
// for kt. It returns nil and no error when storage holds no usable
// certificate: none, expired, or corrupt (reported, then replaced by the
// caller). Only a failing storage is an error.
func (m *Manager) loadCert(ctx context.Context, name string, kt KeyType) (*tls.Certificate, error) {
	c, rec, err := m.readCert(ctx, name, kt)
	if c == nil || err != nil {
		return nil, err
	}
	if !m.now().Before(c.Leaf.NotAfter) {
		m.logger().Named("storage").Warn("stored certificate expired",
			zapName(name), zapKeyType(kt), zap.Time("not_after", c.Leaf.NotAfter))
		return nil, nil
	}
	return m.cacheCert(ctx, name, kt, c, rec.RenewalInfo)
}

// readCert reads and checks the stored certificate of name for kt, with
// its leaf parsed. A missing or corrupt record is nil and no error.
func (m *Manager) readCert(ctx context.Context, name string, kt KeyType) (*tls.Certificate, *storage.CertRecord, error) {
	key := storage.CertKey(name, string(kt))
	b, err := m.store.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: loading %s: %w", key, err)
	}
	c, rec, err := m.certFromRecord(ctx, b, name, kt)
	if err != nil {
		m.logger().Named("storage").Error("unusable certificate record; it will be replaced",
			zap.String("key", key), zap.Error(err))
		return nil, nil, nil
	}
	return c, rec, nil
}

// cacheCert puts c, from keyPair, in the cache in its compact form, with
// its OCSP staple if it has a responder, and in the renewal schedule, and
// returns the compact form.
func (m *Manager) cacheCert(ctx context.Context, name string, kt KeyType, c *tls.Certificate, ri json.RawMessage) (*tls.Certificate, error) {
	cc, err := compact(c)
	if err != nil {
		return nil, fmt.Errorf("acmetls: certificate for %q: %w", name, err)
	}
	st, revoked, later := m.staple(ctx, name, kt, c, cc)
	m.cache.put(name, kt, cc)
	t := m.track(name, kt, c.Leaf, ri, st)
	if revoked != nil {
		go m.revoked(context.WithoutCancel(ctx), t, revoked)
	}
	if later {
		go func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stapleFetchTimeout)
			defer cancel()
			m.refreshStaple(ctx, t)
		}()
	}
	return cc, nil
}

// certFromRecord decodes a stored record and checks it can be served for
// name: shape, key matching leaf, key type, name covered, and a key that
// is not the ACME account's.
func (m *Manager) certFromRecord(ctx context.Context, b []byte, name string, kt KeyType) (*tls.Certificate, *storage.CertRecord, error) {
	rec, err := storage.ParseCertRecord(b)
	if err != nil {
		return nil, nil, err
	}
	c, err := keyPair(rec.ChainPEM, rec.KeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", storage.ErrCorruptRecord, err)
	}
	if got := keyTypeOf(c.Leaf.PublicKey); got != kt {
		return nil, nil, fmt.Errorf("%w: key type %q, want %q", storage.ErrCorruptRecord, got, kt)
	}
	if err := c.Leaf.VerifyHostname(name); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", storage.ErrCorruptRecord, err)
	}
	if err := checkNotAccountKey(c.Leaf.PublicKey, m.accountKey(ctx)); err != nil {
		return nil, nil, err
	}
	m.interned.chain(c.Certificate)
	return c, rec, nil
}

// obtain orders a certificate for name with a new key of type kt and stores
// it; replaces, if not nil, is the certificate it renews (RFC 9773's
// "replaces"). It returns the certificate, with its leaf, and the renewal
// information the CA gave. The caller holds the storage lock.
func (m *Manager) obtain(ctx context.Context, name string, kt KeyType, replaces *x509.Certificate) (*tls.Certificate, json.RawMessage, error) {
	account, err := m.getAccount(ctx)
	if err != nil {
		return nil, nil, err
	}
	key, err := newCertKey(kt, account.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	csr, err := newCSR(key, name, m.MustStaple)
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: making CSR for %q: %w", name, err)
	}
	params, err := acmez.OrderParametersFromCSR(*account, csr)
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: order for %q: %w", name, err)
	}
	params.Replaces = replaces
	client := acmez.Client{Client: m.client, ChallengeSolvers: m.solvers()}
	chains, err := client.ObtainCertificate(ctx, params)
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: obtaining certificate for %q: %w", name, err)
	}
	chain, err := pickChain(chains, m.PreferredChain)
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: certificate for %q: %w", name, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	c, err := keyPair(string(chain.ChainPEM), keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: the CA's certificate for %q: %w", name, err)
	}
	m.interned.chain(c.Certificate)
	rec := storage.CertRecord{
		Names:    []string{name},
		KeyType:  string(kt),
		KeyPEM:   keyPEM,
		ChainPEM: string(chain.ChainPEM),
		CA:       m.ca(),
		URL:      chain.URL,
		Account:  account.Location,
		Obtained: time.Now().UTC(),
	}
	if chain.RenewalInfo != nil {
		rec.RenewalInfo, _ = json.Marshal(chain.RenewalInfo)
	}
	b, err := rec.Marshal()
	if err != nil {
		return nil, nil, err
	}
	if err := m.store.Store(ctx, storage.CertKey(name, string(kt)), b); err != nil {
		return nil, nil, fmt.Errorf("acmetls: storing certificate for %q: %w", name, err)
	}
	m.logger().Named("obtain").Info("obtained certificate", zapName(name), zapKeyType(kt),
		zap.String("serial", c.Leaf.SerialNumber.Text(16)), zap.Time("not_after", c.Leaf.NotAfter),
		zap.Bool("renewal", replaces != nil))
	return c, rec.RenewalInfo, nil
}

// pickChain returns the first chain whose certificates name preferred as
// issuer or subject common name (so a root's name selects its chain), or
// the CA's default chain, the first one.
func pickChain(chains []acme.Certificate, preferred string) (acme.Certificate, error) {
	if len(chains) == 0 {
		return acme.Certificate{}, errors.New("the CA returned no certificate chain")
	}
	if preferred == "" {
		return chains[0], nil
	}
	for _, ch := range chains {
		if slices.Contains(chainCommonNames(ch.ChainPEM), preferred) {
			return ch, nil
		}
	}
	return chains[0], nil
}

// chainCommonNames lists the issuer common names of every certificate in a
// PEM chain, which includes the root's name even when the root itself is
// not sent.
func chainCommonNames(chainPEM []byte) []string {
	var names []string
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return names
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			names = append(names, c.Issuer.CommonName)
		}
	}
}

// solvers returns the enabled challenge solvers.
func (m *Manager) solvers() map[string]acmez.Solver {
	s := make(map[string]acmez.Solver, 2)
	if !m.DisableHTTPChallenge {
		s[acme.ChallengeTypeHTTP01] = solver{m}
	}
	if !m.DisableTLSALPNChallenge {
		s[acme.ChallengeTypeTLSALPN01] = solver{m}
	}
	return s
}

// oidTLSFeature is the TLS feature extension (RFC 7633); mustStaple is its
// value asking for status_request, the "OCSP Must-Staple" of certificates.
var (
	oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}
	mustStaple    = []byte{0x30, 0x03, 0x02, 0x01, 0x05}
)

// newCSR makes the certificate request for name, asking for Must-Staple if
// told to.
func newCSR(key crypto.Signer, name string, withMustStaple bool) (*x509.CertificateRequest, error) {
	if !withMustStaple {
		return acmez.NewCSR(key, []string{name})
	}
	tmpl := &x509.CertificateRequest{
		DNSNames:        []string{name},
		ExtraExtensions: []pkix.Extension{{Id: oidTLSFeature, Value: mustStaple}},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificateRequest(der)
}
