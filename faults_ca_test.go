package acmetls

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/goleak"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// The fault suite, part two: a CA that forgets, hangs, or is reached with
// the wrong settings, and orders that race. Each test prints its figures.

// Item 6: the CA forgets the account (its database reset) or the account
// is deactivated: the next order registers a new account once, says so,
// and succeeds.
func TestCAForgetsTheAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	var evs events
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.OnEvent = evs.add })
	ctx := context.Background()
	if err := m.ManageSync(ctx, "first.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := m.ManageSync(ctx, "second.example.com"); err != nil {
		t.Fatalf("the first order after the CA reset: %v", err)
	}
	if _, err := e.handshake("second.example.com", nil); err != nil {
		t.Fatal(err)
	}
	afterReset := len(evs.of(EventAccountReplaced))

	// An operator deactivates the account.
	account, err := m.getAccount(ctx, m.issuers[0])
	if err != nil {
		t.Fatal(err)
	}
	deactivate := *account // a copy: the Manager's stays as it knows it
	deactivate.Status = acme.StatusDeactivated
	if _, err := m.issuers[0].client.UpdateAccount(ctx, deactivate); err != nil {
		t.Fatalf("deactivating the account: %v", err)
	}
	if err := m.ManageSync(ctx, "third.example.com"); err != nil {
		t.Fatalf("the first order after deactivation: %v", err)
	}
	// A restarted process uses the new account from storage.
	m2 := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.OnEvent = evs.add })
	if err := m2.ManageSync(ctx, "fourth.example.com"); err != nil {
		t.Fatal(err)
	}
	replaced := evs.of(EventAccountReplaced)
	t.Logf("CA reset: next order succeeded, %d account_replaced event(s); account deactivated: next order succeeded; %d event(s) in all; %d accounts registered at the CA in all",
		afterReset, len(replaced), e.ca.Accounts())
	if afterReset != 1 || len(replaced) != 2 || replaced[0].ServerName != "second.example.com" || replaced[0].Err == nil {
		t.Errorf("account_replaced events: %v", replaced)
	}
}

// Item 7: a name's ECDSA and RSA first issuances run at once for many
// names, tls-alpn-01 only: their challenge answers never overwrite each
// other, so no validation fails and no order is placed twice.
func TestConcurrentDualIssuanceNeverFailsValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	var evs events
	m := e.manager(func(m *Manager) {
		m.DisableHTTPChallenge = true
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.OnEvent = evs.add
	})
	const names = 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range names {
		name := fmt.Sprintf("dual%d.example.com", i)
		for _, cfg := range []*tls.Config{ecdsaTLS13Client, rsaOnlyTLS12} {
			wg.Go(func() {
				if _, err := e.handshakeWithin(name, cfg, time.Minute); err != nil {
					failed.Add(1)
					t.Errorf("%s: %v", name, err)
				}
			})
		}
	}
	wg.Wait()
	waitFor(t, "the issuances in the background", func() bool { return m.obtains.Len() == 0 })
	extra := 0
	for i := range names {
		for _, alg := range []string{"ECDSA", "RSA"} {
			if n := e.ca.FinalizationsFor(fmt.Sprintf("dual%d.example.com", i), alg); n != 1 {
				extra += n - 1
			}
		}
	}
	fails := evs.of(EventObtainFailed)
	t.Logf("%d names, an ECDSA and an RSA-only client each at once, tls-alpn-01 only: %d failed handshakes, %d failed issuances, %d orders (want %d)",
		names, failed.Load(), len(fails), len(e.ca.Orders()), 2*names)
	if len(fails) != 0 || extra != 0 || len(e.ca.Orders()) != 2*names {
		for _, f := range fails {
			t.Errorf("failed: %v", f)
		}
		t.Errorf("%d extra certificates, %d orders", extra, len(e.ca.Orders()))
	}
}

