package acmetls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/acmetls/acmetls/storage"
)

// policyManager serves served.example.com and keep.example.com (cached),
// allows ondemand.example.com, holds stored.example.com in storage only,
// and has a pending http-01 answer for token "tok".
func policyManager(t *testing.T, httpsPort int) *Manager {
	t.Helper()
	m := cachedManager(t, 10, "served.example.com", "keep.example.com", "sub.example.com", "nohsts.example.com")
	m.OnDemand = &OnDemand{Names: []string{"ondemand.example.com"}}
	m.HTTPSPort = httpsPort
	m.Sites = func(name string) SitePolicy {
		switch name {
		case "keep.example.com":
			return SitePolicy{KeepHTTP: true, HSTSMaxAge: -1}
		case "sub.example.com":
			return SitePolicy{HSTSMaxAge: 365 * 24 * time.Hour, IncludeSubDomains: true, Preload: true}
		case "nohsts.example.com":
			return SitePolicy{HSTSMaxAge: -1}
		}
		return SitePolicy{}
	}
	ctx := context.Background()
	if err := m.store.Store(ctx, storage.CertKey("stored.example.com", string(ECDSAP256)), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	m.listNames(ctx)
	if err := (solver{m}).Present(ctx, acme.Challenge{Type: acme.ChallengeTypeHTTP01, Token: "tok", KeyAuthorization: "tok.thumb"}); err != nil {
		t.Fatal(err)
	}
	return m
}

// Item 3 of the first-run issue: what port 80 answers, per host and
// method, with and without a site's redirect, and for hosts this Manager
// would not serve.
func TestHTTPHandlerPolicy(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("plain " + r.Host))
	})
	for _, tc := range []struct {
		name       string
		httpsPort  int
		fallback   http.Handler
		method     string
		host, path string
		code       int
		location   string
		body       string
	}{
		{"GET", 0, nil, "GET", "served.example.com", "/a/b?q=1&r=%2F", 301, "https://served.example.com/a/b?q=1&r=%2F", ""},
		{"HEAD", 0, nil, "HEAD", "served.example.com", "/", 301, "https://served.example.com/", ""},
		{"POST keeps its method", 0, nil, "POST", "served.example.com", "/form?x=1", 308, "https://served.example.com/form?x=1", ""},
		{"PUT keeps its method", 0, nil, "PUT", "served.example.com", "/f", 308, "https://served.example.com/f", ""},
		{"host with port, HTTPS on 443", 0, nil, "GET", "served.example.com:8080", "/p", 301, "https://served.example.com/p", ""},
		{"HTTPS on another port", 8443, nil, "GET", "served.example.com:8080", "/p?q=1", 301, "https://served.example.com:8443/p?q=1", ""},
		{"host normalized", 0, nil, "GET", "SERVED.Example.COM.", "/", 301, "https://served.example.com/", ""},
		{"allowed on demand", 0, nil, "GET", "ondemand.example.com", "/", 301, "https://ondemand.example.com/", ""},
		{"stored only", 0, nil, "GET", "stored.example.com", "/", 301, "https://stored.example.com/", ""},
		{"site keeping HTTP, no fallback", 0, nil, "GET", "keep.example.com", "/", 404, "", ""},
		{"site keeping HTTP, fallback", 0, app, "GET", "keep.example.com", "/", 200, "", "plain keep.example.com"},
		{"not served", 0, nil, "GET", "evil.example.net", "/", 404, "", ""},
		{"not served, fallback", 0, app, "GET", "evil.example.net", "/", 200, "", "plain evil.example.net"},
		{"IPv6 literal", 0, nil, "GET", "[::1]:80", "/", 404, "", ""},
		{"IPv4 literal", 0, nil, "GET", "127.0.0.1", "/", 404, "", ""},
		{"invalid host", 0, nil, "GET", "a..b", "/", 404, "", ""},
		{"challenge, served host", 0, nil, "GET", "served.example.com", "/.well-known/acme-challenge/tok", 200, "", "tok.thumb"},
		{"challenge, site keeping HTTP", 0, app, "GET", "keep.example.com", "/.well-known/acme-challenge/tok", 200, "", "tok.thumb"},
		{"challenge, other host", 0, nil, "GET", "evil.example.net:80", "/.well-known/acme-challenge/tok", 200, "", "tok.thumb"},
		{"challenge, unknown token", 0, nil, "GET", "served.example.com", "/.well-known/acme-challenge/nope", 404, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := policyManager(t, tc.httpsPort)
			req := httptest.NewRequest(tc.method, "http://placeholder"+tc.path, nil)
			req.Host = tc.host
			rec := httptest.NewRecorder()
			m.HTTPHandler(tc.fallback).ServeHTTP(rec, req)
			if rec.Code != tc.code || rec.Header().Get("Location") != tc.location {
				t.Errorf("%s %s%s: %d to %q, want %d to %q", tc.method, tc.host, tc.path, rec.Code, rec.Header().Get("Location"), tc.code, tc.location)
			}
			if tc.body != "" && rec.Body.String() != tc.body {
				t.Errorf("body %q, want %q", rec.Body.String(), tc.body)
			}
			if rec.Header().Get("Strict-Transport-Security") != "" {
				t.Error("HSTS over plain HTTP")
			}
		})
	}
}

