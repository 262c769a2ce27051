package acmetls

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// accountReads counts the reads of account records through it.
type accountReads struct {
	storage.Storage
	n atomic.Int32
}

func (s *accountReads) Load(ctx context.Context, key string) ([]byte, error) {
	if strings.HasPrefix(key, storage.Prefix+"/accounts/") {
		s.n.Add(1)
	}
	return s.Storage.Load(ctx, key)
}

// centralEnv is a fleet as the Guide draws it: a validation server and
// two frontends on one storage; the CA validates http-01 on the first
// frontend's port 80, which redirects to the validation server.
type centralEnv struct {
	ca                 *acmetest.CA
	validation         *Manager
	fronts             [2]*Manager
	frontTLS           [2]string
	validationURL      string
	redirects, answers atomic.Int32 // challenge requests at the first frontend, at the validation server
	frontStores        [2]*accountReads
}

const fleetToken = "s3cret-fleet-token"

func newCentralEnv(t *testing.T) *centralEnv { return newCentralEnvWith(t, acmetest.Options{}) }

func newCentralEnvWith(t *testing.T, opts acmetest.Options) *centralEnv {
	t.Helper()
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	frontHTTP, front0TLS, front1TLS, valLn := listen(), listen(), listen(), listen()
	opts.HTTPPort = frontHTTP.Addr().(*net.TCPAddr).Port
	opts.TLSPort = front0TLS.Addr().(*net.TCPAddr).Port
	ca, err := acmetest.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Close)
	e := &centralEnv{ca: ca, validationURL: "http://" + valLn.Addr().String()}
	shared := &storage.Memory{}
	e.validation = &Manager{
		CA: ca.DirectoryURL, Email: "admin@example.com", AgreeToTerms: true,
		HTTPClient: ca.HTTPClient(), Storage: shared,
		DisableTLSALPNChallenge: true, // every validation is http-01, through the redirect
		OnDemand: &OnDemand{Decision: func(_ context.Context, name string) error {
			if strings.HasPrefix(name, "denied") {
				return fmt.Errorf("not a customer")
			}
			return nil
		}},
		Logger: zaptest.NewLogger(t),
	}
	for i := range e.fronts {
		e.frontStores[i] = &accountReads{Storage: shared}
		e.fronts[i] = &Manager{
			CA:        "https://127.0.0.1:1/dir", // a frontend that asked the CA would fail
			Storage:   e.frontStores[i],
			Validator: &Validator{URL: e.validationURL, Token: fleetToken},
			OnDemand:  &OnDemand{Decision: func(context.Context, string) error { return nil }},
			Logger:    zaptest.NewLogger(t),
		}
	}
	serve := func(ln net.Listener, h http.Handler, cfg *tls.Config) {
		srv := &http.Server{Handler: h, TLSConfig: cfg, ReadHeaderTimeout: time.Minute}
		if cfg != nil {
			go srv.ServeTLS(ln, "", "")
		} else {
			go srv.Serve(ln)
		}
		t.Cleanup(func() { srv.Close() })
	}
	mux := http.NewServeMux()
	mux.Handle(IssuePath, e.validation.IssuanceHandler(fleetToken))
	valHTTP := e.validation.HTTPHandler(nil)
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, httpChallengePath) {
			e.answers.Add(1)
		}
		valHTTP.ServeHTTP(w, r)
	}))
	serve(valLn, mux, nil)
	frontHTTPHandler := e.fronts[0].HTTPHandler(nil)
	serve(frontHTTP, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, httpChallengePath) {
			e.redirects.Add(1)
		}
		frontHTTPHandler.ServeHTTP(w, r)
	}), nil)
	serve(front0TLS, http.NotFoundHandler(), e.fronts[0].TLSConfig())
	serve(front1TLS, http.NotFoundHandler(), e.fronts[1].TLSConfig())
	e.frontTLS = [2]string{front0TLS.Addr().String(), front1TLS.Addr().String()}
	return e
}

func (e *centralEnv) handshake(i int, name string) (tls.ConnectionState, error) {
	d := &tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: e.ca.Roots()}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", e.frontTLS[i])
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState(), nil
}

