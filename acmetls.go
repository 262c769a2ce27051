// Package acmetls terminates TLS with certificates it obtains and renews
// from an ACME CA such as Let's Encrypt.
//
// The common case is a server that knows its names:
//
//	m := &acmetls.Manager{
//		Email:        "ops@example.com",
//		AgreeToTerms: true,
//	}
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	log.Fatal(m.ListenAndServe(ctx, handler, "example.com", "www.example.com"))
//
// [Manager.ListenAndServe] listens on ports 80 and 443 before it asks the
// CA for anything, so that the CA's validation reaches it; brings the
// certificates up in the background; renews them with [Manager.Run]; and
// shuts down gracefully when ctx ends. Servers of their own use the
// pieces: [Manager.TLSConfig], [Manager.HTTPHandler],
// [Manager.HTTPSHandler], [Manager.ManageSync] once the listeners are up,
// and [Manager.Run].
//
// A Manager serves certificates already in its [storage.Storage] first: a
// restarted process, or a new frontend sharing the storage, never orders a
// certificate that storage holds. It keeps one certificate per configured
// [KeyType] for every name, an ECDSA one and an RSA one by default, and
// gives each client the one it supports, ECDSA first.
//
// Names it was not told about are refused unless [Manager.OnDemand] allows
// them; then the first handshake for such a name obtains its certificate.
package acmetls

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/internal/inflight"
	"github.com/acmetls/acmetls/storage"
)

// LetsEncryptURL is the directory URL of Let's Encrypt's production CA, the
// default [Manager.CA].
const LetsEncryptURL = "https://acme-v02.api.letsencrypt.org/directory"

// LetsEncryptStagingURL is the directory URL of Let's Encrypt's staging
// CA: the same protocol and far higher rate limits, with certificates no
// browser trusts. Try a setup against it before production.
const LetsEncryptStagingURL = "https://acme-staging-v02.api.letsencrypt.org/directory"

// maxConcurrentOrders bounds the orders one Manager has in flight at the
// CA, so that managing many new names at once, or a burst of on-demand
// names, does not open hundreds of orders together.
const maxConcurrentOrders = 8

// DefaultCacheCapacity is the number of names a Manager keeps in memory
// when [Manager.CacheCapacity] is zero.
const DefaultCacheCapacity = 100_000

// DefaultHSTSMaxAge is the HSTS max-age when [Manager.HSTSMaxAge] is zero:
// the 60 days of Let's Encrypt's Integration Guide, short enough that a
// name moved away from HTTPS recovers, long enough to protect returning
// visitors.
const DefaultHSTSMaxAge = 60 * 24 * time.Hour

