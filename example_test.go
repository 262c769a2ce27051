package acmetls_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// A server that knows its names: Serve listens on ports 80 and 443 first,
// then brings the certificates up (from storage, else from the CA), renews
// them while it runs, and shuts down gracefully on SIGTERM.
func ExampleManager() {
	m := &acmetls.Manager{
		Email:        "ops@example.com",
		AgreeToTerms: true,
		Storage:      storage.Dir("/var/lib/acmetls"),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})
	if err := m.ListenAndServe(ctx, hello, "example.com", "www.example.com"); err != nil {
		log.Fatal(err)
	}
}

// The pieces Serve puts together, for a server of your own: the listeners
// must be up before ManageSync asks the CA to validate, and Run renews.
func ExampleManager_TLSConfig() {
	m := &acmetls.Manager{Email: "ops@example.com", AgreeToTerms: true}
	ctx := context.Background()
	go http.ListenAndServe(":80", m.HTTPHandler(nil)) // http-01, and redirects to HTTPS
	srv := &http.Server{
		Addr:      ":443",
		TLSConfig: m.TLSConfig(), // tls-alpn-01 too
		Handler: m.HTTPSHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { // HSTS
			fmt.Fprintln(w, "hello")
		})),
		ReadHeaderTimeout: acmetls.ServeHandshakeTimeout, // bounds handshakes too
	}
	go func() {
		if err := m.ManageSync(ctx, "example.com"); err != nil {
			log.Print(err) // retried by handshakes and by Run
		}
	}()
	go m.Run(ctx)
	log.Fatal(srv.ListenAndServeTLS("", ""))
}

// Each site's HTTPS policy from the provider's own data: new sites are
// redirected to HTTPS with HSTS, as the Integration Guide asks; existing
// sites whose pages may load mixed content keep plain HTTP until their
// owners opt in.
func ExampleSitePolicy() {
	legacy := map[string]bool{"old-shop.example.com": true} // from the provider's database
	m := &acmetls.Manager{
		Email:        "ops@example.com",
		AgreeToTerms: true,
		Sites: func(name string) acmetls.SitePolicy {
			if legacy[name] {
				return acmetls.SitePolicy{KeepHTTP: true, HSTSMaxAge: -1}
			}
			return acmetls.SitePolicy{} // redirect, HSTS for 60 days
		},
	}
	site := http.FileServer(http.Dir("/srv/www"))
	// Plain HTTP requests for legacy sites go to site; others are redirected.
	go http.ListenAndServe(":80", m.HTTPHandler(site))
}

// Renewal runs in the background; every success and failure reaches the
// admin through OnEvent (and the log), and an admin can retry at once.
func ExampleManager_Run() {
	m := &acmetls.Manager{
		Email:            "ops@example.com",
		AgreeToTerms:     true,
		RenewConcurrency: 4,
		RenewPerHour:     600,
		OnEvent: func(e acmetls.Event) {
			if e.Err != nil {
				log.Printf("certificate trouble: %v", e) // page someone
			}
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := m.ManageSync(ctx, "example.com"); err != nil {
		log.Print(err) // served as soon as a retry succeeds
	}
	go m.Run(ctx)

	// Later, once the DNS of example.com is fixed:
	if err := m.RetryNow(ctx, "example.com"); err != nil {
		log.Print(err)
	}
}

// A hosting provider's frontend: certificates for its customers' names are
// obtained on their first handshake, once the provider's database says the
// name is a customer's.
func ExampleOnDemand() {
	isCustomer := func(ctx context.Context, name string) (bool, error) {
		return strings.HasSuffix(name, ".customers.example.net"), nil // look it up
	}
	m := &acmetls.Manager{
		AgreeToTerms: true,
		OnDemand: &acmetls.OnDemand{
			Decision: func(ctx context.Context, name string) error {
				ok, err := isCustomer(ctx, name)
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not a customer's name")
				}
				return nil
			},
		},
	}
	ln, err := tls.Listen("tcp", ":443", m.TLSConfig())
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, nil))
}

