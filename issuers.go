package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// FallbackCA is a CA that [Manager.FallbackCAs] orders from when the CAs
// before it fail: its directory, and what its account needs. Each CA has
// an account of its own, registered with the Manager's Email and
// AgreeToTerms.
type FallbackCA struct {
	// URL is the CA's ACME directory URL.
	URL string
	// RootCAs are the roots trusted when talking to this CA; nil means
	// the Manager's RootCAs. Unused when Manager.HTTPClient is set.
	RootCAs *x509.CertPool
	// ExternalAccount binds the account at this CA, for CAs that
	// require it.
	ExternalAccount *ExternalAccount
	// Profile is the ACME profile ordered at this CA; empty means its
	// default. Manager.Profile applies to the first CA only.
	Profile string
}

// issuer is one CA the Manager orders from, with its account: the
// Manager's CA first, then its FallbackCAs in order.
type issuer struct {
	index   int
	url     string
	client  *acme.Client
	eab     *ExternalAccount
	profile string
	// down is open while this CA fails for every name (down, failing,
	// refusing orders, misconfigured): attempts go to the next CA
	// without asking it, and to it again once it closes.
	down breaker
	// orders counts the orders placed here, by kind and result.
	orders [2][2]atomic.Uint64

	mu      sync.RWMutex // guards account
	account *acme.Account
}

// maxFallbackCAs bounds FallbackCAs: a certificate's CA is kept in a
// byte of its schedule entry.
const maxFallbackCAs = 16

// setupIssuers makes the Manager's issuers from CA and FallbackCAs.
func (m *Manager) setupIssuers() error {
	if len(m.FallbackCAs) > 0 && m.DNSPersist != nil {
		return errors.New("acmetls: DNSPersist and FallbackCAs cannot be used together: a dns-persist-01 record binds one CA's account")
	}
	if len(m.FallbackCAs) > maxFallbackCAs {
		return fmt.Errorf("acmetls: %d FallbackCAs; at most %d", len(m.FallbackCAs), maxFallbackCAs)
	}
	seen := map[string]bool{m.ca(): true}
	m.issuers = []*issuer{m.newIssuer(0, m.ca(), m.RootCAs, m.ExternalAccount, m.Profile)}
	for i, f := range m.FallbackCAs {
		if f.URL == "" || seen[f.URL] {
			return fmt.Errorf("acmetls: FallbackCAs[%d]: the URL %q is empty or listed twice", i, f.URL)
		}
		seen[f.URL] = true
		roots := f.RootCAs
		if roots == nil {
			roots = m.RootCAs
		}
		m.issuers = append(m.issuers, m.newIssuer(i+1, f.URL, roots, f.ExternalAccount, f.Profile))
	}
	return nil
}

func (m *Manager) newIssuer(index int, url string, roots *x509.CertPool, eab *ExternalAccount, profile string) *issuer {
	return &issuer{
		index: index,
		url:   url,
		client: &acme.Client{
			Directory:  url,
			HTTPClient: m.httpClient(roots),
			UserAgent:  "acmetls",
			Logger:     slogFromZap(m.logger().Named("acme")),
		},
		eab:     eab,
		profile: profile,
	}
}

// issuerOf returns the index of the issuer whose directory is url, as a
// certificate record names it: 0 for a record naming none, -1 for a CA no
// longer configured.
func (m *Manager) issuerOf(url string) int8 {
	if url == "" {
		return 0
	}
	for _, is := range m.issuers {
		if is.url == url {
			return int8(is.index)
		}
	}
	return -1
}

// closeIdleConnections closes the idle connections to every CA.
func (m *Manager) closeIdleConnections() {
	for _, is := range m.issuers {
		is.client.HTTPClient.CloseIdleConnections()
	}
}

// httpClient returns the client for a CA: HTTPClient, or one with
// timeouts trusting roots, its transport wrapped to note Retry-After.
func (m *Manager) httpClient(roots *x509.CertPool) *http.Client {
	var c http.Client
	if m.HTTPClient != nil {
		c = *m.HTTPClient
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		t.ResponseHeaderTimeout = 30 * time.Second
		c = http.Client{Transport: t, Timeout: 2 * time.Minute}
	}
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = retryAfterTransport{base: base}
	return &c
}