// Item 8: whatever the CA's renewal window says, a renewal starts with a
// tenth of the lifetime left: a window that reaches notAfter is cut.
func TestRenewalLeavesATenthOfTheLifetime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.clock = clock; m.OnEvent = evs.add })
	ctx := context.Background()
	names := make([]string, 20)
	for i := range names {
		names[i] = fmt.Sprintf("ari%d.example.com", i)
	}
	if err := m.ManageSync(ctx, names...); err != nil {
		t.Fatal(err)
	}
	worst, latest := 1.0, names[0]
	var latestDue time.Time
	for _, name := range names {
		tr := m.tracked(name, ECDSAP256)
		c, _, err := m.readCert(ctx, name, ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Leaf.Raw})
		life := tr.notAfter.Sub(tr.notBefore)
		if err := e.ca.SetRenewalInfo(leafPEM, tr.notBefore.Add(life/2), tr.notAfter); err != nil {
			t.Fatal(err)
		}
		m.pollARI(ctx, tr)
		m.sched.mu.Lock()
		due := tr.due
		m.sched.mu.Unlock()
		left := float64(tr.notAfter.Sub(due)) / float64(life)
		if left < worst {
			worst = left
		}
		if due.After(latestDue) {
			latest, latestDue = name, due
		}
	}
	// The latest of them renews at its time, before its deadline.
	tr := m.tracked(latest, ECDSAP256)
	runManager(t, m)
	clock.setFor(m, latestDue)
	var renewedAt time.Time
	waitFor(t, "the renewal", func() bool {
		for _, ev := range evs.of(EventRenewed) {
			if ev.ServerName == latest {
				renewedAt = clock.Now()
				return true
			}
		}
		// Renewals due together start RenewConcurrency at a time, the
		// next ones a second later.
		clock.setFor(m, clock.Now().Add(time.Second))
		return false
	})
	t.Logf("20 certificates whose ARI window reaches notAfter: the latest renewal starts with %.1f%% of the lifetime left; %s renewed at +%.1f%% of its lifetime",
		100*worst, latest, 100*float64(renewedAt.Sub(tr.notBefore))/float64(tr.notAfter.Sub(tr.notBefore)))
	if worst < 0.1 {
		t.Errorf("a renewal starts with %.1f%% of the lifetime left, want at least 10%%", 100*worst)
	}
}

// hangingCA makes the CA hold new orders, while on, until the client
// leaves or the test ends, and counts those it holds.
type hangingCA struct {
	on   atomic.Bool
	held atomic.Int32
	gate chan struct{}
	once sync.Once
}

// newHangingEnv is newEnv with a CA that hangs new orders while the
// returned switch is on (it starts on if hang is true).
func newHangingEnv(t *testing.T, opts acmetest.Options, hang bool) (*env, *hangingCA) {
	h := &hangingCA{gate: make(chan struct{})}
	h.on.Store(hang)
	opts.Intercept = h.intercept
	e := newEnv(t, opts)
	t.Cleanup(h.release) // before the CA closes
	return e, h
}

func (h *hangingCA) intercept(w http.ResponseWriter, r *http.Request) bool {
	if !h.on.Load() || r.URL.Path != "/order-plz" {
		return false
	}
	// Read the body, so that the server notices the client leaving.
	_, _ = io.Copy(io.Discard, r.Body)
	h.held.Add(1)
	defer h.held.Add(-1)
	select {
	case <-r.Context().Done():
	case <-h.gate:
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return true
}

// release answers the orders held, and the next ones, with a 503.
func (h *hangingCA) release() { h.once.Do(func() { close(h.gate) }) }

// dueManager returns a Manager holding a certificate for name that is
// long past due, on a fake clock, and the clock.
func dueManager(t *testing.T, e *env, name string, evs *events) (*Manager, *fakeClock) {
	clock := newFakeClock(time.Now())
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.clock = clock
		m.OnEvent = evs.add
		m.Storage = &storage.Memory{}
	})
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	clock.Add(80 * 24 * time.Hour)
	return m, clock
}