// Manager obtains, stores, caches and serves certificates. Its zero value
// talks to Let's Encrypt, keeps its state in the user's data directory,
// issues ECDSA P-256 and RSA 2048 certificates, and serves only the names
// given to [Manager.ManageSync]; it obtains nothing until AgreeToTerms is
// set, since Let's Encrypt has terms of service.
//
// Set the fields before first use and do not modify them after.
type Manager struct {
	// CA is the ACME directory URL. Default: [LetsEncryptURL].
	CA string
	// Email is the contact address of the ACME account, optional.
	Email string
	// AgreeToTerms agrees to the CA's terms of service, whose URL the CA's
	// directory gives. Without it, creating an account with a CA that has
	// terms fails with an error naming them.
	AgreeToTerms bool
	// RootCAs are the roots trusted when talking to the CA; nil means the
	// system's. Set it to trust a private CA.
	RootCAs *x509.CertPool
	// HTTPClient talks to the CA. Default: a client with timeouts that
	// trusts RootCAs.
	HTTPClient *http.Client
	// PreferredChain, when the CA offers several chains, picks the first
	// whose root or any issuer has this common name. Default: the CA's
	// default chain.
	PreferredChain string

	// FallbackCAs are CAs ordered from, in turn, when CA fails: each
	// with an account of its own. An attempt goes to the next CA when
	// one fails in a way another CA may not (down, 5xx, rate limits,
	// CAA, a refused order), not after a failed validation. A CA that
	// fails for every name is skipped for a while (a minute, growing to
	// ten), then asked first again, renewals included. The certificate's
	// record names the CA that issued it, which is asked for its renewal
	// information. The name's backoff counts attempts, not CAs.
	FallbackCAs []FallbackCA

	// Profile is the ACME profile ordered (RFC draft "ACME profiles"; at
	// Let's Encrypt "classic", "tlsserver" or "shortlived", whose 6-day
	// certificates are renewed at half their lifetime). It must be one
	// the CA's directory offers: an unknown one is refused before any
	// order, with the names offered. Empty: the CA's default.
	Profile string
	// ExternalAccount binds the ACME account to an account the CA's
	// operator issued (RFC 8555 §7.3.4), as CAs that require it ask.
	ExternalAccount *ExternalAccount

	// MustStaple asks the CA for certificates with the OCSP Must-Staple
	// extension (RFC 7633), which clients may refuse without a staple.
	// Let's Encrypt refuses such orders since it stopped OCSP in 2025;
	// other CAs with responders accept them. Stapling itself needs no
	// setting: certificates that name a responder are stapled.
	MustStaple bool

	// DisableHTTPChallenge and DisableTLSALPNChallenge turn off one of the
	// two challenge types; by default the CA may use either. Disable
	// http-01 when port 80 does not reach these servers, tls-alpn-01 when
	// port 443 does not.
	DisableHTTPChallenge    bool
	DisableTLSALPNChallenge bool
	// DNS01 solves dns-01 challenges through a DNS host's API: any libdns
	// provider, as CertMagic users configure it (set
	// DNSManager.DNSProvider). Wildcard names need it; other names may be
	// validated by it too. The TXT record is removed after every attempt,
	// whether it succeeded, failed or was cancelled.
	DNS01 *certmagic.DNS01Solver
	// DNSPersist, if set, validates every name by dns-persist-01 alone:
	// a record each customer sets once; see [DNSPersist].
	DNSPersist *DNSPersist

	// Storage holds accounts, certificates and shared challenge answers.
	// Processes sharing a Storage share certificates and take turns to
	// order them. Default: files in the user's data directory; use
	// storage.Dir for another directory, storage/postgres for a fleet.
	Storage storage.Storage
	// KeyTypes are the certificate key types obtained for every name, at
	// most one ECDSA and one RSA type. Default: ECDSA P-256 and RSA 2048.
	KeyTypes []KeyType
	// Validator, if set, makes this Manager a frontend of a central
	// validation server, which alone talks to the CA; see [Validator].
	Validator *Validator
	// IssuanceToken, if set, makes this Manager a validation server for
	// frontends: [Manager.HTTPHandler] (so [Manager.Serve]'s port-80
	// server) answers their issuance requests at [IssuePath], as
	// [Manager.IssuanceHandler] with this token does.
	IssuanceToken string

	// OnDemand allows names not given to ManageSync to get a certificate on
	// their first handshake. Nil means no on-demand issuance.
	OnDemand *OnDemand
	// DefaultServerName is the name served to clients that send no server
	// name (SNI): old clients, or clients that dial an address. Empty
	// means such clients are refused.
	DefaultServerName string
	// CacheCapacity bounds the number of names held in memory; the least
	// recently used are evicted and reload from storage on their next
	// handshake. Default: [DefaultCacheCapacity].
	CacheCapacity int

	// RenewConcurrency bounds the renewals Run has in flight. Default: 4.
	RenewConcurrency int
	// RenewPerHour bounds the renewals Run starts in any hour; zero means
	// no bound beyond RenewConcurrency. Renewals falling due together are
	// spread over twelve hours in any case.
	RenewPerHour int
	// OnEvent, if set, receives every obtained and renewed certificate
	// and every failure, from the goroutine where it happened. It must
	// not block for long.
	OnEvent func(Event)

	// HSTSMaxAge is how long browsers are told, by the
	// Strict-Transport-Security header that [Manager.HTTPSHandler] adds,
	// to reach these names over HTTPS only. Zero means
	// [DefaultHSTSMaxAge]; a negative value sends no header.
	HSTSMaxAge time.Duration
	// Sites, if set, gives a site's HTTPS policy from the provider's own
	// data: whether [Manager.HTTPHandler] redirects its plain HTTP to
	// HTTPS, and its HSTS header. It is called with the normalized name
	// on every plain HTTP request and every HTTPS request, so it must be
	// fast and safe for concurrent use. Nil gives every site the zero
	// [SitePolicy]: redirect, and HSTS of HSTSMaxAge.
	Sites func(name string) SitePolicy
	// HTTPSPort is the port redirects from plain HTTP go to. Zero means
	// the port of the HTTPS listener given to [Manager.Serve], else 443;
	// set it when a load balancer or port forward puts HTTPS elsewhere.
	HTTPSPort int

	// LocalSessionTickets keeps TLS session tickets to this process, with
	// crypto/tls's own keys. By default tickets are encrypted with keys
	// kept in Storage, added every 12 hours and kept for 36, so that a
	// client resumes its session on any process sharing the storage.
	LocalSessionTickets bool

	// Logger receives the Manager's logs. Nil means Info and above to
	// standard error, as JSON; zap.NewNop() means none.
	Logger *zap.Logger

	clock clock // nil: the wall clock; tests set it
	// handshakeTimeout overrides handshakeWait; tests set it.
	handshakeTimeout time.Duration
	// issuanceTimeout overrides obtainTimeout; tests set it.
	issuanceTimeout time.Duration
	ocspHTTP        *http.Client
	sched           schedule
	servedPort      atomic.Int32  // the port of Serve's HTTPS listener
	noPort80        atomic.Bool   // Serve was given no port-80 listener: no http-01
	httpDecisions   tokenBucket   // OnDemand.Decision calls for plain HTTP requests
	tickets         ticketKeys    // session-ticket keys from storage
	reloads         chan struct{} // reads of what other processes stored, in flight
	issuanceOnce    sync.Once
	issuanceHandler http.Handler // IssuanceToken's, shared by Serve's servers

	// Maintenance without Run: see unattended.
	running         atomic.Int32 // Runs running
	passing         atomic.Bool  // a pass started by a handshake runs
	flushAt         atomic.Int64 // when such passes write unsaved records again
	noRunOnce       sync.Once
	unattendedSlots chan struct{} // renewals such passes have in flight

	initOnce sync.Once
	ready    atomic.Bool // set once setup has run: init's fast path
	initErr  error
	cache    *cache
	store    storage.Storage
	issuers  []*issuer                        // CA, then FallbackCAs
	loads    inflight.Group[*certPair]        // by name
	obtains  inflight.Group[*tls.Certificate] // by name and key type
	// adminRetries are administrators' retries in flight, by name.
	adminRetries inflight.Group[struct{}]
	accounts     inflight.Group[*acme.Account] // by CA
	chal         challenges
	orders       chan struct{} // one token per order in flight
	// backgroundOrders holds one token per order in flight that no
	// handshake waits for: half of orders at most.
	backgroundOrders chan struct{}
	turns            turns // one order at a time per name
	interned         interner
	names            storedNames   // which names storage holds
	denied           recentErrors  // names the on-demand policy refused, by name
	failing          recentErrors  // first issuances backing off, by failingKey
	unsaved          unsaved       // writes storage refused
	breaker          breaker       // failures that are no name's
	failureStatus    failureStates // what Status and the metrics read of them
	stats            stats         // counters for the metrics
	config           string        // configID, fixed at setup

	mu        sync.RWMutex        // guards managed, groups and primaries
	managed   map[string]struct{} // names given to ManageSync or ManageGroup
	groups    map[string][]string // ManageGroup's groups, by first name
	primaries map[string]string   // the first name of each grouped name

	storedAccountOnce sync.Once
}

