package acmetls

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// adminRequest sends a request to the admin handler at base, with header
// set by auth, and returns the status and body.
func adminRequest(t *testing.T, method, base, path string, form url.Values, auth func(*http.Request)) (int, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if auth != nil {
		auth(req)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusUnauthorized && (resp.Header.Get("WWW-Authenticate") == "" || !resp.Close) {
		t.Errorf("%s %s: 401 without WWW-Authenticate, or keeping the connection", method, path)
	}
	return resp.StatusCode, string(b)
}

func bearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func basic(user, password string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, password) }
}

// Issue 14, item 2 (without a browser): no credentials, wrong ones, or
// none configured answer 401 and place no order; a cross-site POST is
// refused; the token admits as a bearer token and as basic
// authentication's password; the application's hook admits what it
// says.
func TestAdminRequiresCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	ctx := context.Background()
	if err := m.ManageSync(ctx, "admin.example.com"); err != nil {
		t.Fatal(err)
	}
	orders := len(e.ca.Orders())
	hook := func(r *http.Request) bool { return r.Header.Get("X-Test-Admin") == "yes" }
	retry := url.Values{"name": {"admin.example.com"}}
	gets := []string{"/", "/certificates", "/certificates/admin.example.com", "/metrics"}
	for _, tc := range []struct {
		name string
		auth AdminAuth
		with func(*http.Request)
		ok   bool
	}{
		{"nothing configured", AdminAuth{}, bearer(""), false},
		{"nothing configured, basic", AdminAuth{}, basic("admin", ""), false},
		{"no credentials", AdminAuth{Token: "s3cret"}, nil, false},
		{"wrong token", AdminAuth{Token: "s3cret"}, bearer("s3cre"), false},
		{"wrong password", AdminAuth{Token: "s3cret"}, basic("admin", "s3cret!"), false},
		{"token as user name", AdminAuth{Token: "s3cret"}, basic("s3cret", ""), false},
		{"hook refuses", AdminAuth{Authorize: hook}, bearer("s3cret"), false},
		{"bearer", AdminAuth{Token: "s3cret"}, bearer("s3cret"), true},
		{"basic", AdminAuth{Token: "s3cret"}, basic("anyone", "s3cret"), true},
		{"hook admits", AdminAuth{Authorize: hook}, func(r *http.Request) { r.Header.Set("X-Test-Admin", "yes") }, true},
		{"bearer in lower case", AdminAuth{Token: "s3cret"}, func(r *http.Request) { r.Header.Set("Authorization", "bearer s3cret") }, true},
	} {
		srv := httptest.NewServer(m.AdminHandler(tc.auth))
		for _, path := range gets {
			code, body := adminRequest(t, "GET", srv.URL, path, nil, tc.with)
			if want := map[bool]int{true: 200, false: 401}[tc.ok]; code != want {
				t.Errorf("%s: GET %s: %d, want %d", tc.name, path, code, want)
			}
			if strings.Contains(body, "PRIVATE KEY") {
				t.Errorf("%s: GET %s shows key material", tc.name, path)
			}
		}
		if !tc.ok {
			for _, path := range []string{"/retry", "/retry-all"} {
				if code, _ := adminRequest(t, "POST", srv.URL, path, retry, tc.with); code != 401 {
					t.Errorf("%s: POST %s: %d, want 401", tc.name, path, code)
				}
			}
		}
		srv.Close()
	}
	srv := httptest.NewServer(m.AdminHandler(AdminAuth{Token: "s3cret"}))
	defer srv.Close()
	crossSite := func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer s3cret") // a browser's cached credentials
		r.Header.Set("Sec-Fetch-Site", "cross-site")
		r.Header.Set("Origin", "https://attacker.example")
	}
	for _, path := range []string{"/retry", "/retry-all"} {
		if code, _ := adminRequest(t, "POST", srv.URL, path, retry, crossSite); code != http.StatusForbidden {
			t.Errorf("a cross-site POST %s: %d, want 403", path, code)
		}
	}
	if n := len(e.ca.Orders()); n != orders {
		t.Fatalf("%d orders placed by requests that were refused", n-orders)
	}
	// Admitted, a retry of a name whose certificates are ok is refused:
	// it would spend the CA's limits for nothing.
	if code, body := adminRequest(t, "POST", srv.URL, "/retry", retry, bearer("s3cret")); code != http.StatusConflict {
		t.Errorf("a retry of a healthy name: %d %s, want 409", code, body)
	}
	if n := len(e.ca.Orders()); n != orders {
		t.Fatalf("%d orders placed by a refused retry", n-orders)
	}
	// Forced, the retry places one order, and answers when it is done.
	retry.Set("force", "1")
	code, body := adminRequest(t, "POST", srv.URL, "/retry", retry, bearer("s3cret"))
	var res struct {
		Name string
		OK   bool
	}
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil || !res.OK || res.Name != "admin.example.com" {
		t.Errorf("an admitted retry: %d %s", code, body)
	}
	if n := len(e.ca.Orders()); n != orders+1 {
		t.Errorf("an admitted retry placed %d orders, want 1", n-orders)
	}
	for _, bad := range []string{"", "not a name", strings.Repeat("a", 300) + ".example.com"} {
		if code, _ := adminRequest(t, "POST", srv.URL, "/retry", url.Values{"name": {bad}}, bearer("s3cret")); code != 400 {
			t.Errorf("retry of %q: %d, want 400", bad, code)
		}
	}
	for _, q := range []string{"expiring=soon", "failing=yes", "due=maybe", "offset=-1", "limit=x"} {
		if code, _ := adminRequest(t, "GET", srv.URL, "/certificates?"+q, nil, bearer("s3cret")); code != 400 {
			t.Errorf("a bad filter %s: %d, want 400", q, code)
		}
	}
	if code, _ := adminRequest(t, "GET", srv.URL, "/certificates/unknown.example.com", nil, bearer("s3cret")); code != 404 {
		t.Errorf("a name with no certificate: %d, want 404", code)
	}
	// A link cannot put words on the page.
	for _, planted := range []string{"Certificate revoked, call this number", "your-token-leaked.example.com"} {
		if _, page := adminRequest(t, "GET", srv.URL, "/?msg="+url.QueryEscape(planted)+"&retried="+url.QueryEscape(planted), nil, bearer("s3cret")); strings.Contains(page, planted) {
			t.Errorf("the page shows %q from its link", planted)
		}
	}
	if _, page := adminRequest(t, "GET", srv.URL, "/?retried=admin.example.com&result=failed", nil, bearer("s3cret")); !strings.Contains(page, "Retried admin.example.com: its certificates are ok now.") {
		t.Error("the page does not say what it knows of a retried name")
	}
}

