package acmetls

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// events collects a Manager's events.
type events struct {
	mu  sync.Mutex // guards all
	all []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) of(kind EventKind) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Event
	for _, ev := range e.all {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// runManager runs m.Run until the test ends, and checks it returns.
func runManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// A certificate in its last third is renewed by Run, with "replaces", and
// handshakes during the renewal never fail: they get the old certificate,
// then the new one. The CA offers no renewal information here, so the
// lifetime ratio alone decides; the Manager's clock is moved to it.
func TestRunRenewsInTheRatioWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{DisableARI: true})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnEvent = evs.add
		m.clock = clock
	})
	const name = "ratio.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldSerial := cs.PeerCertificates[0].SerialNumber
	nb, na := cs.PeerCertificates[0].NotBefore, cs.PeerCertificates[0].NotAfter

	var failed, served atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := e.handshake(name, nil); err != nil {
				failed.Add(1)
			} else {
				served.Add(1)
			}
		}
	})

	runManager(t, m)
	ratio := renew.RatioTime(nb, na)
	clock.setFor(m, ratio.Add(-time.Minute))
	time.Sleep(100 * time.Millisecond)
	if n := len(evs.of(EventRenewed)); n != 0 {
		t.Fatalf("renewed before the ratio: %d", n)
	}
	clock.setFor(m, ratio.Add(renewSpread)) // past any spreading
	waitFor(t, "the renewal", func() bool { return len(evs.of(EventRenewed)) >= 1 })
	close(stop)
	wg.Wait()

	cs, err = e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PeerCertificates[0].SerialNumber.Cmp(oldSerial) == 0 {
		t.Error("still serving the old certificate after the renewal")
	}
	if n := failed.Load(); n != 0 || served.Load() == 0 {
		t.Errorf("%d of %d handshakes failed during the renewal", n, n+served.Load())
	}
	orders := e.ca.Orders()
	if len(orders) != 2 || orders[1].Replaces == "" {
		t.Errorf("orders = %+v, want a second one with replaces", orders)
	}
}

// When the CA's renewal information puts the window in the past, Run
// renews at once, without waiting for the lifetime ratio.
func TestRunRenewsWhenARIWindowIsPast(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.clock = clock
		m.OnEvent = evs.add
	})
	const name = "ari.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cs.PeerCertificates[0].Raw})
	now := time.Now()
	if err := e.ca.SetRenewalInfo(leafPEM, now.Add(-48*time.Hour), now.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Half a day on: every certificate's renewal information has been
	// read once (reads are spread over twelve hours), far from the ratio.
	clock.Set(now.Add(renew.MaxPollInterval + time.Minute))
	runManager(t, m)
	waitFor(t, "the renewal", func() bool { return len(evs.of(EventRenewed)) == 1 })
	orders := e.ca.Orders()
	if len(orders) != 2 || orders[1].Replaces == "" {
		t.Fatalf("orders = %+v, want a renewal with replaces", orders)
	}
	cs2, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cs2.PeerCertificates[0].SerialNumber.Cmp(cs.PeerCertificates[0].SerialNumber) == 0 {
		t.Error("the replaced certificate is still served")
	}
}

