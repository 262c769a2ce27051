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
	"net"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// obtainTimeout bounds one issuance: order slot, lock, order, validation,
// download.
const obtainTimeout = 5 * time.Minute

func (m *Manager) obtainTimeout() time.Duration {
	if m.issuanceTimeout > 0 {
		return m.issuanceTimeout
	}
	return obtainTimeout
}

// loadOrObtain returns the certificate of name for kt from storage, or
// obtains it from the CA: in the name's turn, with an order slot, then
// under the storage lock of the name (see locks.go), storage is read
// again, so processes sharing storage place one order. Failures back off
// as the renewal state says, or trip the breaker (see failure.go). The
// result is cached and maintained.
//
// Until the order is placed, the work ends when ctx does (every handshake
// waiting for it gone): nothing is recorded. Once placed, the order runs
// to its end, so that a slow CA and impatient clients never make an order
// per attempt.
func (m *Manager) loadOrObtain(ctx context.Context, name string, kt KeyType) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, m.obtainTimeout())
	defer cancel()
	if c, err := m.loadCert(ctx, name, kt); c != nil || err != nil {
		return c, err
	}
	if m.Validator != nil {
		return m.fromValidator(ctx, name, kt)
	}
	if _, err := m.mayAttempt(ctx, name, kt); err != nil {
		return nil, err
	}
	endTurn, err := m.turn(ctx, name)
	if err != nil {
		return nil, err
	}
	defer endTurn()
	release, err := m.orderSlot(ctx, name)
	if err != nil {
		return nil, err
	}
	defer release()
	l, err := m.lock(ctx, name)
	if err != nil {
		if ctx.Err() == nil {
			m.failed(ctx, EventObtainFailed, name, kt, renew.State{}, err, time.Time{}, time.Time{})
		}
		return nil, err
	}
	defer l.release()
	// Another process may have obtained it, or failed, while we waited.
	if c, err := m.loadCert(ctx, name, kt); c != nil || err != nil {
		return c, err
	}
	st, err := m.mayAttempt(ctx, name, kt)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	ctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	ctx, note := withRetryAfterNote(ctx)
	c, rec, err := m.obtain(ctx, name, kt, nil)
	if err != nil {
		m.failed(ctx, EventObtainFailed, name, kt, st, err, note.get(), time.Time{})
		return nil, err
	}
	m.succeeded(ctx, name, kt, st)
	cc, err := m.install(ctx, l, name, kt, c, rec, "")
	if err != nil {
		return nil, err
	}
	m.emit(Event{Kind: EventObtained, ServerName: name, KeyType: kt, NotAfter: c.Leaf.NotAfter})
	return cc, nil
}

// install persists a certificate just obtained under lock l, then caches
// and tracks it, and returns its compact form; replacing is the serial
// (big-endian bytes) of the certificate it renews, "" for a first one. A
// certificate storage refuses is kept in memory and served (see unsaved).
//
// If the lock was lost meanwhile, another process may have ordered too:
// storage is read again under the lock retaken, and a certificate stored
// there that is not the one replaced wins, so that every process serves
// the same one. If the lock cannot be retaken, the certificate is served
// from memory and written later, only if storage has none newer.
func (m *Manager) install(ctx context.Context, l *heldLock, name string, kt KeyType, c *tls.Certificate, rec *storage.CertRecord, replacing string) (*tls.Certificate, error) {
	log := m.logger().Named("obtain")
	key := storage.CertKey(name, string(kt))
	b, err := rec.Marshal()
	if err != nil {
		return nil, err
	}
	if err := l.verify(ctx); errors.Is(err, storage.ErrLockLost) {
		log.Warn("storage lock lost while ordering; another process may have ordered too, re-reading storage",
			zapName(name), zapKeyType(kt), zap.String("lock", l.name), zapErr(err))
		if err := l.retake(ctx); err != nil {
			m.unsaved.set(key, unsavedWrite{value: b, name: name, kt: kt}, true)
			m.names.add(name)
			return m.cacheCert(ctx, name, kt, c, rec, true)
		}
		stored, srec, err := m.readStored(ctx, name, kt)
		if err == nil && stored != nil && m.now().Before(stored.Leaf.NotAfter) &&
			string(stored.Leaf.SerialNumber.Bytes()) != replacing {
			log.Info("serving the certificate another process stored", zapName(name), zapKeyType(kt),
				zap.String("serial", stored.Leaf.SerialNumber.Text(16)),
				zap.String("discarded_serial", c.Leaf.SerialNumber.Text(16)))
			m.names.add(name)
			return m.cacheCert(ctx, name, kt, stored, srec, true)
		}
	}
	if err := m.write(ctx, key, b, name, kt); err != nil {
		log.Error("storing certificate; serving it from memory and retrying the write",
			zapName(name), zapKeyType(kt), zapErr(err))
	}
	m.names.add(name)
	return m.cacheCert(ctx, name, kt, c, rec, true)
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
	return m.cacheCert(ctx, name, kt, c, rec, false)
}