// HSTS per site over HTTPS: exact values, the site's options, and never
// over plain HTTP.
func TestHTTPSHandlerSites(t *testing.T) {
	m := policyManager(t, 0)
	h := m.HTTPSHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, tc := range []struct {
		sni, host string
		tls       bool
		want      string
	}{
		{"served.example.com", "served.example.com", true, "max-age=5184000"},
		{"sub.example.com", "sub.example.com", true, "max-age=31536000; includeSubDomains; preload"},
		{"", "SUB.example.com:443", true, "max-age=31536000; includeSubDomains; preload"},
		{"nohsts.example.com", "nohsts.example.com", true, ""},
		{"keep.example.com", "keep.example.com", true, ""},
		{"", "sub.example.com", false, ""},
	} {
		req := httptest.NewRequest("GET", "https://placeholder/", nil)
		req.Host = tc.host
		req.TLS = &tls.ConnectionState{ServerName: tc.sni}
		if !tc.tls {
			req.TLS = nil
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := strings.Join(rec.Header().Values("Strict-Transport-Security"), ","); got != tc.want {
			t.Errorf("sni %q host %q tls %v: HSTS %q, want %q", tc.sni, tc.host, tc.tls, got, tc.want)
		}
	}
}

// Random Host headers on port 80 ask the on-demand Decision a bounded
// number of times: plain HTTP requests are cheap for a client, and the
// Decision may be a provider's service.
func TestHTTPDecisionsBounded(t *testing.T) {
	m := cachedManager(t, 10, "served.example.com")
	var asked atomic.Int32
	m.OnDemand = &OnDemand{Decision: func(context.Context, string) error {
		asked.Add(1)
		return nil
	}}
	m.listNames(context.Background())
	clock := newFakeClock(time.Now())
	m.clock = clock
	redirects := 0
	for i := range 1000 {
		req := httptest.NewRequest("GET", "http://placeholder/", nil)
		req.Host = fmt.Sprintf("random%d.example.com", i)
		rec := httptest.NewRecorder()
		m.HTTPHandler(nil).ServeHTTP(rec, req)
		if rec.Code == http.StatusMovedPermanently {
			redirects++
		}
	}
	if n := asked.Load(); n != httpDecisionsBurst || redirects != httpDecisionsBurst {
		t.Errorf("1,000 random hosts at once: %d decisions, %d redirects; want %d of each", n, redirects, httpDecisionsBurst)
	}
	clock.Add(time.Second)
	req := httptest.NewRequest("GET", "http://placeholder/", nil)
	req.Host = "later.example.com"
	rec := httptest.NewRecorder()
	m.HTTPHandler(nil).ServeHTTP(rec, req)
	if rec.Code != http.StatusMovedPermanently {
		t.Errorf("a second later, a host the Decision allows: %d, want a redirect", rec.Code)
	}
}
