// Package acmetest runs Let's Encrypt's Pebble test CA in-process, with a
// DNS stub that resolves every name to 127.0.0.1, and counts what the CA
// saw: orders placed and orders finalized, with their names, key types and
// replaced certificates. Pebble's random rejection of nonces stays on, so
// clients meet the retries the real CA demands.
package acmetest

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Options configure a CA.
type Options struct {
	// HTTPPort and TLSPort are the ports on 127.0.0.1 where the VA sends
	// http-01 and tls-alpn-01 validations.
	HTTPPort, TLSPort int
	// OCSPResponderURL is written into issued certificates when set.
	OCSPResponderURL string
	// AlternateRoots is the number of extra chains offered per certificate.
	AlternateRoots int
	// Validity is the lifetime of issued certificates; zero means
	// Pebble's default, 90 days.
	Validity time.Duration
	// Profiles are offered besides "default", by name, with the lifetime
	// of their certificates.
	Profiles map[string]time.Duration
	// NoAuthzReuse makes every order need fresh validations, where
	// Pebble otherwise reuses a valid authorization half the time, as
	// Let's Encrypt does.
	NoAuthzReuse bool
	// EABKeys, when set, makes the CA require external account binding
	// with one of these keys: key ID to base64url (unpadded) HMAC key.
	EABKeys map[string]string
	// DisableARI leaves renewal information (RFC 9773) out of the
	// directory, as for a CA that does not offer it.
	DisableARI bool
	// Blocklist names the CA refuses to issue for.
	Blocklist []string
	// Logf receives Pebble's log lines; nil discards them.
	Logf func(format string, args ...any)
	// Intercept, when set, sees every request first; returning true means
	// it wrote the response and the CA never sees the request. Use it to
	// inject faults (429, 503, dropped connections) on top of the real CA.
	Intercept func(w http.ResponseWriter, r *http.Request) bool
}

// CA is a running Pebble.
type CA struct {
	// DirectoryURL is the ACME directory.
	DirectoryURL string
	// ManagementURL is the base of Pebble's management API
	// (/roots/0, /intermediate-keys/0, /set-renewal-info/, ...).
	ManagementURL string

	srv, mgmt   *httptest.Server
	dns, dnsUDP *dns.Server
	txt         txtRecords
	opts        Options
	dnsAddr     string
	pebble      atomic.Pointer[pebble] // swapped by Reset

	logger   *log.Logger
	wfeMu    sync.Mutex // serializes the requests Pebble's frontend serves
	mu       sync.Mutex // guards orders, finals and accounts
	orders   []Order
	finals   []Finalization
	accounts int
}

// Order is a newOrder request the CA accepted.
type Order struct {
	Names    []string
	Replaces string // ARI certificate ID of the replaced certificate
}

// Finalization is a finalize request the CA accepted.
type Finalization struct {
	Names []string
	// KeyAlgorithm is the CSR's public key algorithm: "ECDSA" or "RSA".
	KeyAlgorithm string
}

var envOnce sync.Once

// wfeEnvMu serializes the making of Pebble frontends, which read settings
// from the environment.
var wfeEnvMu sync.Mutex

// New starts a CA. Close it when done.
func New(opts Options) (*CA, error) {
	envOnce.Do(func() {
		// Pebble reads its VA settings from the environment only: no
		// random validation delays in tests.
		os.Setenv("PEBBLE_VA_NOSLEEP", "1")
	})
	logw := io.Discard
	if opts.Logf != nil {
		logw = logfWriter(opts.Logf)
	}
	logger := log.New(logw, "pebble ", 0)

	c := &CA{opts: opts}
	dnsSrv, dnsUDP, dnsAddr, err := startDNS(&c.txt)
	if err != nil {
		return nil, err
	}
	c.dns, c.dnsUDP, c.dnsAddr = dnsSrv, dnsUDP, dnsAddr
	c.logger = logger
	p, err := c.newPebble()
	if err != nil {
		c.Close()
		return nil, err
	}
	c.pebble.Store(p)

	var handler http.Handler = c.count(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One request at a time: Pebble's memory store takes its own lock
		// and an authorization's in opposite orders in different
		// requests, which deadlocks under concurrent orders (a reader
		// holding the store waits for an authorization, whose holder
		// waits behind a writer waiting for the reader).
		c.wfeMu.Lock()
		defer c.wfeMu.Unlock()
		c.pebble.Load().wfe.ServeHTTP(w, r)
	}))
	if opts.DisableARI {
		handler = withoutARI(handler)
	}
	if opts.Intercept != nil {
		next := handler
		handler = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if !opts.Intercept(rw, r) {
				next.ServeHTTP(rw, r)
			}
		})
	}
	c.srv = httptest.NewUnstartedServer(handler)
	c.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	c.srv.StartTLS()
	c.mgmt = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.pebble.Load().mgmt.ServeHTTP(w, r)
	}))
	c.DirectoryURL = c.srv.URL + wfe.DirectoryPath
	c.ManagementURL = c.mgmt.URL
	return c, nil
}