// readCert reads and checks the certificate of name for kt, with its leaf
// parsed: one storage refused to take first, else the stored one. A
// missing or corrupt record is nil and no error.
func (m *Manager) readCert(ctx context.Context, name string, kt KeyType) (*tls.Certificate, *storage.CertRecord, error) {
	key := storage.CertKey(name, string(kt))
	b, err := m.read(ctx, key)
	return m.decodeCert(ctx, key, b, err, name, kt)
}

// readStored is readCert from storage alone.
func (m *Manager) readStored(ctx context.Context, name string, kt KeyType) (*tls.Certificate, *storage.CertRecord, error) {
	key := storage.CertKey(name, string(kt))
	b, err := m.store.Load(ctx, key)
	return m.decodeCert(ctx, key, b, err, name, kt)
}

func (m *Manager) decodeCert(ctx context.Context, key string, b []byte, err error, name string, kt KeyType) (*tls.Certificate, *storage.CertRecord, error) {
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

// cacheCert puts c, from keyPair and stored as rec, in the cache in its compact form, with
// its OCSP staple if it has a responder, and in the renewal schedule, and
// returns the compact form. fresh says this process just obtained it.
func (m *Manager) cacheCert(ctx context.Context, name string, kt KeyType, c *tls.Certificate, rec *storage.CertRecord, fresh bool) (*tls.Certificate, error) {
	cc, err := compact(c)
	if err != nil {
		return nil, fmt.Errorf("acmetls: certificate for %q: %w", name, err)
	}
	st, revoked, later := m.staple(ctx, name, kt, c, cc)
	m.cache.put(name, kt, cc)
	m.cacheGroup(name, kt, c.Leaf, cc)
	t := m.track(name, kt, c.Leaf, rec, st, fresh)
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

// obtainFrom orders a certificate for name with a new key of type kt from
// the CA of is; replaces, if not nil, is the certificate it renews (RFC
// 9773's "replaces"), issued by that CA. If the CA no longer knows the
// account, a new one is registered and the order placed once more.
// placed says whether an order was sent.
func (m *Manager) obtainFrom(ctx context.Context, is *issuer, name string, kt KeyType, replaces *x509.Certificate) (_ *tls.Certificate, _ *storage.CertRecord, placed bool, _ error) {
	account, err := m.getAccount(ctx, is)
	if err != nil {
		return nil, nil, false, err
	}
	if m.DNSPersist != nil {
		if err := m.checkPersist(ctx, name, account); err != nil {
			return nil, nil, false, err
		}
	}
	key, err := newCertKey(kt, account.PrivateKey)
	if err != nil {
		return nil, nil, false, err
	}
	names := m.namesFor(name, replaces)
	csr, err := newCSR(key, names, m.MustStaple)
	if err != nil {
		return nil, nil, false, fmt.Errorf("acmetls: making CSR for %q: %w", name, err)
	}
	c, rec, err := m.orderFrom(ctx, is, account, name, kt, names, key, csr, replaces)
	return c, rec, true, err
}

// orderFrom is obtainFrom once the request is made: the order, with its
// retries, and the certificate it gives.
func (m *Manager) orderFrom(ctx context.Context, is *issuer, account *acme.Account, name string, kt KeyType, names []string, key crypto.Signer, csr *x509.CertificateRequest, replaces *x509.Certificate) (*tls.Certificate, *storage.CertRecord, error) {
	chains, err := m.order(ctx, is, account, csr, replaces)
	if isAccountGone(err) {
		if account, err = m.recoverAccount(ctx, is, name, account, err); err == nil {
			chains, err = m.order(ctx, is, account, csr, replaces)
		}
	}
	if replaces != nil && isReplacesRefused(err) {
		// The certificate was ordered by another account (replaced
		// after the CA forgot the old one, another CA, an operator's
		// change), or is replaced already: renew without naming it.
		m.logger().Named("renew").Info("the CA refused to let this order replace the certificate; ordering without replaces",
			zapName(name), zapKeyType(kt), zapErr(err))
		chains, err = m.order(ctx, is, account, csr, nil)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("acmetls: obtaining certificate for %q: %w%s", name, err, m.validationHint(err))
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
	rec := &storage.CertRecord{
		Names:    names,
		KeyType:  string(kt),
		KeyPEM:   keyPEM,
		ChainPEM: string(chain.ChainPEM),
		CA:       is.url,
		URL:      chain.URL,
		Account:  account.Location,
		Obtained: time.Now().UTC(),
	}
	if chain.RenewalInfo != nil {
		rec.RenewalInfo, _ = json.Marshal(chain.RenewalInfo)
	}
	m.logger().Named("obtain").Info("obtained certificate", zapName(name), zapKeyType(kt),
		zap.String("serial", c.Leaf.SerialNumber.Text(16)), zap.Time("not_after", c.Leaf.NotAfter),
		zap.Bool("renewal", replaces != nil))
	return c, rec, nil
}

// validationHint says what to check when the CA could not validate: that
// the ports of the enabled challenges reach this process (or a sibling
// sharing its storage).
func (m *Manager) validationHint(err error) string {
	switch problemType(err) {
	case acme.ProblemTypeConnection, acme.ProblemTypeIncorrectResponse, acme.ProblemTypeTLS, acme.ProblemTypeUnauthorized:
	default:
		return ""
	}
	if isReplacesRefused(err) || m.DNSPersist != nil {
		return "" // not a validation, or one whose own error says what to fix
	}
	var ports []string
	if m.httpChallenge() {
		ports = append(ports, "port 80 (http-01, Manager.HTTPHandler)")
	}
	if !m.DisableTLSALPNChallenge {
		ports = append(ports, "port 443 (tls-alpn-01, Manager.TLSConfig)")
	}
	if len(ports) == 0 {
		return " (the CA could not validate: check the DNS records the dns-01 solver sets)"
	}
	return " (the CA could not validate: check that the name's DNS points here and that " +
		strings.Join(ports, " or ") + " reaches this process, listening before certificates are asked for)"
}

// order places one order for csr with account at is and returns the
// chains.
func (m *Manager) order(ctx context.Context, is *issuer, account *acme.Account, csr *x509.CertificateRequest, replaces *x509.Certificate) ([]acme.Certificate, error) {
	params, err := acmez.OrderParametersFromCSR(*account, csr)
	if err != nil {
		return nil, err
	}
	params.Replaces = replaces
	if is.profile != "" {
		if err := checkProfile(ctx, is); err != nil {
			return nil, err
		}
		params.Profile = is.profile
	}
	client := acmez.Client{Client: is.client, ChallengeSolvers: m.solvers()}
	return client.ObtainCertificate(ctx, params)
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
	if m.DNSPersist != nil {
		return map[string]acmez.Solver{acme.ChallengeTypeDNSPersist01: persistSolver{}}
	}
	s := make(map[string]acmez.Solver, 2)
	if m.httpChallenge() {
		s[acme.ChallengeTypeHTTP01] = solver{m}
	}
	if !m.DisableTLSALPNChallenge {
		s[acme.ChallengeTypeTLSALPN01] = solver{m}
	}
	if m.DNS01 != nil {
		// Its CleanUp runs on a context of its own: a record is
		// removed even after a cancellation.
		s[acme.ChallengeTypeDNS01] = m.DNS01
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
func newCSR(key crypto.Signer, names []string, withMustStaple bool) (*x509.CertificateRequest, error) {
	if !withMustStaple {
		return acmez.NewCSR(key, names)
	}
	tmpl := &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: oidTLSFeature, Value: mustStaple}}}
	for _, name := range names {
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificateRequest(der)
}

// httpChallenge reports whether the CA may validate by http-01: not when
// it is disabled, nor when Serve was given no port-80 listener.
func (m *Manager) httpChallenge() bool {
	return !m.DisableHTTPChallenge && !m.noPort80.Load()
}

// ErrUnknownProfile is returned when [Manager.Profile] (or a fallback
// CA's) is not one the CA offers.
var ErrUnknownProfile = errors.New("acmetls: unknown ACME profile")

// checkProfile refuses a profile the CA's directory does not offer,
// naming those it does.
func checkProfile(ctx context.Context, is *issuer) error {
	dir, err := is.client.GetDirectory(ctx)
	if err != nil {
		return fmt.Errorf("acmetls: reading the CA's directory %s: %w", is.url, err)
	}
	var offered []string
	if dir.Meta != nil {
		if _, ok := dir.Meta.Profiles[is.profile]; ok {
			return nil
		}
		for p := range dir.Meta.Profiles {
			offered = append(offered, p)
		}
	}
	slices.Sort(offered)
	if len(offered) == 0 {
		return fmt.Errorf("%w %q: %s offers no profiles", ErrUnknownProfile, is.profile, is.url)
	}
	return fmt.Errorf("%w %q: %s offers %s", ErrUnknownProfile, is.profile, is.url, strings.Join(offered, ", "))
}

// isReplacesRefused reports whether the CA refused an order's "replaces"
// (RFC 9773): the certificate is replaced already, or another account
// ordered it.
func isReplacesRefused(err error) bool {
	var p acme.Problem
	if !errors.As(err, &p) {
		return false
	}
	return p.Type == "urn:ietf:params:acme:error:alreadyReplaced" ||
		p.Type == acme.ProblemTypeUnauthorized && strings.Contains(strings.ToLower(p.Detail), "replace")
}
