package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/internal/testdeps"
)

// The tests run curl, openssl and a PostgreSQL server, installed if
// missing.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, testdeps.Curl, testdeps.OpenSSL)) }

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Item 4 of the first-run issue, with outside clients: the server binary's
// code on in-process Pebble; curl -L from plain HTTP lands on HTTPS with
// the right certificate, path and query kept; an RSA-only TLS 1.2 openssl
// client gets the RSA certificate, a default one the ECDSA certificate
// over TLS 1.3; a client offering only CBC suites is refused; names asked
// of the -ask endpoint are allowed or refused as it answers; the context's
// end (SIGTERM) stops it cleanly.
func TestServerWithOutsideClients(t *testing.T) {
	httpPort, httpsPort, adminPort := freePort(t), freePort(t), freePort(t)
	ca, err := acmetest.New(acmetest.Options{HTTPPort: httpPort, TLSPort: httpsPort})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caRoot := write("ca-https.pem", ca.ServerRootPEM())
	issuingRoot := write("issuing-root.pem", ca.RootPEM())
	write("www/docs/page.txt", []byte("the page\n"))
	asked := make(chan string, 10)
	ask := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := r.URL.Query().Get("domain")
		asked <- d
		if d != "customer.example.com" {
			http.Error(w, "not a customer", http.StatusForbidden)
		}
	}))
	defer ask.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"-ca", ca.DirectoryURL, "-ca-root", caRoot, "-email", "ops@example.com", "-agree-tos",
			"-storage", filepath.Join(dir, "storage"), "-root", filepath.Join(dir, "www"),
			"-http-addr", "127.0.0.1:" + strconv.Itoa(httpPort), "-https-addr", "127.0.0.1:" + strconv.Itoa(httpsPort),
			"-ask", ask.URL + "/check",
			"-admin-addr", "127.0.0.1:" + strconv.Itoa(adminPort), "-admin-token", "admin-secret-0123456789",
			"-log-level", "warn",
			"site.example.com",
		}, &logs, nil)
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(40 * time.Second):
			t.Error("the server did not stop within 40 s of its context's end")
		}
	}()

	const name = "site.example.com"
	https := "127.0.0.1:" + strconv.Itoa(httpsPort)
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := tls.Dial("tcp", https, &tls.Config{ServerName: name, RootCAs: ca.Roots()})
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verified certificate within a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	curl := func(args ...string) string {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		args = append([]string{"--silent", "--show-error", "--cacert", issuingRoot,
			"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", name, httpPort),
			"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", name, httpsPort),
			"--resolve", fmt.Sprintf("customer.example.com:%d:127.0.0.1", httpsPort),
			"--resolve", fmt.Sprintf("other.example.com:%d:127.0.0.1", httpsPort)}, args...)
		out, err := exec.CommandContext(cctx, "curl", args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("curl failed: %v: %s", err, out)
		}
		return string(out)
	}
	from := fmt.Sprintf("http://%s:%d/docs/page.txt?q=1", name, httpPort)
	got := curl("-L", "--write-out", "\n%{url_effective} %{http_code} %{num_redirects}", from)
	if want := fmt.Sprintf("the page\n\nhttps://%s:%d/docs/page.txt?q=1 200 1", name, httpsPort); got != want {
		t.Errorf("curl -L %s:\n%s\nwant\n%s", from, got, want)
	}
	headers := curl("--head", fmt.Sprintf("https://%s:%d/docs/page.txt", name, httpsPort))
	if !strings.Contains(strings.ToLower(headers), "strict-transport-security: max-age=5184000") {
		t.Errorf("no HSTS of 60 days over HTTPS:\n%s", headers)
	}

	// On demand: allowed by the ask endpoint, or not.
	if got := curl(fmt.Sprintf("https://customer.example.com:%d/docs/page.txt", httpsPort)); got != "the page\n" {
		t.Errorf("a name the ask endpoint allows: %s", got)
	}
	if got := curl(fmt.Sprintf("https://other.example.com:%d/docs/page.txt", httpsPort)); !strings.Contains(got, "curl failed") {
		t.Errorf("a name the ask endpoint refuses was served: %s", got)
	}
	close(asked)
	var askedFor []string
	for d := range asked {
		askedFor = append(askedFor, d)
	}
	if strings.Join(askedFor, " ") != "customer.example.com other.example.com" {
		t.Errorf("the ask endpoint was asked for %q", askedFor)
	}

	openssl := func(args ...string) string {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		cmd := exec.CommandContext(cctx, "openssl", append([]string{"s_client", "-connect", https, "-servername", name}, args...)...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("openssl s_client %s: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := openssl("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"); !strings.Contains(out, "Server public key is 2048 bit") {
		t.Errorf("an RSA-only TLS 1.2 client did not get the RSA certificate:\n%s", out)
	}
	if out := openssl(); !strings.Contains(out, "Server public key is 256 bit") || !strings.Contains(out, "TLSv1.3") {
		t.Errorf("a default client did not get the ECDSA certificate over TLS 1.3:\n%s", out)
	}

	// The admin address: nothing without the token; with it, the
	// certificates and the metrics.
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	if got := curl("--write-out", "%{http_code}", "--output", "/dev/null", admin+"/certificates"); got != "401" {
		t.Errorf("the admin API without the token: %s", got)
	}
	if got := curl("--user", "sre:admin-secret-0123456789", admin+"/certificates/"+name); !strings.Contains(got, `"serial"`) || !strings.Contains(got, `"name": "`+name+`"`) {
		t.Errorf("the admin API with the token:\n%s", got)
	}
	// Two for site.example.com, one or two for customer.example.com
	// (its second key type comes in the background).
	orders := regexp.MustCompile(`(?m)^acmetls_orders_total\{ca="` + regexp.QuoteMeta(ca.DirectoryURL) + `",kind="obtain",result="success"\} [34]$`)
	if got := curl("-H", "Authorization: Bearer admin-secret-0123456789", admin+"/metrics"); !orders.MatchString(got) {
		t.Errorf("metrics: not 3 or 4 successful orders:\n%s", got)
	}

	cbc := &tls.Config{
		ServerName: name, RootCAs: ca.Roots(), MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA,
		},
	}
	if conn, err := tls.Dial("tcp", https, cbc); err == nil {
		conn.Close()
		t.Errorf("a client offering only CBC suites was served %s", tls.CipherSuiteName(conn.ConnectionState().CipherSuite))
	}
}