// ExternalAccount is the key identifier and HMAC key a CA gives for
// binding an ACME account to an account of its own.
type ExternalAccount struct {
	KeyID string
	// MACKey is the HMAC key, base64url-encoded, as CAs hand it out.
	MACKey string
}

// ErrNotManaged is returned for a server name that is neither managed nor
// allowed on demand, and has no certificate in storage.
var ErrNotManaged = errors.New("acmetls: server name not managed and not allowed on demand")

// init fills the defaults once. Errors are configuration errors and are
// returned by every later call.
func (m *Manager) init() error {
	if m.ready.Load() {
		return m.initErr
	}
	return m.initSlow()
}

// initSlow is init before setup has run; kept out of line, so that init's
// fast path inlines into the handshake path.
//
//go:noinline
func (m *Manager) initSlow() error {
	m.initOnce.Do(m.setup)
	return m.initErr
}

// setup is init's work, done once.
func (m *Manager) setup() {
	defer m.ready.Store(true)
	if err := checkKeyTypes(m.keyTypes()); err != nil {
		m.initErr = err
		return
	}
	if m.DisableHTTPChallenge && m.DisableTLSALPNChallenge && m.DNS01 == nil && m.DNSPersist == nil {
		m.initErr = errors.New("acmetls: both challenge types are disabled; the CA could validate nothing")
		return
	}
	m.cache = newCache(m.cacheCapacity())
	m.names.seed = maphash.MakeSeed()
	m.config = m.configID()
	m.orders = make(chan struct{}, maxConcurrentOrders)
	m.backgroundOrders = make(chan struct{}, maxConcurrentOrders/2)
	m.sched.wake = make(chan struct{}, 1)
	m.httpDecisions = tokenBucket{burst: httpDecisionsBurst, perSecond: httpDecisionsPerSecond}
	m.chal.reads = tokenBucket{burst: answerReadsBurst, perSecond: answerReadsPerSecond}
	m.reloads = make(chan struct{}, 8)
	m.sched.due = new(atomic.Bool)
	m.sched.clock = m.clock
	if m.sched.clock == nil {
		m.sched.clock = realClock{}
	}
	m.unattendedSlots = make(chan struct{}, m.renewConcurrency())
	m.sched.limit.PerHour = m.RenewPerHour
	m.ocspHTTP = &http.Client{Timeout: 10 * time.Second}
	m.store = m.Storage
	if m.store == nil {
		m.store = storage.Dir(defaultStorageDir())
	}
	if err := m.setupIssuers(); err != nil {
		m.initErr = err
	}
}