// Issue 14, item 3: the metrics, scraped through the handler and parsed,
// count what the test did: orders, failures, refusals.
func TestMetricsCountWhatHappened(t *testing.T) {
	t.Parallel()
	var first refusingOrders
	e := newEnv(t, acmetest.Options{Intercept: first.intercept})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(_ context.Context, name string) error {
			if strings.HasPrefix(name, "customer") {
				return nil
			}
			return fmt.Errorf("%s: not a customer", name)
		}}
	})
	// Handshakes served from memory are counted once a collector exists.
	srv := httptest.NewServer(m.AdminHandler(AdminAuth{Token: "s3cret"}))
	defer srv.Close()
	ctx := context.Background()
	if err := m.ManageSync(ctx, "a.example.com", "b.example.com"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.handshake("a.example.com", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.handshake("customer1.example.com", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.handshake("stranger.example.com", nil); err == nil {
		t.Fatal("a name the policy refuses was served")
	}
	first.on.Store(true)
	if _, err := e.handshake("customer2.example.com", nil); err == nil {
		t.Fatal("served while the CA refuses orders")
	}

	code, body := adminRequest(t, "GET", srv.URL, "/metrics", nil, bearer("s3cret"))
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	families := parseMetrics(t, []byte(body))
	value := func(family string, labels map[string]string) float64 {
		t.Helper()
		return metricValue(t, families, family, labels)
	}
	ca := e.ca.DirectoryURL
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"acmetls_orders_total", map[string]string{"ca": ca, "kind": "obtain", "result": "success"}, 3},
		{"acmetls_orders_total", map[string]string{"ca": ca, "kind": "obtain", "result": "failure"}, 1},
		{"acmetls_orders_total", map[string]string{"ca": ca, "kind": "renew", "result": "success"}, 0},
		{"acmetls_failures_total", map[string]string{"problem": "serverInternal"}, 1},
		{"acmetls_failures_total", map[string]string{"problem": "rateLimited"}, 0},
		{"acmetls_handshakes_total", map[string]string{"source": "memory"}, 3},
		{"acmetls_handshakes_total", map[string]string{"source": "loaded"}, 1},
		{"acmetls_handshakes_total", map[string]string{"source": "refused"}, 2},
		{"acmetls_certificates", map[string]string{"state": "ok", "key_type": "ecdsa-p256"}, 3},
		{"acmetls_cache_names", nil, 3},
	} {
		if got := value(c.family, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	if h := families["acmetls_certificate_expiry_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 3 {
		t.Errorf("expiry histogram of %d certificates, want 3", h.GetSampleCount())
	}
	problems, err := testutil.CollectAndLint(m.Collector())
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// parseMetrics parses metrics in Prometheus's text format.
func parseMetrics(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parsing metrics: %v", err)
	}
	return families
}

// metricValue returns the value of the series of family with labels.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	t.Helper()
	f, ok := families[family]
	if !ok {
		t.Fatalf("no %s in the scrape", family)
	}
metrics:
	for _, mt := range f.Metric {
		for _, l := range mt.Label {
			if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
				continue metrics
			}
		}
		switch {
		case mt.Counter != nil:
			return mt.Counter.GetValue()
		case mt.Gauge != nil:
			return mt.Gauge.GetValue()
		}
	}
	t.Fatalf("no %s%v in the scrape", family, labels)
	return 0
}