// The same name, two clients: an ECDSA-capable TLS 1.3 client and an
// RSA-only TLS 1.2 client each get the certificate they support. The CA is
// Pebble, run in-process.
func ExampleManager_dualCertificates() {
	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
	tlsLn, _ := net.Listen("tcp", "127.0.0.1:0")
	ca, err := acmetest.New(acmetest.Options{
		HTTPPort: httpLn.Addr().(*net.TCPAddr).Port,
		TLSPort:  tlsLn.Addr().(*net.TCPAddr).Port,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ca.Close()
	dir, _ := os.MkdirTemp("", "acmetls-example-")
	defer os.RemoveAll(dir)

	m := &acmetls.Manager{
		CA:           ca.DirectoryURL,
		RootCAs:      ca.ServerRoots(),
		AgreeToTerms: true,
		Storage:      storage.Dir(dir),
	}
	go http.Serve(httpLn, m.HTTPHandler(nil))
	go http.Serve(tls.NewListener(tlsLn, m.TLSConfig()), http.NotFoundHandler())
	if err := m.ManageSync(context.Background(), "shop.example.com"); err != nil {
		log.Fatal(err)
	}

	for _, client := range []*tls.Config{
		{MinVersion: tls.VersionTLS13},
		{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
	} {
		client.ServerName, client.RootCAs = "shop.example.com", ca.Roots()
		conn, err := tls.Dial("tcp", tlsLn.Addr().String(), client)
		if err != nil {
			log.Fatal(err)
		}
		cs := conn.ConnectionState()
		fmt.Println(tls.VersionName(cs.Version), cs.PeerCertificates[0].PublicKeyAlgorithm)
		conn.Close()
	}
	// Output:
	// TLS 1.3 ECDSA
	// TLS 1.2 RSA
}

// A site that stays deployable whatever the state of Let's Encrypt: when
// it is down or refuses an order, the certificate comes from the next
// CA, with an account of its own; renewals go back to Let's Encrypt once
// it answers again.
func ExampleFallbackCA() {
	m := &acmetls.Manager{
		Email:        "ops@example.com",
		AgreeToTerms: true,
		Storage:      storage.Dir("/var/lib/acmetls"),
		FallbackCAs: []acmetls.FallbackCA{{
			URL: "https://acme.example.net/directory",
			ExternalAccount: &acmetls.ExternalAccount{
				KeyID:  os.Getenv("FALLBACK_EAB_KID"),
				MACKey: os.Getenv("FALLBACK_EAB_HMAC"),
			},
		}},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := m.ListenAndServe(ctx, http.NotFoundHandler(), "example.com"); err != nil {
		log.Fatal(err)
	}
}

// Administrators see every certificate's state and retry failures from a
// page on a local address of their own; Prometheus scrapes the
// collector, registered with the application's other metrics. The CA is
// Pebble, run in-process.
func ExampleManager_AdminHandler() {
	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
	tlsLn, _ := net.Listen("tcp", "127.0.0.1:0")
	ca, err := acmetest.New(acmetest.Options{
		HTTPPort: httpLn.Addr().(*net.TCPAddr).Port,
		TLSPort:  tlsLn.Addr().(*net.TCPAddr).Port,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ca.Close()
	dir, _ := os.MkdirTemp("", "acmetls-example-")
	defer os.RemoveAll(dir)
	m := &acmetls.Manager{
		CA:           ca.DirectoryURL,
		RootCAs:      ca.ServerRoots(),
		AgreeToTerms: true,
		Storage:      storage.Dir(dir),
		Logger:       zap.NewNop(),
	}
	go http.Serve(httpLn, m.HTTPHandler(nil))
	go http.Serve(tls.NewListener(tlsLn, m.TLSConfig()), http.NotFoundHandler())
	if err := m.ManageSync(context.Background(), "shop.example.com"); err != nil {
		log.Fatal(err)
	}

	// The admin page and API under /acmetls/, and the application's
	// metrics with acmetls's at /metrics, on a loopback address.
	token := "an-example-token" // in production, from a secret store
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	mux := http.NewServeMux()
	mux.Handle("/acmetls/", http.StripPrefix("/acmetls", m.AdminHandler(acmetls.AdminAuth{
		Token: token, // or Authorize: the application's own login
	})))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	adminLn, _ := net.Listen("tcp", "127.0.0.1:0")
	go http.Serve(adminLn, mux)
	base := "http://" + adminLn.Addr().String()

	// What a program asking the API sees, and one without the token.
	get := func(path, token string) *http.Response {
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		return resp
	}
	resp := get("/acmetls/certificates", token)
	var report acmetls.StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&report); err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Printf("%d certificates, %d failing, first %s %s\n", report.Counts.Certificates, report.Counts.Failing,
		report.Certificates[0].Name, report.Certificates[0].State)
	resp = get("/acmetls/", "")
	resp.Body.Close()
	fmt.Println("without the token:", resp.Status)

	// What Prometheus scrapes.
	resp = get("/metrics", "")
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, `acmetls_certificates{key_type="rsa-2048",state="ok"}`) {
			fmt.Println(line)
		}
	}
	// Output:
	// 2 certificates, 0 failing, first shop.example.com ok
	// without the token: 401 Unauthorized
	// acmetls_certificates{key_type="rsa-2048",state="ok"} 1
}