// -h explains every flag, and bad flags fail with one line.
func TestServerFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out, nil); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"-ca", "-email", "-agree-tos", "-ca-root", "-storage", "-on-demand", "-ask",
		"-http-addr", "-https-addr", "-https-port", "-root", "-upstream", "-hsts", "-hsts-subdomains", "-hsts-preload",
		"-no-http-challenge", "-no-tls-alpn-challenge", "-log-level", "-body-timeout", "-default-name", "-validator", "-fleet-token", "-validation-server", "-admin-addr", "-admin-token", "-fallback-ca", "staging", "postgres://"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("-h does not mention %s", flag)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-root", "."}, "no names"},
		{[]string{"-root", ".", "-upstream", "http://x", "a.example.com"}, "give one"},
		{[]string{"a.example.com"}, "nothing to serve"},
		{[]string{"-upstream", "nope", "a.example.com"}, "-upstream"},
		{[]string{"-root", ".", "-ask", "ftp://x", "a.example.com"}, "-ask"},
		{[]string{"-root", ".", "-ca-root", "/nonexistent", "a.example.com"}, "-ca-root"},
		{[]string{"-root", ".", "-validator", "http://v", "-validation-server", "-fleet-token", "t", "a.example.com"}, "not both"},
		{[]string{"-root", ".", "-validation-server", "-fleet-token", "", "a.example.com"}, "token"},
		{[]string{"-root", ".", "-admin-addr", "127.0.0.1:0", "-admin-token", "", "a.example.com"}, "-admin-token"},
		{[]string{"-root", ".", "-admin-addr", "127.0.0.1:0", "-admin-token", "short", "a.example.com"}, "at least 16"},
		{[]string{"-root", ".", "-admin-addr", "127.0.0.1:0", "-admin-token", strings.Repeat(" ", 20), "a.example.com"}, "at least 16"},
		{[]string{"-root", ".", "-admin-addr", ":8081", "-admin-token", "a-token-long-enough", "a.example.com"}, "loopback"},
		{[]string{"-root", ".", "-admin-addr", "192.0.2.1:8081", "-admin-token", "a-token-long-enough", "a.example.com"}, "loopback"},
	} {
		err := run(context.Background(), tc.args, &out, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error about %s", tc.args, err, tc.want)
		}
	}
}

// -body-timeout: a body that trickles in longer than the bound fails to
// read, so the client cannot hold the connection.
func TestBodyDeadline(t *testing.T) {
	readErr := make(chan error, 1)
	srv := httptest.NewTLSServer(bodyDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}), 200*time.Millisecond))
	defer srv.Close()
	pr, pw := io.Pipe()
	go func() {
		for range 50 { // 5 s of trickle
			if _, err := pw.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()
	defer pw.Close()
	go func() {
		resp, err := srv.Client().Post(srv.URL, "text/plain", pr)
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("a body trickling for 5 s was read whole under a 200 ms bound")
		}
	case <-time.After(3 * time.Second):
		t.Error("the body was still being read 3 s into a 200 ms bound")
	}
}