// Issue 14, item 3: no series per name: the number of series is the same
// at 10 names and at 10,000, failing ones included.
func TestMetricsCardinalityIsFixed(t *testing.T) {
	now := time.Now()
	small := failingManager(t, 10, []int{1}, now)
	large := failingManager(t, 10_000, []int{1, 10, 100, 1000}, now)
	ns, nl := testutil.CollectAndCount(small.Collector()), testutil.CollectAndCount(large.Collector())
	if ns != nl || ns == 0 {
		t.Errorf("%d series at 10 names, %d at 10,000", ns, nl)
	}
	reg := prometheus.NewPedanticRegistry() // checks the metrics against their descriptions
	reg.MustRegister(large.Collector())
	gathered, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	families := make(map[string]*dto.MetricFamily)
	for _, f := range gathered {
		families[f.GetName()] = f
	}
	for _, c := range []struct {
		state, kt string
		want      float64
	}{{"failing", "ecdsa-p256", 4}, {"failing", "rsa-2048", 1}, {"ok", "ecdsa-p256", 10_000 - 4}, {"ok", "rsa-2048", 10_000}} {
		if got := metricValue(t, families, "acmetls_certificates", map[string]string{"state": c.state, "key_type": c.kt}); got != c.want {
			t.Errorf("%s %s certificates at 10,000 names: %v, want %v", c.state, c.kt, got, c.want)
		}
	}
	if got := metricValue(t, families, "acmetls_failures_total", map[string]string{"problem": "rateLimited"}); got != 1+2+3+1+1 {
		t.Errorf("rateLimited failures: %v, want 8", got)
	}
}

// An administrator's retry of a name the Manager neither holds, nor
// failed, nor may serve orders nothing.
func TestRetryNowRefusesUnknownNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Names: []string{"allowed.example.com"}}
	})
	ctx := context.Background()
	if err := m.RetryNow(ctx, "stranger.example.com"); !errors.Is(err, ErrNotManaged) {
		t.Errorf("a retry of a stranger: %v, want ErrNotManaged", err)
	}
	if n := len(e.ca.Orders()); n != 0 {
		t.Errorf("%d orders for a stranger", n)
	}
	if err := m.RetryNow(ctx, "allowed.example.com"); err != nil {
		t.Errorf("a retry of a name the policy allows: %v", err)
	}
	if n := len(e.ca.Orders()); n != 1 {
		t.Errorf("%d orders for an allowed name, want 1", n)
	}
}

// RetryAll retries the names whose last attempt failed, not those that
// failed once and recovered (whose state's directory a file storage
// keeps, empty).
func TestRetryAllOnlyFailing(t *testing.T) {
	t.Parallel()
	ca := refusingOrders{rateLimit: true}
	e := newEnv(t, acmetest.Options{Intercept: ca.intercept})
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnEvent = evs.add
	})
	ctx := context.Background()
	ca.on.Store(true)
	if err := m.ManageSync(ctx, "recovered.example.com", "stillfailing.example.com"); err == nil {
		t.Fatal("obtained past the rate limit")
	}
	ca.on.Store(false)
	if err := m.RetryNow(ctx, "recovered.example.com"); err != nil {
		t.Fatal(err)
	}
	ca.on.Store(true)
	refused := ca.refused.Load()
	orders := len(e.ca.Orders())
	if err := m.RetryAll(ctx); err == nil {
		t.Error("RetryAll succeeded past the rate limit")
	}
	if n := ca.refused.Load() - refused; n != 1 {
		t.Errorf("RetryAll placed %d orders, want 1: the failing name's", n)
	}
	if n := len(e.ca.Orders()) - orders; n != 0 {
		t.Errorf("RetryAll renewed %d healthy certificates", n)
	}
}

