package acmetls

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// serveEnv is a CA validating on two listeners that Serve is then given.
type serveEnv struct {
	ca               *acmetest.CA
	httpLn, httpsLn  net.Listener
	httpURL, tlsAddr string
}

func newServeEnv(t *testing.T, opts acmetest.Options) *serveEnv {
	t.Helper()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.HTTPPort = httpLn.Addr().(*net.TCPAddr).Port
	opts.TLSPort = httpsLn.Addr().(*net.TCPAddr).Port
	ca, err := acmetest.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Close)
	return &serveEnv{ca: ca, httpLn: httpLn, httpsLn: httpsLn,
		httpURL: "http://" + httpLn.Addr().String(), tlsAddr: httpsLn.Addr().String()}
}

// client is an HTTP client that reaches every name at the Serve
// listeners and trusts the CA.
func (e *serveEnv) client() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(addr)
		var d net.Dialer
		if port == "80" {
			return d.DialContext(ctx, network, e.httpLn.Addr().String())
		}
		return d.DialContext(ctx, network, e.tlsAddr)
	}
	return &http.Client{
		Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: e.ca.Roots()}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Timeout: time.Minute,
	}
}

// Serve starts listening before it asks for certificates, so that the
// CA's first validation succeeds; it redirects plain HTTP to the HTTPS
// port it was given, serves the application with HSTS, and, with a
// request in flight when its context ends, lets it finish, returns nil
// and leaves no goroutine behind.
func TestServe(t *testing.T) {
	e := newServeEnv(t, acmetest.Options{})
	const name = "serve.example.com"
	m := &Manager{
		CA: e.ca.DirectoryURL, Email: "admin@example.com", AgreeToTerms: true,
		HTTPClient: e.ca.HTTPClient(), Storage: &storage.Memory{},
		DisableTLSALPNChallenge: true, // the first validation is on the port-80 listener
		Logger:                  zap.NewNop(),
	}
	var evs events
	m.OnEvent = evs.add
	entered, release := make(chan struct{}), make(chan struct{})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		io.WriteString(w, "served "+r.URL.RequestURI())
	})
	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, e.httpLn, e.httpsLn, app, name) }()

	waitFor(t, "the certificates", func() bool { return len(evs.of(EventObtained)) == 2 })
	c := e.client()
	defer c.CloseIdleConnections()
	_, port, _ := net.SplitHostPort(e.tlsAddr)
	resp, err := c.Get("http://" + name + "/docs/a?q=1&r=%2F")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := "https://" + name + ":" + port + "/docs/a?q=1&r=%2F"; resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
		t.Errorf("plain HTTP: %d to %q, want 301 to %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	resp, err = c.Get("https://" + name + "/docs/a?q=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "served /docs/a?q=1" || resp.Header.Get("Strict-Transport-Security") != "max-age=5184000" {
		t.Errorf("HTTPS: %q, HSTS %q", body, resp.Header.Get("Strict-Transport-Security"))
	}
	if got := resp.TLS.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != name {
		t.Errorf("certificate for %v", got)
	}

	// A request in flight when the context ends.
	slow := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://" + name + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(b)
	}()
	<-entered
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve returned with a request in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := net.DialTimeout("tcp", e.tlsAddr, time.Second); err == nil {
		t.Error("the HTTPS listener still accepts after the context ended")
	}
	close(release)
	if got := <-slow; got != "served /slow" {
		t.Errorf("the request in flight got %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	c.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// Serve returns the error of a listener that fails, and a configuration
// error before serving anything.
func TestServeErrors(t *testing.T) {
	m := &Manager{DisableHTTPChallenge: true, DisableTLSALPNChallenge: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Serve(context.Background(), nil, ln, http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("Serve with no challenge type: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("Serve did not close its listener on a configuration error")
	}

	m = &Manager{Storage: &storage.Memory{}}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Accept fails at once
	err = m.Serve(context.Background(), nil, ln, http.NotFoundHandler())
	if err == nil || !strings.Contains(err.Error(), "serving") {
		t.Errorf("Serve on a closed listener: %v", err)
	}
}

// Item 2 of the first-run issue: a Manager whose Run never ran renews
// from a handshake that finds its certificate due, serves the renewed
// one, and says once at Warn that Run is not running.
func TestRenewalWithoutRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	core, logs := observer.New(zap.WarnLevel)
	const name = "norun.example.com"
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.clock = clock
		m.OnEvent = evs.add
		m.Logger = zap.New(core)
		m.Storage = &certmagic.FileStorage{Path: t.TempDir()}
	})
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	first, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.handshake(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := logs.FilterMessageSnippet("Run is not running").Len(); n != 0 {
		t.Fatalf("warned %d times before anything was due", n)
	}
	clock.Add(80 * 24 * time.Hour) // past the renewal window, before expiry
	waitFor(t, "a handshake to start the renewal", func() bool {
		if _, err := e.handshake(name, nil); err != nil {
			t.Fatal(err)
		}
		return len(evs.of(EventRenewed)) == 1
	})
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PeerCertificates[0].SerialNumber.Cmp(first.PeerCertificates[0].SerialNumber) == 0 {
		t.Error("the old certificate is still served after the renewal")
	}
	clock.Add(2 * time.Hour) // the renewed one, already due by this clock, after its first hour
	waitFor(t, "a second renewal", func() bool {
		if _, err := e.handshake(name, nil); err != nil {
			t.Fatal(err)
		}
		return len(evs.of(EventRenewed)) == 2
	})
	if n := logs.FilterMessageSnippet("Run is not running").Len(); n != 1 {
		t.Errorf("warned %d times that Run is not running, want once", n)
	}
	if n := e.ca.FinalizationsFor(name, "ECDSA"); n != 3 {
		t.Errorf("finalizations = %d, want the first issuance and two renewals", n)
	}
}

// A Manager whose Run is running does no maintenance from handshakes.
func TestNoPassWhileRunRuns(t *testing.T) {
	t.Parallel()
	m := cachedManager(t, 10, "busy.example.com")
	m.sched.due.Store(true)
	m.running.Add(1)
	hello := goHello(t, "busy.example.com", &tls.Config{})
	if _, err := m.GetCertificate(hello); err != nil {
		t.Fatal(err)
	}
	if !m.sched.due.Load() || m.passing.Load() {
		t.Error("a handshake started a maintenance pass while Run runs")
	}
	m.running.Add(-1)
	if _, err := m.GetCertificate(hello); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pass", func() bool { return !m.sched.due.Load() && !m.passing.Load() })
}

// Serve without a port-80 listener asks the CA for tls-alpn-01 only: no
// validation fails on the missing port, and each certificate takes one
// order.
func TestServeWithoutPort80(t *testing.T) {
	e := newServeEnv(t, acmetest.Options{})
	e.httpLn.Close() // nothing answers on the CA's http-01 port
	const name = "noport80.example.com"
	var evs events
	m := &Manager{
		CA: e.ca.DirectoryURL, Email: "admin@example.com", AgreeToTerms: true,
		HTTPClient: e.ca.HTTPClient(), Storage: &storage.Memory{}, OnEvent: evs.add,
		Logger: zap.NewNop(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, nil, e.httpsLn, http.NotFoundHandler(), name) }()
	waitFor(t, "the certificates", func() bool { return len(evs.of(EventObtained)) == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(e.ca.Orders()); n != 2 || len(evs.of(EventObtainFailed)) != 0 {
		t.Errorf("%d orders, %d failures; want 2 orders, none failed", n, len(evs.of(EventObtainFailed)))
	}

	m = &Manager{DisableTLSALPNChallenge: true, Storage: &storage.Memory{}}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := m.Serve(context.Background(), nil, ln, http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "validate nothing") {
		t.Errorf("Serve with no port 80 and tls-alpn-01 disabled: %v", err)
	}
}
