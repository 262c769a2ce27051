package acmetls

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// refusingOrders makes a CA answer new orders with a 503 problem while on
// is set, or with a rate limit's 429 if rateLimit is set, counting the
// orders it refuses.
type refusingOrders struct {
	on        atomic.Bool
	rateLimit bool
	refused   atomic.Int32
}

func (r *refusingOrders) intercept(w http.ResponseWriter, req *http.Request) bool {
	if !r.on.Load() || !strings.HasSuffix(req.URL.Path, "/order-plz") {
		return false
	}
	r.refused.Add(1)
	io.Copy(io.Discard, req.Body)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Replay-Nonce", "refused")
	if r.rateLimit {
		w.WriteHeader(http.StatusTooManyRequests)
		json.NewEncoder(w).Encode(rateLimited)
		return true
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"new orders are paused for maintenance","status":503}`)
	return true
}

// newSecondCA starts another Pebble, with opts, that validates e's names.
func newSecondCA(t *testing.T, e *env, opts acmetest.Options) *acmetest.CA {
	t.Helper()
	opts.HTTPPort, opts.TLSPort = e.httpPort, e.tlsPort
	ca, err := acmetest.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Close)
	return ca
}

// storedCA returns the CA the stored record of name's certificate names.
func storedCA(t *testing.T, s storage.Storage, name string, kt KeyType) string {
	t.Helper()
	b, err := s.Load(context.Background(), storage.CertKey(name, string(kt)))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := storage.ParseCertRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	return rec.CA
}

// Issue 13, item 7: two Pebbles, the first refusing new orders. The
// certificates come from the second, whose record names it; while the
// first is known to be failing, it is not asked; once it recovers, the
// renewal goes back to it.
func TestFallbackCA(t *testing.T) {
	t.Parallel()
	var first refusingOrders
	e := newEnv(t, acmetest.Options{Intercept: first.intercept})
	second := newSecondCA(t, e, acmetest.Options{})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: second.DirectoryURL}}
		m.clock = clock
		m.OnEvent = evs.add
	})
	first.on.Store(true)
	ctx := context.Background()
	if err := m.ManageSync(ctx, "fallback.example.com"); err != nil {
		t.Fatalf("with the first CA refusing orders: %v", err)
	}
	refused := first.refused.Load() // acmez tries a 503 three times
	if refused == 0 {
		t.Error("the first CA was not asked")
	}
	if got := storedCA(t, e.storage, "fallback.example.com", ECDSAP256); got != second.DirectoryURL {
		t.Errorf("the record names %q, want the second CA %q", got, second.DirectoryURL)
	}
	// Served, and issued by the second CA: it verifies against its
	// roots, not the first's.
	secondRoots := &tls.Config{RootCAs: second.Roots()}
	if _, err := e.handshake("fallback.example.com", nil); err == nil {
		t.Fatal("the certificate verifies against the first CA's roots")
	}
	if _, err := e.handshake("fallback.example.com", secondRoots); err != nil {
		t.Fatalf("the second CA's certificate: %v", err)
	}
	if len(evs.of(EventObtainFailed)) != 0 {
		t.Errorf("a fallback that succeeded was reported as a failure: %v", evs.of(EventObtainFailed))
	}

	// The first CA's breaker is open: another name goes straight to
	// the second.
	if _, err := e.handshake("fallback2.example.com", secondRoots); err == nil {
		t.Fatal("an on-demand name was served without OnDemand")
	}
	if err := m.ManageSync(ctx, "fallback2.example.com"); err != nil {
		t.Fatal(err)
	}
	if n := first.refused.Load(); n != refused {
		t.Errorf("the first CA was asked again while failing: %d refusals, then %d", refused, n)
	}
	if n := len(second.Orders()); n != 2 {
		t.Errorf("the second CA has %d orders, want 2", n)
	}
	if tr := m.tracked("fallback.example.com", ECDSAP256); tr == nil || tr.issuer != 1 {
		t.Fatalf("tracked %+v, want the second CA's certificate", tr)
	}
	// An administrator's retry asks the skipped CA too, and leaves it
	// skipped for everyone else when it still fails.
	if err := m.RetryNow(ctx, "fallback2.example.com"); err != nil {
		t.Fatalf("an admin's retry: %v", err)
	}
	if n := first.refused.Load(); n == refused {
		t.Error("an admin's retry did not ask the skipped CA")
	}
	if m.issuers[0].down.open(m.now()) == nil {
		t.Error("an admin's retry of one name cleared the skip of a CA that still fails")
	}

	// The first CA recovers; the renewals, due later, go back to it,
	// without "replaces", which names the second CA's certificates.
	first.on.Store(false)
	before, renewed := len(e.ca.Orders()), len(evs.of(EventRenewed))
	runManager(t, m)
	clock.Add(80 * 24 * time.Hour)
	waitFor(t, "both renewals", func() bool { return len(evs.of(EventRenewed)) == renewed+2 })
	orders := e.ca.Orders()[before:]
	if len(orders) != 2 || orders[0].Replaces != "" || orders[1].Replaces != "" {
		t.Errorf("orders at the first CA for the renewals: %+v, want two without replaces", orders)
	}
	for _, name := range []string{"fallback.example.com", "fallback2.example.com"} {
		if got := storedCA(t, e.storage, name, ECDSAP256); got != e.ca.DirectoryURL {
			t.Errorf("the renewed record of %s names %q, want the first CA", name, got)
		}
		if tr := m.tracked(name, ECDSAP256); tr == nil || tr.issuer != 0 {
			t.Errorf("tracked %+v after the renewal, want the first CA's", tr)
		}
		if _, err := e.handshake(name, nil); err != nil {
			t.Errorf("the first CA's renewed certificate: %v", err)
		}
	}
	if n := len(second.Orders()); n != 3 {
		t.Errorf("the second CA has %d orders after the renewals, want 3 (two, and the admin's retry)", n)
	}

	// A Manager no longer configured with the CA that issued a stored
	// certificate serves it, never asks that CA, and asks its own CA
	// nothing about it (no renewal information, no "replaces").
	other := e.manager(func(o *Manager) {
		o.CA = second.DirectoryURL
		o.KeyTypes = []KeyType{ECDSAP256}
		o.clock = clock
	})
	if _, err := e.handshake("fallback.example.com", nil); err != nil {
		t.Fatalf("a certificate of a CA no longer configured: %v", err)
	}
	if tr := other.tracked("fallback.example.com", ECDSAP256); tr == nil || tr.issuer != -1 || !tr.ari.NextPoll.Equal(never) {
		t.Errorf("tracked %+v, want no CA and no renewal information polls", tr)
	}
}

// A validation that fails at the first CA fails at any other: the next CA
// is not asked, and the name backs off as with one CA.
func TestFallbackCANotAfterFailedValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{NoAuthzReuse: true})
	second := newSecondCA(t, e, acmetest.Options{})
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: second.DirectoryURL}}
		m.OnEvent = evs.add
	})
	// The CA reaches a server that knows nothing of this Manager's
	// challenges.
	e.manager(func(o *Manager) { o.Storage = &storage.Memory{} })
	err := m.ManageSync(context.Background(), "novalidation.example.com")
	if err == nil {
		t.Fatal("obtained without a validation")
	}
	if n := len(second.Orders()); n != 0 {
		t.Errorf("a failed validation went to the second CA: %d orders", n)
	}
	if got := evs.of(EventObtainFailed); len(got) != 1 || got[0].Attempt != 1 {
		t.Errorf("failures %+v, want one, the name's first", got)
	}
	var be *backingOffError
	if err := m.ManageSync(context.Background(), "novalidation.example.com"); !errors.As(err, &be) {
		t.Errorf("a second try: %v, want the name's backoff", err)
	}
}

// Both CAs failing: the attempt fails with the last CA's error, naming
// what the first said, and trips the Manager's breaker as one CA down
// does; the name is not charged.
func TestFallbackCAAllFailing(t *testing.T) {
	t.Parallel()
	var first, second refusingOrders
	e := newEnv(t, acmetest.Options{Intercept: first.intercept})
	ca2 := newSecondCA(t, e, acmetest.Options{Intercept: second.intercept})
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: ca2.DirectoryURL}}
		m.OnEvent = evs.add
	})
	first.on.Store(true)
	second.on.Store(true)
	err := m.ManageSync(context.Background(), "nowhere.example.com")
	if err == nil {
		t.Fatal("obtained with both CAs refusing")
	}
	for _, want := range []string{ca2.DirectoryURL, e.ca.DirectoryURL, "paused for maintenance"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if got := evs.of(EventObtainFailed); len(got) != 1 || got[0].Attempt != 0 {
		t.Errorf("failures %+v, want one charged to no name", got)
	}
	if err := m.breaker.open(m.now()); err == nil {
		t.Error("both CAs failing left the Manager's breaker closed")
	}
}

func TestFallbackCAConfiguration(t *testing.T) {
	for _, m := range []*Manager{
		{CA: "https://a.example/dir", FallbackCAs: []FallbackCA{{URL: "https://a.example/dir"}}},
		{FallbackCAs: []FallbackCA{{}}},
		{FallbackCAs: make([]FallbackCA, 17)},
		{FallbackCAs: []FallbackCA{{URL: "https://b.example/dir"}}, DNSPersist: &DNSPersist{IssuerDomain: "b.example"}},
	} {
		m.Storage = &storage.Memory{}
		if err := m.ManageSync(context.Background()); err == nil {
			t.Errorf("FallbackCAs %+v accepted", m.FallbackCAs)
		}
	}
}

// The status report says which CA is skipped, and what holds every
// attempt back, in the CA's words.
func TestStatusShowsCAsSkippedAndHeld(t *testing.T) {
	t.Parallel()
	var first, second refusingOrders
	e := newEnv(t, acmetest.Options{Intercept: first.intercept})
	ca2 := newSecondCA(t, e, acmetest.Options{Intercept: second.intercept})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: ca2.DirectoryURL}}
	})
	ctx := context.Background()
	rep, err := m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Held != nil || len(rep.CAs) != 2 || rep.CAs[0].Skipped != nil || rep.CAs[1].URL != ca2.DirectoryURL {
		t.Fatalf("before any failure: held %v, CAs %+v", rep.Held, rep.CAs)
	}
	first.on.Store(true)
	second.on.Store(true)
	if err := m.ManageSync(ctx, "held.example.com"); err == nil {
		t.Fatal("obtained with both CAs refusing")
	}
	rep, err = m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Held == nil || !strings.Contains(rep.Held.Error, "paused for maintenance") || !rep.Held.Until.After(rep.Time) {
		t.Errorf("held: %+v", rep.Held)
	}
	if s := rep.CAs[0].Skipped; s == nil || !strings.Contains(s.Error, "paused for maintenance") {
		t.Errorf("the first CA: %+v", rep.CAs[0])
	}
	if rep.Counts.Failing != 0 {
		t.Errorf("an outage counted as the name's failure: %+v", rep.Counts)
	}
	srv := httptest.NewServer(m.AdminHandler(AdminAuth{Token: "t"}))
	defer srv.Close()
	_, metrics := adminRequest(t, "GET", srv.URL, "/metrics", nil, bearer("t"))
	families := parseMetrics(t, []byte(metrics))
	if v := metricValue(t, families, "acmetls_held", nil); v != 1 {
		t.Errorf("acmetls_held %v, want 1", v)
	}
	// The last CA is never skipped: its failure holds everything back.
	for ca, want := range map[string]float64{e.ca.DirectoryURL: 1, ca2.DirectoryURL: 0} {
		if v := metricValue(t, families, "acmetls_ca_skipped", map[string]string{"ca": ca}); v != want {
			t.Errorf("acmetls_ca_skipped{ca=%q} %v, want %v", ca, v, want)
		}
	}
	_, page := adminRequest(t, "GET", srv.URL, "/", nil, bearer("t"))
	for _, want := range []string{"Every attempt waits until", "The CA " + e.ca.DirectoryURL + " is skipped until", "paused for maintenance"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page does not say %q", want)
		}
	}
}

// A name the first CA refuses on its own account (a rate limit) while the
// second is down: the name's failure, charged to it, not an outage that
// holds every other name back.
func TestFallbackCANameFailureThenOutage(t *testing.T) {
	t.Parallel()
	first := refusingOrders{rateLimit: true}
	var second refusingOrders
	e := newEnv(t, acmetest.Options{Intercept: first.intercept})
	ca2 := newSecondCA(t, e, acmetest.Options{Intercept: second.intercept})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: ca2.DirectoryURL}}
	})
	first.on.Store(true)
	second.on.Store(true)
	ctx := context.Background()
	err := m.ManageSync(ctx, "limited.example.com")
	if err == nil {
		t.Fatal("obtained with both CAs refusing")
	}
	if problemType(err) != acme.ProblemTypeRateLimited {
		t.Errorf("the attempt's problem: %q, want the first CA's rate limit: %v", problemType(err), err)
	}
	if err := m.breaker.open(m.now()); err != nil {
		t.Errorf("one name's rate limit held every name back: %v", err)
	}
	if st, err := m.loadState(ctx, "limited.example.com", ECDSAP256); err != nil || st.Failures != 1 {
		t.Errorf("the name's state: %+v %v, want its first failure", st, err)
	}
	if m.issuers[0].down.open(m.now()) != nil {
		t.Error("one name's rate limit made the first CA skipped for everyone")
	}
}

// A first CA that hangs leaves the second its share of the time: the
// certificate comes from the second, and the first is skipped after.
func TestFallbackCAAfterAHangingCA(t *testing.T) {
	t.Parallel()
	e, hanging := newHangingEnv(t, acmetest.Options{}, true)
	second := newSecondCA(t, e, acmetest.Options{})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.FallbackCAs = []FallbackCA{{URL: second.DirectoryURL}}
		m.issuanceTimeout = 6 * time.Second
	})
	ctx := context.Background()
	if err := m.ManageSync(ctx, "hung.example.com"); err != nil {
		t.Fatalf("with the first CA hanging: %v", err)
	}
	if got := storedCA(t, e.storage, "hung.example.com", ECDSAP256); got != second.DirectoryURL {
		t.Errorf("the record names %q, want the second CA", got)
	}
	if m.issuers[0].down.open(m.now()) == nil {
		t.Error("the hanging CA is not skipped after")
	}
	hanging.release()
}
