package acmetls_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// A server that knows its names: certificates are obtained (or loaded from
// storage) before it starts listening, and renewed while it runs.
func ExampleManager() {
	m := &acmetls.Manager{
		Email:        "ops@example.com",
		AgreeToTerms: true,
		Storage:      storage.Dir("/var/lib/acmetls"),
	}
	if err := m.ManageSync(context.Background(), "example.com", "www.example.com"); err != nil {
		log.Fatal(err)
	}
	go http.ListenAndServe(":80", m.HTTPHandler(nil)) // http-01, and a redirect to HTTPS
	srv := &http.Server{
		Addr:      ":443",
		TLSConfig: m.TLSConfig(),
		Handler: m.HTTPSHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { // HSTS
			fmt.Fprintln(w, "hello")
		})),
	}
	log.Fatal(srv.ListenAndServeTLS("", ""))
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