// Item 9: Run cancelled while a renewal waits on the CA: the renewal
// stops, and nothing is recorded as a failure.
func TestShutdownIsNotAFailure(t *testing.T) {
	t.Parallel()
	e, ca := newHangingEnv(t, acmetest.Options{}, false)
	var evs events
	const name = "shutdown.example.com"
	m, _ := dueManager(t, e, name, &evs)
	ca.on.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "the renewal to reach the CA", func() bool { return ca.held.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_, err := m.store.Load(context.Background(), storage.StateKey(name, string(ECDSAP256)))
	st, _ := m.loadState(context.Background(), name, ECDSAP256)
	t.Logf("Run cancelled mid-renewal: %d renew_failed events, stored state: %v, failures %d", len(evs.of(EventRenewFailed)), err, st.Failures)
	if len(evs.of(EventRenewFailed)) != 0 || !errors.Is(err, fs.ErrNotExist) || st.Failures != 0 {
		t.Errorf("a shutdown was recorded as a failure: events %v, state %+v", evs.of(EventRenewFailed), st)
	}
}

// Item 13: Run returns with nothing left running, even with renewals
// stuck at a hanging CA, and closes the idle connections of its client.
func TestRunLeavesNothingWithAHangingCA(t *testing.T) {
	e, ca := newHangingEnv(t, acmetest.Options{}, false)
	var evs events
	m, _ := dueManager(t, e, "leak.example.com", &evs)
	closes := &closeCounter{RoundTripper: m.issuers[0].client.HTTPClient.Transport.(retryAfterTransport).base}
	m.issuers[0].client.HTTPClient.Transport = retryAfterTransport{base: closes}
	m.issuers[0].client.HTTPClient.CloseIdleConnections()
	ca.on.Store(true)
	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "the renewal to reach the CA", func() bool { return ca.held.Load() == 1 })
	before := closes.n.Load()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("Run returned with a renewal stuck at the CA; idle connections closed %d time(s)", closes.n.Load()-before)
	goleak.VerifyNone(t, ignore)
	if closes.n.Load() == before {
		t.Error("Run's CloseIdleConnections did not reach the transport")
	}
}

// closeCounter counts CloseIdleConnections calls that reach it.
type closeCounter struct {
	http.RoundTripper
	n atomic.Int32
}

func (c *closeCounter) CloseIdleConnections() {
	c.n.Add(1)
	if ci, ok := c.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// Item 13: first issuances whose handshakes all left before an order slot
// freed stop; those already at the CA finish.
func TestIssuancesStopWhenTheirClientsLeave(t *testing.T) {
	t.Parallel()
	e, ca := newHangingEnv(t, acmetest.Options{}, true)
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.Storage = &storage.Memory{}
		m.handshakeTimeout = 2 * time.Second
	})
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			cfg := &tls.Config{ServerName: fmt.Sprintf("gone%d.example.com", i), RootCAs: e.ca.Roots()}
			d := &tls.Dialer{Config: cfg}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if c, err := d.DialContext(ctx, "tcp", e.tlsAddr); err == nil {
				c.Close()
				t.Error("a handshake succeeded against a hanging CA")
			}
		})
	}
	wg.Wait()
	waitFor(t, "work without clients to stop", func() bool { return m.obtains.Len() <= maxConcurrentOrders })
	t.Logf("30 first issuances whose clients left after 1 s, the CA hanging: %d still running after the handshakes' %v (%d at the CA)",
		m.obtains.Len(), m.handshakeTimeout, ca.held.Load())
	if ca.held.Load() > maxConcurrentOrders {
		t.Errorf("%d orders at the CA", ca.held.Load())
	}
	ca.release()
	waitFor(t, "the orders at the CA to end", func() bool { return m.obtains.Len() == 0 })
}