// A failure of a name that does not read back from its storage key (an
// IPv6 address) is listed, found and retried under its own name.
func TestStatusOfAnIPv6Failure(t *testing.T) {
	m, _ := trackedManager(t, 1, time.Now())
	m.Logger = zap.NewNop()
	m.store = storage.Dir(t.TempDir())
	ctx := context.Background()
	m.failed(ctx, EventObtainFailed, "2001:db8::1", ECDSAP256, renew.State{}, rateLimited, time.Time{}, time.Time{})
	rep, err := m.Status(ctx, StatusQuery{Failing: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Certificates) != 1 || rep.Certificates[0].Name != "2001:db8::1" {
		t.Fatalf("listed %+v", rep.Certificates)
	}
	if rep, err := m.Status(ctx, StatusQuery{Name: "2001:db8::1"}); err != nil || rep.Total != 1 {
		t.Errorf("by its name: %v %v", rep, err)
	}
	states, err := m.listFailures(ctx)
	if _, ok := states[trackKey{name: "2001:db8::1", kt: indexOf(ECDSAP256)}]; !ok || err != nil {
		t.Errorf("RetryAll's list: %v %v", states, err)
	}
	// A name longer than a storage key's segment, cut to its hash.
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 30) + ".example.com"
	m.failed(ctx, EventObtainFailed, long, ECDSAP256, renew.State{}, rateLimited, time.Time{}, time.Time{})
	states, err = m.listFailures(ctx)
	if _, ok := states[trackKey{name: long, kt: indexOf(ECDSAP256)}]; !ok || err != nil {
		t.Errorf("a failure of a %d-character name is not listed: %v", len(long), err)
	}
}

// A retry of a grouped name that is not its group's first retries the
// group.
func TestRetryOfAGroupedName(t *testing.T) {
	t.Parallel()
	ca := refusingOrders{rateLimit: true}
	e := newEnv(t, acmetest.Options{Intercept: ca.intercept})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	ctx := context.Background()
	ca.on.Store(true)
	if err := m.ManageGroup(ctx, "one.group.example.com", "two.group.example.com"); err == nil {
		t.Fatal("obtained past the rate limit")
	}
	refused := ca.refused.Load()
	if err := m.RetryNow(ctx, "two.group.example.com"); err == nil {
		t.Error("a retry of the group's second name succeeded past the rate limit")
	}
	if ca.refused.Load() == refused {
		t.Error("a retry of the group's second name placed no order")
	}
}

// An administrator's retry that fails again does not lengthen the
// backoff, nor may it order a wildcard no solver can validate.
func TestAdminRetryFailingAgain(t *testing.T) {
	t.Parallel()
	ca := refusingOrders{rateLimit: true}
	e := newEnv(t, acmetest.Options{Intercept: ca.intercept})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
	})
	ctx := context.Background()
	ca.on.Store(true)
	if err := m.ManageSync(ctx, "limited.example.com"); err == nil {
		t.Fatal("obtained past the rate limit")
	}
	for range 3 {
		if err := m.RetryNow(ctx, "limited.example.com"); err == nil {
			t.Fatal("retried past the rate limit")
		}
	}
	st, err := m.loadState(ctx, "limited.example.com", ECDSAP256)
	if err != nil || st.Failures != 1 || st.NextAttempt.Sub(st.LastAttempt) != renew.Backoff(1) {
		t.Errorf("after three failed retries: %+v %v, want still the first step of the backoff", st, err)
	}
	refused := ca.refused.Load()
	if err := m.RetryNow(ctx, "*.example.com"); err == nil || !strings.Contains(err.Error(), "dns-01") {
		t.Errorf("a wildcard without a DNS solver: %v", err)
	}
	if ca.refused.Load() != refused {
		t.Error("a wildcard no solver can validate was ordered")
	}
}