func (m *Manager) ca() string {
	if m.CA != "" {
		return m.CA
	}
	return LetsEncryptURL
}

func (m *Manager) keyTypes() []KeyType {
	if len(m.KeyTypes) > 0 {
		return m.KeyTypes
	}
	return []KeyType{ECDSAP256, RSA2048}
}

func (m *Manager) cacheCapacity() int {
	if m.CacheCapacity > 0 {
		return m.CacheCapacity
	}
	return DefaultCacheCapacity
}

func (m *Manager) logger() *zap.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return defaultLogger()
}

// defaultLogger logs at Info and above to standard error, in zap's
// production form (JSON, sampled), so that a server started with a
// zero Manager shows why a certificate could not be obtained.
var defaultLogger = sync.OnceValue(func() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.DisableStacktrace = true
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l.Named("acmetls")
})

// defaultStorageDir is acmetls under the user's data directory:
// $XDG_DATA_HOME, else ~/.local/share on Unix; the user's configuration
// directory on macOS and Windows.
func defaultStorageDir() string {
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		if dir, err := os.UserConfigDir(); err == nil {
			return filepath.Join(dir, "acmetls")
		}
	}
	if dir := os.Getenv("XDG_DATA_HOME"); dir != "" {
		return filepath.Join(dir, "acmetls")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "acmetls")
	}
	return filepath.Join(os.TempDir(), "acmetls")
}

// TLSConfig returns a configuration for a TLS listener: certificates from
// [Manager.GetCertificate], HTTP/2 and HTTP/1.1 offered, the tls-alpn-01
// protocol answered, TLS 1.2 at least, and for TLS 1.2 only the ECDHE
// suites with AEAD ciphers (no CBC, no RSA key exchange, which scanners
// flag); TLS 1.3 and the key exchanges are Go's defaults. Session tickets
// are sealed with keys shared through storage (see
// [Manager.LocalSessionTickets]).
func (m *Manager) TLSConfig() *tls.Config {
	cfg := &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1", acmeTLS1Protocol},
		MinVersion:     tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
	if !m.LocalSessionTickets {
		cfg.WrapSession, cfg.UnwrapSession = m.wrapSession, m.unwrapSession
	}
	return cfg
}