// obtain orders a certificate for name with a new key of type kt, from
// the first CA that gives one: the Manager's CA, then each of its
// FallbackCAs, skipping those whose breaker is open. old, if not nil, is
// the certificate it renews, named in "replaces" (RFC 9773) at the CA
// that issued it. It returns the certificate, with its leaf, and its
// record, naming the CA, not yet stored. The caller holds the name's
// storage lock.
//
// A failure goes to the next CA unless another CA would fail the same
// way: a validation that failed (the name's DNS or this server), or the
// name's dns-persist-01 record. A CA that fails for every name (down,
// answering 5xx, misconfigured) is skipped for a while, as the breaker
// of a single CA holds every name back; each renewal starts at the first
// CA again.
func (m *Manager) obtain(ctx context.Context, name string, kt KeyType, old *tracked) (*tls.Certificate, *storage.CertRecord, error) {
	var failures []string
	// nameErr is the first failure that was the name's own at a CA (a
	// rate limit, CAA): the attempt is the name's failure even if a
	// later CA is down, which must not hold every other name back.
	var nameErr error
	last := len(m.issuers) - 1
	for _, is := range m.issuers {
		if is.index < last && !isAdminRetry(ctx) {
			if err := is.down.open(m.now()); err != nil {
				failures = append(failures, fmt.Sprintf("%s skipped: %v", is.url, err))
				continue
			}
		}
		var replaces *x509.Certificate
		if old != nil && int(old.issuer) == is.index {
			replaces = old.ariCert()
		}
		// A CA that hangs leaves the next ones their share of the time.
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if deadline, ok := ctx.Deadline(); ok && is.index < last {
			cctx, cancel = context.WithTimeout(ctx, time.Until(deadline)/time.Duration(last-is.index+1))
		}
		c, rec, placed, err := m.obtainFrom(cctx, is, name, kt, replaces)
		hung := err != nil && cctx.Err() != nil && ctx.Err() == nil
		cancel()
		if placed && !isShutdown(ctx) {
			kind := orderObtain
			if old != nil {
				kind = orderRenew
			}
			is.countOrder(kind, err)
		}
		if err == nil {
			is.down.reset()
			if len(failures) > 0 {
				m.logger().Named("obtain").Warn("obtained the certificate from a fallback CA",
					zapName(name), zapKeyType(kt), zap.String("ca", is.url), zap.Strings("failures", failures))
			}
			return c, rec, nil
		}
		if hung {
			err = fmt.Errorf("acmetls: %s gave no certificate within its share of the time: %w", is.url, err)
		}
		if is.index == last || ctx.Err() != nil || !hung && !otherCAMayDo(err) {
			if len(failures) == 0 {
				return nil, nil, err
			}
			decisive := err
			if nameErr != nil && scopeOf(err) != scopeName {
				decisive = nameErr
			}
			return nil, nil, &fallbackError{failures: append(failures, fmt.Sprintf("%s: %v", is.url, err)), err: decisive}
		}
		// Storage failing went no further (otherCAMayDo): what is left
		// is the name's, or the CA's for everyone.
		switch sc := scopeOf(err); {
		case hung:
			is.down.trip(err, scopeOutage, m.now(), time.Time{})
		case sc == scopeName:
			if nameErr == nil {
				nameErr = err
			}
		default:
			is.down.trip(err, sc, m.now(), time.Time{})
		}
		m.logger().Named("obtain").Warn("the CA failed; trying the next one",
			zapName(name), zapKeyType(kt), zap.String("ca", is.url), zap.String("next", m.issuers[is.index+1].url), zapErr(err))
		failures = append(failures, fmt.Sprintf("%s: %v", is.url, err))
	}
	// Not reached: the last CA is never skipped, and returns.
	return nil, nil, &fallbackError{failures: failures, err: errors.New("acmetls: no CA could be asked")}
}

// otherCAMayDo reports whether another CA may succeed where one failed
// with err: not after a validation that failed, which depends on the
// name's DNS and this server alone.
func otherCAMayDo(err error) bool {
	if errors.Is(err, ErrPersistRecord) || errors.As(err, new(*storageError)) {
		return false // the name's DNS, or this side's storage
	}
	switch problemType(err) {
	case acme.ProblemTypeConnection, acme.ProblemTypeDNS, acme.ProblemTypeIncorrectResponse,
		acme.ProblemTypeTLS, acme.ProblemTypeUnauthorized:
		return isReplacesRefused(err)
	}
	return true
}

// fallbackError is the failure of an attempt that went through several
// CAs: failures are what each CA said, in order; err decides what the
// failure is (its scope, its problem type): the first failure that was
// the name's own, else the last CA's.
type fallbackError struct {
	failures []string
	err      error
}

func (e *fallbackError) Error() string {
	return "acmetls: no CA issued the certificate: " + strings.Join(e.failures, "; ")
}
func (e *fallbackError) Unwrap() error { return e.err }