// Item 13: RetryAll retries RenewConcurrency names at once.
func TestRetryAllRunsConcurrently(t *testing.T) {
	t.Parallel()
	var refusing atomic.Bool
	var inFlight, peak atomic.Int32
	refuse := refuseOrders(&refusing, "1")
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/order-plz" && !refusing.Load() {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(300 * time.Millisecond)
		}
		return refuse(w, r)
	}})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.RenewConcurrency = 4 })
	names := make([]string, 10)
	for i := range names {
		names[i] = fmt.Sprintf("retry%d.example.com", i)
	}
	refusing.Store(true)
	ctx := context.Background()
	if err := m.ManageSync(ctx, names...); err == nil {
		t.Fatal("obtained against a refusing CA")
	}
	refusing.Store(false)
	start := time.Now()
	if err := m.RetryAll(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("RetryAll over %d names: %v, at most %d orders at once (RenewConcurrency 4)", len(names), time.Since(start).Round(time.Millisecond), peak.Load())
	if p := peak.Load(); p < 2 || p > 4 {
		t.Errorf("at most %d orders at once, want 2 to 4", p)
	}
	for _, name := range names {
		if _, err := e.handshake(name, nil); err != nil {
			t.Errorf("%s after RetryAll: %v", name, err)
		}
	}
}

// Item 10: setup mistakes are not a name's failures. Terms not agreed and
// a CA whose certificate is not trusted fail at once and store nothing; a
// restart with the setting fixed obtains at once. A failure recorded under
// other challenge settings does not hold back the new ones.
func TestConfigurationErrorsAreNotBackoffs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	ctx := context.Background()
	kts := func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} }
	var evs events
	terms := e.manager(kts, func(m *Manager) { m.AgreeToTerms = false; m.OnEvent = evs.add })
	err := terms.ManageSync(ctx, "terms.example.com")
	if !errors.Is(err, ErrTermsNotAgreed) {
		t.Fatalf("without agreeing: %v", err)
	}
	untrusted := e.manager(kts, func(m *Manager) { m.HTTPClient = &http.Client{} })
	err2 := untrusted.ManageSync(ctx, "trust.example.com")
	if err2 == nil || !isConfigError(err2) {
		t.Fatalf("a CA whose certificate is not trusted: %v", err2)
	}
	_, listErr := e.storage.List(ctx, storage.StatesDir, false)
	start := time.Now()
	fixed := e.manager(kts)
	if err := fixed.ManageSync(ctx, "terms.example.com", "trust.example.com"); err != nil {
		t.Fatalf("after the fix: %v", err)
	}
	took := time.Since(start)

	// A failure under other challenge settings: http-01 only, and the CA
	// reaches a frontend that cannot answer.
	const name = "settings.example.com"
	httpOnly := e.manager(kts, func(m *Manager) { m.DisableTLSALPNChallenge = true })
	e.front.Store(&Manager{Storage: &storage.Memory{}}) // answers nothing
	if err := httpOnly.ManageSync(ctx, name); err == nil || !strings.Contains(err.Error(), "port 80 (http-01") || strings.Contains(err.Error(), "port 443") {
		t.Fatalf("http-01 answered by a frontend without the answer: %v, want a hint at port 80 alone", err)
	}
	if st, _ := httpOnly.loadState(ctx, name, ECDSAP256); st.Failures != 1 {
		t.Fatalf("the validation failure was not recorded: %+v", st)
	}
	alpnOnly := e.manager(kts, func(m *Manager) { m.DisableHTTPChallenge = true })
	if err := alpnOnly.ManageSync(ctx, name); err != nil {
		t.Fatalf("tls-alpn-01 after an http-01 failure: %v", err)
	}
	fails := evs.of(EventObtainFailed)
	t.Logf("terms not agreed and an untrusted CA: no renewal state stored (%v); restart with both fixed: certificates in %v; %d event(s) with attempt %d; a failure under http-01 only did not hold back tls-alpn-01",
		listErr, took.Round(time.Millisecond), len(fails), fails[0].Attempt)
	if !errors.Is(listErr, fs.ErrNotExist) {
		t.Errorf("renewal states stored for configuration errors: %v", listErr)
	}
	if len(fails) != 1 || fails[0].Attempt != 0 {
		t.Errorf("events %v, want one with attempt 0", fails)
	}
}