// pebble is one life of the CA: its database, its roots, its frontends.
type pebble struct {
	db        *db.MemoryStore
	ca        *ca.CAImpl
	wfe, mgmt http.Handler
}

func (c *CA) newPebble() (*pebble, error) {
	p := &pebble{db: db.NewMemoryStore()}
	for _, name := range c.opts.Blocklist {
		if err := p.db.AddBlockedDomain(name); err != nil {
			return nil, err
		}
	}
	profiles := map[string]ca.Profile{"default": {
		Description:    "default profile",
		ValidityPeriod: uint64(c.opts.Validity / time.Second),
	}}
	for name, validity := range c.opts.Profiles {
		profiles[name] = ca.Profile{Description: name + " profile", ValidityPeriod: uint64(validity / time.Second)}
	}
	for id, key := range c.opts.EABKeys {
		if err := p.db.AddExternalAccountKeyByID(id, key); err != nil {
			return nil, err
		}
	}
	p.ca = ca.New(c.logger, p.db, c.opts.OCSPResponderURL, "rsa", c.opts.AlternateRoots, 1, profiles)
	v := va.New(c.logger, c.opts.HTTPPort, c.opts.TLSPort, false, c.dnsAddr, p.db)
	// Pebble reads its reuse setting from the environment, once per
	// frontend: set it for this one alone.
	wfeEnvMu.Lock()
	if c.opts.NoAuthzReuse {
		os.Setenv("PEBBLE_AUTHZREUSE", "0")
	}
	w := wfe.New(c.logger, p.db, v, p.ca, []string{"pebble.letsencrypt.org"}, false, len(c.opts.EABKeys) > 0, 0, 0)
	os.Unsetenv("PEBBLE_AUTHZREUSE")
	wfeEnvMu.Unlock()
	p.wfe, p.mgmt = w.Handler(), w.ManagementHandler()
	return p, nil
}

// Reset restarts the CA with an empty database and new roots, at the same
// address, as a CA that lost its state: accounts, orders and certificates
// it issued are forgotten.
func (c *CA) Reset() error {
	p, err := c.newPebble()
	if err != nil {
		return err
	}
	c.pebble.Store(p)
	return nil
}

// Close stops the CA and its DNS stub.
func (c *CA) Close() {
	if c.srv != nil {
		c.srv.Close()
	}
	if c.mgmt != nil {
		c.mgmt.Close()
	}
	_ = c.dns.Shutdown()
	_ = c.dnsUDP.Shutdown()
}

// DNSAddr is the address of the DNS the CA's validation asks, TCP and
// UDP: give it to a DNS-01 solver as its resolver.
func (c *CA) DNSAddr() string { return c.dnsAddr }

// HTTPClient returns a client that trusts the CA's HTTPS endpoints.
func (c *CA) HTTPClient() *http.Client { return c.srv.Client() }

// ServerRoots returns a pool with the certificate of the CA's HTTPS
// endpoint, for a client's RootCAs.
func (c *CA) ServerRoots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.srv.Certificate())
	return p
}

// ServerRootPEM is ServerRoots as PEM, for a process told of it by file.
func (c *CA) ServerRootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.srv.Certificate().Raw})
}

// Roots returns a pool with the roots of the certificates the CA issues.
func (c *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	authority := c.pebble.Load().ca
	for i := 0; i < authority.GetNumberOfRootCerts(); i++ {
		p.AddCert(authority.GetRootCert(i).Cert)
	}
	return p
}

// Root returns a pool with root i alone (0 is the default chain's).
func (c *CA) Root(i int) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.pebble.Load().ca.GetRootCert(i).Cert)
	return p
}

// IssuerPEM returns the PEM of the intermediate that issues the CA's
// certificates (of the default chain), and IssuerKeyPEM its private key,
// for an outside OCSP responder that signs as the issuer.
func (c *CA) IssuerPEM() []byte { return c.pebble.Load().ca.GetIntermediateCert(0).PEM() }