// Items 1 and 2 of the fleet issue, in one process: concurrent first
// handshakes for new names on two frontends all succeed; the validation
// server places one order per name and key type; the frontends never ask
// the CA (theirs is unreachable) and never read the account; Pebble's
// http-01 validation reaches the first frontend and follows its redirect
// to the validation server.
func TestCentralValidation(t *testing.T) {
	e := newCentralEnv(t)
	names := []string{"c1.example.com", "c2.example.com", "c3.example.com"}
	var wg sync.WaitGroup
	var failed atomic.Int32
	for _, name := range names {
		for i := range 2 {
			for range 5 {
				wg.Go(func() {
					if _, err := e.handshake(i, name); err != nil {
						failed.Add(1)
						t.Errorf("frontend %d, %s: %v", i, name, err)
					}
				})
			}
		}
	}
	wg.Wait()
	for _, m := range e.fronts {
		waitFor(t, "the RSA certificates in the background", func() bool { return m.obtains.Len() == 0 })
	}
	for _, name := range names {
		for _, alg := range []string{"ECDSA", "RSA"} {
			if n := e.ca.FinalizationsFor(name, alg); n != 1 {
				t.Errorf("%s %s: %d certificates, want 1", name, alg, n)
			}
		}
	}
	t.Logf("%d names, 5 handshakes each on two frontends at once: %d failed, %d orders, %d challenge requests redirected by the frontend, %d answered by the validation server, %d account reads by frontends",
		len(names), failed.Load(), len(e.ca.Orders()), e.redirects.Load(), e.answers.Load(), e.frontStores[0].n.Load()+e.frontStores[1].n.Load())
	if e.redirects.Load() == 0 || e.answers.Load() < e.redirects.Load() {
		t.Errorf("the CA's validations did not go through the frontend's redirect: %d redirected, %d answered", e.redirects.Load(), e.answers.Load())
	}
	for i, s := range e.frontStores {
		if n := s.n.Load(); n != 0 {
			t.Errorf("frontend %d read the account %d times", i, n)
		}
	}
	// Both frontends serve the same certificate.
	a, err := e.handshake(0, names[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.handshake(1, names[0])
	if err != nil {
		t.Fatal(err)
	}
	if !a.PeerCertificates[0].Equal(b.PeerCertificates[0]) {
		t.Error("the frontends serve different certificates")
	}
}

// Item 5 of the fleet issue: an issuance request without the token, with
// a wrong one, or for a name the validation server's policy refuses is
// refused and places no order; a frontend gets the refusal as its
// handshake error.
func TestIssuanceRequestsRefused(t *testing.T) {
	e := newCentralEnv(t)
	post := func(auth, body string) int {
		req, _ := http.NewRequest(http.MethodPost, e.validationURL+IssuePath, bytes.NewBufferString(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	body := `{"name":"nope.example.com","key_type":"ecdsa-p256"}`
	for _, tc := range []struct {
		auth, body string
		want       int
	}{
		{"", body, http.StatusUnauthorized},
		{"Bearer wrong", body, http.StatusUnauthorized},
		{"Bearer " + fleetToken + "x", body, http.StatusUnauthorized},
		{fleetToken, body, http.StatusUnauthorized},
		{"Bearer " + fleetToken, `{"name":"denied.example.com","key_type":"ecdsa-p256"}`, http.StatusForbidden},
		{"Bearer " + fleetToken, `{"name":"a..b","key_type":"ecdsa-p256"}`, http.StatusBadRequest},
		{"Bearer " + fleetToken, `{"name":"ok.example.com","key_type":"ed25519"}`, http.StatusBadRequest},
		{"Bearer " + fleetToken, `not json`, http.StatusBadRequest},
	} {
		if got := post(tc.auth, tc.body); got != tc.want {
			t.Errorf("Authorization %q, body %s: %d, want %d", tc.auth, tc.body, got, tc.want)
		}
	}
	if _, err := e.handshake(0, "denied.example.com"); err == nil {
		t.Error("a name the validation server refuses was served")
	}
	if n := len(e.ca.Orders()); n != 0 {
		t.Errorf("%d orders placed for refused requests", n)
	}
	if n := e.ca.Accounts(); n != 0 {
		t.Errorf("%d accounts registered for refused requests", n)
	}
}

// A frontend picks up the certificate the validation server renewed,
// from storage, without asking the CA.
func TestFrontendPicksUpRenewal(t *testing.T) {
	e := newCentralEnv(t)
	clock := newFakeClock(time.Now())
	for _, m := range []*Manager{e.validation, e.fronts[0]} {
		m.clock = clock
		m.KeyTypes = []KeyType{ECDSAP256}
	}
	const name = "renewed.example.com"
	first, err := e.handshake(0, name)
	if err != nil {
		t.Fatal(err)
	}
	runManager(t, e.validation)
	runManager(t, e.fronts[0])
	clock.setFor(e.validation, clock.Now().Add(80*24*time.Hour))
	clock.setFor(e.fronts[0], clock.Now())
	waitFor(t, "the frontend to serve the renewed certificate", func() bool {
		clock.setFor(e.fronts[0], clock.Now().Add(pickupInterval))
		cs, err := e.handshake(0, name)
		return err == nil && !cs.PeerCertificates[0].Equal(first.PeerCertificates[0])
	})
	if n := e.ca.FinalizationsFor(name, "ECDSA"); n != 2 {
		t.Errorf("%d certificates, want the first and one renewal", n)
	}
}

// roundTripCounter counts the requests sent through it.
type roundTripCounter struct{ n atomic.Int32 }

func (c *roundTripCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// A frontend staples what the validation server fetched and stored, and
// asks no OCSP responder itself.
func TestFrontendStaplesFromStorage(t *testing.T) {
	responder := acmetest.NewResponder(time.Hour)
	defer responder.Close()
	e := newCentralEnvWith(t, acmetest.Options{OCSPResponderURL: responder.URL})
	responder.Attach(e.ca)
	front := e.fronts[0]
	if err := front.init(); err != nil {
		t.Fatal(err)
	}
	var asked roundTripCounter
	front.ocspHTTP = &http.Client{Transport: &asked}
	const name = "stapled.example.com"
	if _, err := e.handshake(0, name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a staple on the frontend", func() bool {
		cs, err := e.handshake(0, name)
		return err == nil && len(cs.OCSPResponse) > 0
	})
	for _, m := range []*Manager{e.validation, e.fronts[0], e.fronts[1]} {
		waitFor(t, "the work in the background", func() bool { return m.obtains.Len() == 0 })
	}
	if n := asked.n.Load(); n != 0 || responder.Requests() == 0 {
		t.Errorf("the frontend asked the responder %d times; the responder was asked %d times in all", n, responder.Requests())
	}
}

// A validation server started after certificates were obtained renews
// them: it puts every stored certificate in its schedule, although no
// handshake brings them to it; and a frontend asks no CA, even for a
// certificate past its end.
func TestValidationServerRenewsWhatWasStored(t *testing.T) {
	e := newCentralEnv(t)
	clock := newFakeClock(time.Now())
	const name = "stored-before.example.com"
	e.validation.KeyTypes = []KeyType{ECDSAP256}
	e.fronts[0].KeyTypes = []KeyType{ECDSAP256}
	if _, err := e.handshake(0, name); err != nil {
		t.Fatal(err)
	}
	// A validation server restarted: a new Manager on the same storage.
	restarted := &Manager{
		CA: e.ca.DirectoryURL, Email: "admin@example.com", AgreeToTerms: true,
		HTTPClient: e.ca.HTTPClient(), Storage: e.validation.Storage, KeyTypes: []KeyType{ECDSAP256},
		IssuanceToken: fleetToken, clock: clock, Logger: zaptest.NewLogger(t),
	}
	var evs events
	restarted.OnEvent = evs.add
	runManager(t, restarted)
	waitFor(t, "the stored certificate tracked", func() bool { return restarted.tracked(name, ECDSAP256) != nil })
	clock.setFor(restarted, clock.Now().Add(80*24*time.Hour))
	waitFor(t, "its renewal", func() bool { return len(evs.of(EventRenewed)) == 1 })

	front := e.fronts[0]
	front.clock = clock
	if err := front.init(); err != nil {
		t.Fatal(err)
	}
	tr := front.tracked(name, ECDSAP256)
	if tr == nil || !tr.ari.NextPoll.Equal(never) {
		t.Errorf("a frontend's certificate is queued to ask the CA for renewal information at %v", tr.ari.NextPoll)
	}
}

func TestChallengeURL(t *testing.T) {
	for url, want := range map[string]string{
		"http://10.0.0.5:8080":             "http://10.0.0.5:8080/.well-known/acme-challenge/tok",
		"http://validation.internal/":      "http://validation.internal/.well-known/acme-challenge/tok",
		"https://validation.internal":      "http://validation.internal/.well-known/acme-challenge/tok",
		"https://validation.internal:8443": "http://validation.internal/.well-known/acme-challenge/tok",
		"https://[2001:db8::1]:8443":       "http://[2001:db8::1]/.well-known/acme-challenge/tok",
	} {
		if got := (&Validator{URL: url}).challengeURL("/.well-known/acme-challenge/tok"); got != want {
			t.Errorf("%s: %s, want %s", url, got, want)
		}
	}
}