// A configuration error is remembered briefly: handshakes during that
// time do not try again.
func TestConfigurationErrorIsNotRetriedPerHandshake(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	e.manager(func(m *Manager) {
		m.AgreeToTerms = false
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.clock = clock
		m.OnEvent = evs.add
	})
	for i := range 20 {
		if _, err := e.handshake(fmt.Sprintf("n%d.example.com", i), nil); err == nil {
			t.Fatal("served without terms")
		}
	}
	first := len(evs.of(EventObtainFailed))
	clock.Add(configErrorMemory + time.Second)
	_, _ = e.handshake("later.example.com", nil)
	t.Logf("terms not agreed: 20 handshakes for new names -> %d attempt(s); %d more after %v", first, len(evs.of(EventObtainFailed))-first, configErrorMemory)
	if first != 1 || len(evs.of(EventObtainFailed)) != 2 {
		t.Errorf("attempts: %d, then %d more; want 1 and 1", first, len(evs.of(EventObtainFailed))-first)
	}
}

// A CA outage is no name's failure: names that met it are not held back
// once it is over, and the attempts during it are one per breaker step for
// the whole Manager, not one per name.
func TestCAOutageIsNotTheNamesBackoff(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	var reached atomic.Int32
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if !down.Load() {
			return false
		}
		reached.Add(1)
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close() // gone
				return true
			}
		}
		return false
	}})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.OnEvent = evs.add
		m.clock = clock
	})
	if err := m.ManageSync(context.Background(), "up.example.com"); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	steps := 0
	for range 4 { // two hours of outage, handshakes for 10 names all along
		for i := range 10 {
			if _, err := e.handshake(fmt.Sprintf("during%d.example.com", i), nil); err == nil {
				t.Fatal("served while the CA is down")
			}
		}
		steps++
		clock.Add(30 * time.Minute)
	}
	attempts := len(evs.of(EventObtainFailed))
	down.Store(false)
	clock.Add(maxOutageWait)
	for i := range 10 {
		if _, err := e.handshake(fmt.Sprintf("during%d.example.com", i), nil); err != nil {
			t.Fatalf("after the outage: %v", err)
		}
	}
	if _, err := e.handshake("up.example.com", nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("CA down for 2 hours, 10 names asked every 30 minutes: %d failed attempt(s), %d request(s) reaching the dead CA; once it is back, all 10 served at once", attempts, reached.Load())
	if attempts > steps {
		t.Errorf("%d attempts in %d breaker steps", attempts, steps)
	}
	for _, ev := range evs.of(EventObtainFailed) {
		if ev.Attempt != 0 {
			t.Errorf("an outage counted against %s: %v", ev.ServerName, ev)
		}
	}
}

// Orders no handshake waits for (the other key type, renewals) hold half of
// the order slots at most: a client waiting for a first certificate gets
// to the CA whatever the background does.
func TestBackgroundOrdersLeaveSlotsForClients(t *testing.T) {
	t.Parallel()
	e, ca := newHangingEnv(t, acmetest.Options{}, true)
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.Storage = &storage.Memory{}
	})
	if err := m.init(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 * maxConcurrentOrders {
		name := fmt.Sprintf("bg%d.example.com", i)
		m.obtains.Go(inBackground(context.Background()), name+"/"+string(ECDSAP256), func(ctx context.Context) (*tls.Certificate, error) {
			return m.loadOrObtain(ctx, name, ECDSAP256)
		})
	}
	waitFor(t, "the background orders to reach the CA", func() bool { return ca.held.Load() == maxConcurrentOrders/2 })
	go e.handshakeWithin("client.example.com", nil, time.Minute)
	waitFor(t, "the client's order to reach the CA", func() bool { return ca.held.Load() == maxConcurrentOrders/2+1 })
	t.Logf("%d background orders asked for, the CA hanging: %d at the CA, and a client's order beside them", 2*maxConcurrentOrders, maxConcurrentOrders/2)
	ca.release()
	waitFor(t, "the orders to end", func() bool { return m.obtains.Len() == 0 })
}