// IssuerKeyPEM returns the PKCS #8 PEM of the issuer's private key.
func (c *CA) IssuerKeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.pebble.Load().ca.GetIntermediateKey(0))
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// RootPEM returns the PEM of the default chain's root.
func (c *CA) RootPEM() []byte { return c.pebble.Load().ca.GetRootCert(0).PEM() }

// Orders returns the orders the CA accepted so far.
func (c *CA) Orders() []Order {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Order(nil), c.orders...)
}

// Accounts counts the accounts the CA created.
func (c *CA) Accounts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accounts
}

// Finalizations returns the finalizations the CA accepted so far.
func (c *CA) Finalizations() []Finalization {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Finalization(nil), c.finals...)
}

// FinalizationsFor counts accepted finalizations for name with a key
// algorithm ("ECDSA" or "RSA"; "" counts both).
func (c *CA) FinalizationsFor(name, keyAlgorithm string) int {
	n := 0
	for _, f := range c.Finalizations() {
		if (keyAlgorithm == "" || f.KeyAlgorithm == keyAlgorithm) && len(f.Names) == 1 && f.Names[0] == name {
			n++
		}
	}
	return n
}

// count records accepted newOrder and finalize requests.
func (c *CA) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isOrder := r.Method == http.MethodPost && r.URL.Path == "/order-plz"
		isFinal := r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/finalize-order/")
		if r.Method == http.MethodPost && r.URL.Path == "/sign-me-up" {
			sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
			next.ServeHTTP(sw, r)
			if sw.status == http.StatusCreated {
				c.mu.Lock()
				c.accounts++
				c.mu.Unlock()
			}
			return
		}
		if !isOrder && !isFinal {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		if sw.status >= 300 {
			return
		}
		payload, err := jwsPayload(body)
		if err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if isOrder {
			c.orders = append(c.orders, parseOrder(payload))
		} else if f, ok := parseFinalize(payload); ok {
			c.finals = append(c.finals, f)
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func jwsPayload(body []byte) ([]byte, error) {
	var jws struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(body, &jws); err != nil {
		return nil, err
	}
	return base64.RawURLEncoding.DecodeString(jws.Payload)
}

func parseOrder(payload []byte) Order {
	var o struct {
		Identifiers []struct{ Value string } `json:"identifiers"`
		Replaces    string                   `json:"replaces"`
	}
	_ = json.Unmarshal(payload, &o)
	out := Order{Replaces: o.Replaces}
	for _, id := range o.Identifiers {
		out.Names = append(out.Names, id.Value)
	}
	return out
}

func parseFinalize(payload []byte) (Finalization, bool) {
	var f struct {
		CSR string `json:"csr"`
	}
	if json.Unmarshal(payload, &f) != nil {
		return Finalization{}, false
	}
	der, err := base64.RawURLEncoding.DecodeString(f.CSR)
	if err != nil {
		return Finalization{}, false
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return Finalization{}, false
	}
	return Finalization{Names: csr.DNSNames, KeyAlgorithm: csr.PublicKeyAlgorithm.String()}, true
}

type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// RootCommonName returns the common name of root i (0 is the default
// chain's root).
func (c *CA) RootCommonName(i int) string {
	return c.pebble.Load().ca.GetRootCert(i).Cert.Subject.CommonName
}

// SetRenewalInfo makes the CA answer renewal-information requests for the
// certificate certPEM with the window [start, end), through Pebble's
// management API.
func (c *CA) SetRenewalInfo(certPEM []byte, start, end time.Time) error {
	ari, err := json.Marshal(map[string]any{
		"suggestedWindow": map[string]string{
			"start": start.UTC().Format(time.RFC3339),
			"end":   end.UTC().Format(time.RFC3339),
		},
	})
	if err != nil {
		return err
	}
	body, err := json.Marshal(map[string]string{"Certificate": string(certPEM), "ARIResponse": string(ari)})
	if err != nil {
		return err
	}
	resp, err := c.mgmt.Client().Post(c.ManagementURL+"/set-renewal-info/", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("acmetest: set-renewal-info: %s: %s", resp.Status, b)
	}
	return nil
}

// withoutARI removes renewalInfo from the directory next serves.
func withoutARI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wfe.DirectoryPath {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		var dir map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &dir); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		delete(dir, "renewalInfo")
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		_ = json.NewEncoder(w).Encode(dir)
	})
}