// ManageSync makes the Manager serve names, obtaining now whatever
// certificate storage does not already hold. A name may be an IP address
// (RFC 8738), whose certificate is served to clients that dial it and
// send no server name; Let's Encrypt issues those in its shortlived
// profile only (see [Manager.Profile]). It returns when every name has
// a certificate of every key type, or with the errors of those that failed;
// the others are served regardless.
//
// The CA validates a new name by connecting to it on port 80 or 443: call
// ManageSync once this process answers there ([Manager.HTTPHandler] and a
// listener with [Manager.TLSConfig]), not before. Renewal needs
// [Manager.Run]. [Manager.Serve] does both in that order.
func (m *Manager) ManageSync(ctx context.Context, names ...string) error {
	if err := m.init(); err != nil {
		return err
	}
	normalized := make([]string, 0, len(names))
	var errs []error
	for _, raw := range names {
		name, err := normalizeIdentifier(raw)
		if err == nil {
			err = m.checkValidatable(name)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		normalized = append(normalized, name)
	}
	m.mu.Lock()
	if m.managed == nil {
		m.managed = make(map[string]struct{})
	}
	for _, name := range normalized {
		m.managed[name] = struct{}{}
	}
	m.mu.Unlock()
	errs = append(errs, m.forEach(normalized, 4*runtime.GOMAXPROCS(0), func(name string) error {
		var errs []error
		for _, kt := range m.keyTypes() {
			if _, err := m.certFor(ctx, name, kt); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}))
	return errors.Join(errs...)
}

// checkValidatable refuses a wildcard name when no solver can validate
// it: it needs dns-01 or dns-persist-01.
func (m *Manager) checkValidatable(name string) error {
	if strings.HasPrefix(name, "*.") && m.DNS01 == nil && m.DNSPersist == nil {
		return fmt.Errorf("acmetls: %q: a wildcard is validated by dns-01 or dns-persist-01 only; set Manager.DNS01 or Manager.DNSPersist", name)
	}
	return nil
}

// forEach calls fn for every name from at most workers goroutines, so that
// loading many names from storage overlaps its waits and uses every core,
// and joins the errors. Orders to the CA are bounded separately.
func (m *Manager) forEach(names []string, workers int, fn func(name string) error) error {
	workers = min(len(names), workers)
	next := make(chan string)
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			var errs []error
			for name := range next {
				if err := fn(name); err != nil {
					errs = append(errs, err)
				}
			}
			errc <- errors.Join(errs...)
		}()
	}
	for _, name := range names {
		next <- name
	}
	close(next)
	var errs []error
	for w := 0; w < workers; w++ {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// certFor returns the certificate of name for kt: from the cache, else from
// storage, else from the CA. The caller has checked name may be served.
func (m *Manager) certFor(ctx context.Context, name string, kt KeyType) (*tls.Certificate, error) {
	if p := m.cache.get(name); p != nil {
		if c := p.get(kt); c != nil {
			return c, nil
		}
	}
	if primary := m.primaryOf(name); primary != "" && primary != name {
		// A grouped name: its certificate is its group's.
		return m.certFor(ctx, primary, kt)
	}
	return m.obtains.Do(ctx, name+"/"+string(kt), func(ctx context.Context) (*tls.Certificate, error) {
		return m.loadOrObtain(ctx, name, kt)
	})
}

// isManaged reports whether name was given to ManageSync.
func (m *Manager) isManaged(name string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.managed[name]
	return ok
}

// accountKey returns the private key of the first CA's account if storage
// holds the account, or nil. Storage is asked once per Manager.
func (m *Manager) accountKey(ctx context.Context) crypto.Signer {
	if m.Validator != nil {
		return nil // a frontend holds no account, and reads none
	}
	is := m.issuers[0]
	m.storedAccountOnce.Do(func() {
		a, err := m.loadAccount(ctx, storage.AccountKey(is.url, m.Email))
		if err != nil {
			return
		}
		is.mu.Lock()
		if is.account == nil {
			is.account = a
		}
		is.mu.Unlock()
	})
	is.mu.RLock()
	defer is.mu.RUnlock()
	if is.account == nil {
		return nil
	}
	return is.account.PrivateKey
}