// With the CA refusing, attempts happen exactly on the backoff schedule;
// a restarted Manager keeps it; RetryNow tries at once; errors reach the
// admin as events and Error log lines.
func TestRenewFailureScheduleAndRetryNow(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	var attempts atomic.Int32
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/order-plz" || !failing.Load() {
			return false
		}
		attempts.Add(1)
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"type":"urn:ietf:params:acme:error:caa","detail":"CAA record forbids issuance"}`))
		return true
	}})
	clock := newFakeClock(time.Now())
	var evs events
	core, logs := observer.New(zapcore.ErrorLevel)
	newManager := func() *Manager {
		return e.manager(func(m *Manager) {
			m.KeyTypes = []KeyType{ECDSAP256}
			m.clock = clock
			m.OnEvent = evs.add
			m.Logger = zap.New(core)
		})
	}
	m := newManager()
	const name = "backoff.example.com"
	ctx := context.Background()
	if err := m.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)

	t0 := clock.Now().Add(80 * 24 * time.Hour) // long past due
	// An attempt is one order at the CA, which acmez may send more than
	// once on a 503; what matters is whether an attempt was made.
	step := func(m *Manager, at time.Duration, wantAttempt bool) {
		t.Helper()
		clock.Set(t0.Add(at))
		before := attempts.Load()
		err := m.renew(ctx, m.tracked(name, ECDSAP256), false)
		if errors.Is(err, errBackingOff) == wantAttempt {
			t.Fatalf("at +%v: %v", at, err)
		}
		if err == nil && wantAttempt {
			t.Fatalf("at +%v: renewal succeeded against a failing CA", at)
		}
		if made := attempts.Load() > before; made != wantAttempt {
			t.Fatalf("at +%v: attempt made = %v, want %v", at, made, wantAttempt)
		}
	}
	step(m, 0, true)               // first attempt fails
	step(m, 59*time.Second, false) // backing off
	step(m, time.Minute, true)     // 1m after the first failure
	step(m, 10*time.Minute, false) // backing off
	step(m, 11*time.Minute, true)  // 10m after the second
	m2 := newManager()             // a restart on the same storage
	if err := m2.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	step(m2, 110*time.Minute, false) // still backing off after the restart
	step(m2, 111*time.Minute, true)  // 100m after the third
	step(m2, 111*time.Minute+23*time.Hour, false)

	// The admin retries now, well before the day is up.
	clock.Set(t0.Add(3 * time.Hour))
	before := attempts.Load()
	if err := m2.RetryNow(ctx, name); err == nil {
		t.Fatal("RetryNow succeeded against a failing CA")
	}
	if attempts.Load() == before {
		t.Fatal("RetryNow made no attempt")
	}

	fails := evs.of(EventRenewFailed)
	if len(fails) != 5 {
		t.Fatalf("%d renew_failed events, want 5", len(fails))
	}
	// An admin's retry that fails again keeps the backoff's step: the
	// fourth failure's day, counted from now.
	last := fails[len(fails)-1]
	if last.Attempt != 4 || !last.NextAttempt.Equal(clock.Now().Add(24*time.Hour)) || last.Err == nil {
		t.Errorf("last event = %v", last)
	}
	entries := logs.FilterMessage(string(EventRenewFailed)).All()
	if len(entries) != 5 {
		t.Fatalf("%d Error log lines, want 5", len(entries))
	}
	fields := entries[0].ContextMap()
	for _, k := range []string{"server_name", "key_type", "attempt", "next_attempt", "problem_type", "problem_detail"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("log line lacks %q: %v", k, fields)
		}
	}
	if fields["problem_type"] != "urn:ietf:params:acme:error:caa" {
		t.Errorf("problem_type = %v", fields["problem_type"])
	}

	// The CA recovers; the admin retries; the state is cleared.
	failing.Store(false)
	if err := m2.RetryNow(ctx, name); err != nil {
		t.Fatal(err)
	}
	if len(evs.of(EventRenewed)) != 1 {
		t.Error("no renewed event after recovery")
	}
	st, _ := m2.loadState(ctx, name, ECDSAP256)
	if st.Failures != 0 {
		t.Errorf("state after success = %+v", st)
	}
}

// A CA's Retry-After on a 429 is a floor on the next attempt.
func TestRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{Intercept: refuseOrders(nil, "7200")})
	var evs events
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.OnEvent = evs.add })
	start := time.Now()
	if err := m.ManageSync(context.Background(), "limited.example.com"); err == nil {
		t.Fatal("obtained against a rate-limited CA")
	}
	fails := evs.of(EventObtainFailed)
	if len(fails) != 1 {
		t.Fatalf("%d obtain_failed events", len(fails))
	}
	if next := fails[0].NextAttempt; next.Before(start.Add(2*time.Hour)) || next.After(time.Now().Add(2*time.Hour+time.Minute)) {
		t.Errorf("next attempt in %v, want the CA's 2h", time.Until(next).Round(time.Minute))
	}
	// A handshake-driven attempt during the wait does not reach the CA.
	_, err := m.certFor(context.Background(), "limited.example.com", ECDSAP256)
	if !errors.Is(err, errBackingOff) {
		t.Errorf("second attempt: %v, want errBackingOff", err)
	}
}

// Two Managers sharing storage renew a due certificate once: the second
// finds the renewed one in storage under the lock.
func TestSharedStorageRenewsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{DisableARI: true})
	clock := newFakeClock(time.Now())
	var evs1, evs2 events
	mk := func(evs *events) *Manager {
		return e.manager(func(m *Manager) {
			m.KeyTypes = []KeyType{ECDSAP256}
			m.OnEvent = evs.add
			m.clock = clock
		})
	}
	m1, m2 := mk(&evs1), mk(&evs2)
	const name = "twice.example.com"
	for _, m := range []*Manager{m1, m2} {
		if err := m.ManageSync(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	old := m1.tracked(name, ECDSAP256).serial
	runManager(t, m1)
	runManager(t, m2)
	clock.setFor(m1, clock.Now().Add(80*24*time.Hour))
	clock.setFor(m2, clock.Now())
	waitFor(t, "both to hold the renewed certificate", func() bool {
		s1, s2 := m1.tracked(name, ECDSAP256).serial, m2.tracked(name, ECDSAP256).serial
		return s1 != old && s1 == s2
	})
	if n := e.ca.FinalizationsFor(name, "ECDSA"); n != 2 {
		t.Errorf("finalizations = %d, want 2 (the first and one renewal)", n)
	}
}

// Run leaves no goroutine behind once its context ends.
func TestRunLeavesNoGoroutine(t *testing.T) {
	e := newEnv(t, acmetest.Options{DisableARI: true})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnEvent = evs.add
		m.clock = clock
		// The file storage's lock refresher outlives Unlock by up to its
		// interval, by design; this test is about Run's own goroutines.
		m.Storage = &storage.Memory{}
	})
	if err := m.ManageSync(context.Background(), "leak.example.com"); err != nil {
		t.Fatal(err)
	}
	m.issuers[0].client.HTTPClient.CloseIdleConnections()
	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	clock.setFor(m, clock.Now().Add(80*24*time.Hour))
	waitFor(t, "a renewal", func() bool { return len(evs.of(EventRenewed)) >= 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, ignore)
}

// Names obtained on demand are renewed in the background too, without a
// handshake asking for them.
func TestRunRenewsOnDemandNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Names: []string{"ondemand.example.com"}}
		m.OnEvent = evs.add
		m.clock = clock
	})
	if _, err := e.handshake("ondemand.example.com", nil); err != nil {
		t.Fatal(err)
	}
	runManager(t, m)
	clock.setFor(m, clock.Now().Add(80*24*time.Hour))
	waitFor(t, "the renewal", func() bool { return len(evs.of(EventRenewed)) >= 1 })
	if n := e.ca.FinalizationsFor("ondemand.example.com", "ECDSA"); n < 2 {
		t.Errorf("finalizations = %d, want a renewal", n)
	}
}
