package acmetls

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// browser starts a headless chromium for the test; headers are sent with
// every request it makes, as a browser sends the basic credentials it
// holds for a site.
func browser(t *testing.T, headers map[string]any) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.NoSandbox, chromedp.DisableGPU)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(cancelTimeout)
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers(headers)}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// text returns the text of the first element sel selects.
func text(t *testing.T, b context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(b, chromedp.Text(sel))
	if err != nil {
		t.Fatalf("the text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// Issue 14, item 2: in a real browser, the page shows a certificate whose
// renewal failed, with the CA's problem detail and its next attempt; its
// Retry button places an order, after which the page shows it renewed.
// Without credentials the page answers 401; a form on another site
// posting to it is refused, and places no order.
func TestAdminPageInBrowser(t *testing.T) {
	t.Parallel()
	ca := refusingOrders{rateLimit: true}
	e := newEnv(t, acmetest.Options{Intercept: ca.intercept})
	clock := newFakeClock(time.Now())
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.clock = clock
	})
	ctx := context.Background()
	const name = "shop.example.com"
	if err := m.ManageSync(ctx, name, "blog.example.com"); err != nil {
		t.Fatal(err)
	}
	oldSerial := m.tracked(name, ECDSAP256).serial
	// The renewal, due, is refused by the CA's rate limit.
	clock.Add(62 * 24 * time.Hour)
	ca.on.Store(true)
	if err := m.renew(ctx, m.tracked(name, ECDSAP256), false); err == nil {
		t.Fatal("renewed past the CA's rate limit")
	}

	const token = "page-token"
	mux := http.NewServeMux()
	mux.Handle("/admin/", http.StripPrefix("/admin", m.AdminHandler(AdminAuth{Token: token})))
	admin := httptest.NewServer(mux)
	defer admin.Close()
	page := admin.URL + "/admin/"
	row := fmt.Sprintf(`tr[data-name=%q]`, name)

	b := browser(t, map[string]any{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("sre:"+token))})
	if err := chromedp.Do(b, chromedp.Navigate(page), chromedp.WaitVisible(row+`.failing`)); err != nil {
		t.Fatalf("the status page: %v", err)
	}
	detail, next, state, counts := text(t, b, row+` .detail`), text(t, b, row+` .next`), text(t, b, row+` .state`), text(t, b, `#counts`)
	if detail != rateLimited.Detail {
		t.Errorf("the page shows %q, want the CA's detail %q", detail, rateLimited.Detail)
	}
	if !strings.HasSuffix(next, "(in 1 min)") {
		t.Errorf("next attempt shown as %q, want a minute from now", next)
	}
	if !strings.HasPrefix(state, "failing (1 failure)") || !strings.Contains(counts, "1 failing") {
		t.Errorf("state %q, counts %q", state, counts)
	}

	// The CA lifts the limit; the administrator presses Retry.
	ca.on.Store(false)
	orders := len(e.ca.Orders())
	if err := chromedp.Do(b, chromedp.Click(row+` button.retry`), chromedp.WaitVisible(`#message`)); err != nil {
		t.Fatalf("retrying from the page: %v", err)
	}
	message, serial := text(t, b, `#message`), text(t, b, row+` .serial`)
	state = text(t, b, row+` .state`)
	if n := len(e.ca.Orders()) - orders; n != 1 {
		t.Errorf("the Retry button placed %d orders at the CA, want 1", n)
	}
	if message != "Retried "+name+": its certificates are ok now." || state != "ok" {
		t.Errorf("after Retry: message %q, state %q", message, state)
	}
	if serial == "" || serial == fmt.Sprintf("%x", oldSerial) {
		t.Errorf("after Retry the page shows serial %q, the old one was %x", serial, oldSerial)
	}

	// Finding one name among many.
	if err := chromedp.Do(b,
		chromedp.SendKeys(`#search`, "BLOG.example.com"),
		chromedp.Submit(`#search`),
		chromedp.WaitNotPresent(row),
		chromedp.WaitVisible(`tr[data-name="blog.example.com"]`),
	); err != nil {
		t.Fatalf("finding a name: %v", err)
	}

	// Another site's page posts a form to the admin page, with the
	// browser's credentials: refused, no order.
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%sretry"><input name="name" value="%s"></form>
<script>document.forms[0].submit()</script>`, page, name)
	}))
	defer attacker.Close()
	orders = len(e.ca.Orders())
	if err := chromedp.Do(b, chromedp.Navigate(strings.Replace(attacker.URL, "127.0.0.1", "localhost", 1))); err != nil {
		t.Fatalf("the attacker's page: %v", err)
	}
	if _, err := chromedp.Run(b, chromedp.Poll[bool](`location.pathname === "/admin/retry"`)); err != nil {
		t.Fatalf("the cross-site form was not posted: %v", err)
	}
	body := text(t, b, `body`)
	if !strings.Contains(body, "cross-origin") {
		t.Errorf("the cross-site POST was answered %q", body)
	}
	if n := len(e.ca.Orders()) - orders; n != 0 {
		t.Errorf("a cross-site POST placed %d orders", n)
	}

	// Without credentials: 401, and nothing of the certificates.
	anon := browser(t, map[string]any{})
	// Chromium, asked for credentials it has none of, ends the load
	// (ERR_INVALID_AUTH_CREDENTIALS) after the 401 arrives.
	wait, cancel := context.WithTimeout(anon, 30*time.Second)
	defer cancel()
	responses := chromedp.Events(wait, network.ResponseReceived)
	loadErr := chromedp.Do(anon, chromedp.Navigate(page))
	var status int64
	for ev, err := range responses {
		if err != nil {
			t.Fatalf("no response without credentials (load: %v): %v", loadErr, err)
		}
		if ev.Response.URL == page {
			status = ev.Response.Status
			break
		}
	}
	if status != http.StatusUnauthorized {
		t.Errorf("without credentials: %d (load: %v)", status, loadErr)
	}
}
