// Command demo serves HTTPS with certificates obtained on the first
// handshake.
//
// With no flags it needs no internet: it starts an embedded ACME CA (Let's
// Encrypt's Pebble, in-process), serves https://localhost:8443/ and prints
// a curl command that trusts the embedded CA's root. The page tells which
// certificate the client got.
//
// With -ca it talks to a real CA instead, for example:
//
//	demo -ca https://acme-staging-v02.api.letsencrypt.org/directory \
//	     -email you@example.com -storage /var/lib/acmetls \
//	     -https-addr :443 -http-addr :80 example.com www.example.com
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ocsp"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

func main() {
	var (
		caURL     = flag.String("ca", "", "ACME directory URL; empty starts an embedded test CA")
		email     = flag.String("email", "", "ACME account contact email")
		store     = flag.String("storage", "", "storage directory (default: a new temporary directory with the embedded CA, acmetls under the user's data directory otherwise)")
		httpsAddr = flag.String("https-addr", "127.0.0.1:8443", "HTTPS listen address")
		httpAddr  = flag.String("http-addr", "127.0.0.1:8080", "HTTP listen address (http-01 challenges and redirects)")
		verbose   = flag.Bool("v", false, "debug logging")
	)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: demo [flags] [name ...]\n\nServes HTTPS for the names (default: localhost).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	names := flag.Args()
	if len(names) == 0 {
		names = []string{"localhost"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, *caURL, *email, *store, *httpsAddr, *httpAddr, *verbose, names); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx ends, writing what to try to out.
func run(ctx context.Context, out io.Writer, caURL, email, store, httpsAddr, httpAddr string, verbose bool, names []string) error {
	logCfg := zap.NewDevelopmentConfig()
	if !verbose {
		logCfg.Level.SetLevel(zap.InfoLevel)
	}
	logger, err := logCfg.Build()
	if err != nil {
		return err
	}
	defer logger.Sync()

	httpsLn, err := net.Listen("tcp", httpsAddr)
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}

	m := &acmetls.Manager{
		CA:           caURL,
		Email:        email,
		AgreeToTerms: true,
		OnDemand:     &acmetls.OnDemand{Names: names},
		HTTPSPort:    port(httpsLn), // for redirects from plain HTTP
		Logger:       logger,
	}
	var rootFile string
	if caURL == "" {
		dir, err := os.MkdirTemp("", "acmetls-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		// The embedded CA has an OCSP responder, as CAs other than Let's
		// Encrypt do: its certificates are stapled.
		responder := acmetest.NewResponder(24 * time.Hour)
		defer responder.Close()
		ca, err := acmetest.New(acmetest.Options{
			HTTPPort:         port(httpLn),
			TLSPort:          port(httpsLn),
			OCSPResponderURL: responder.URL,
		})
		if err != nil {
			return err
		}
		defer ca.Close()
		responder.Attach(ca)
		m.CA, m.RootCAs = ca.DirectoryURL, ca.ServerRoots()
		rootFile = filepath.Join(dir, "root.pem")
		if err := os.WriteFile(rootFile, ca.RootPEM(), 0o644); err != nil {
			return err
		}
		if store == "" {
			store = filepath.Join(dir, "storage")
		}
	}
	if store != "" {
		m.Storage = storage.Dir(store)
	}

	served := &servedCerts{byConn: make(map[net.Conn]*tls.Certificate)}
	tlsCfg := m.TLSConfig()
	tlsCfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := m.GetCertificate(hello)
		if c != nil {
			served.set(hello.Conn, c)
		}
		return c, err
	}
	httpsSrv := &http.Server{
		Handler:   m.HTTPSHandler(page(served)), // HSTS
		TLSConfig: tlsCfg,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				served.drop(c)
			}
		},
		// net/http bounds the handshake with this too: long enough
		// for a first on-demand issuance.
		ReadHeaderTimeout: acmetls.ServeHandshakeTimeout,
	}
	httpSrv := &http.Server{Handler: m.HTTPHandler(nil), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 3)
	go func() { errc <- httpsSrv.ServeTLS(httpsLn, "", "") }()
	go func() { errc <- httpSrv.Serve(httpLn) }()
	// Renewal and staple refreshes. (Manager.Serve does all of this; the
	// demo runs its own servers to show which certificate a client got.)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go func() { errc <- m.Run(runCtx) }()

	url := "https://" + names[0] + ":" + strconv.Itoa(port(httpsLn)) + "/"
	fmt.Fprintf(out, "serving %s (a certificate is obtained on the first handshake)\n", url)
	if rootFile != "" {
		fmt.Fprintf(out, "try:\n  curl --cacert %s %s\n", rootFile, url)
		fmt.Fprintf(out, "the certificate's OCSP staple:\n  openssl s_client -connect 127.0.0.1:%d -servername %s -status </dev/null\n", port(httpsLn), names[0])
	} else {
		fmt.Fprintf(out, "try:\n  curl %s\n", url)
	}

	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	httpsSrv.Shutdown(shutdown)
	httpSrv.Shutdown(shutdown)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

type connKey struct{}

// servedCerts remembers which certificate each connection was served, for
// the page to show.
type servedCerts struct {
	mu     sync.Mutex // guards byConn
	byConn map[net.Conn]*tls.Certificate
}

func (s *servedCerts) set(c net.Conn, cert *tls.Certificate) {
	s.mu.Lock()
	s.byConn[c] = cert
	s.mu.Unlock()
}

func (s *servedCerts) get(c net.Conn) *tls.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byConn[c]
}

func (s *servedCerts) drop(c net.Conn) {
	s.mu.Lock()
	delete(s.byConn, c)
	s.mu.Unlock()
}

var pageTmpl = template.Must(template.New("page").Parse(`acmetls demo
server name: {{.Name}}
protocol:    {{.Version}}, {{.Cipher}}
certificate: {{.KeyType}}, serial {{.Serial}}, not after {{.NotAfter}}
issuer:      {{.Issuer}}
OCSP staple: {{.Staple}}
`))

// stapleText says what the OCSP staple served with a certificate says.
func stapleText(staple []byte) string {
	if len(staple) == 0 {
		return "none (the CA has no responder, or its answer is not fetched yet)"
	}
	resp, err := ocsp.ParseResponse(staple, nil)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	status := map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked"}[resp.Status]
	if status == "" {
		status = "unknown"
	}
	return fmt.Sprintf("%s, %d bytes, next update %s", status, len(staple), resp.NextUpdate.UTC().Format(time.RFC3339))
}

func page(served *servedCerts) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _ := r.Context().Value(connKey{}).(net.Conn)
		var cert *tls.Certificate
		if tc, ok := conn.(*tls.Conn); ok {
			cert = served.get(tc.NetConn())
		}
		if cert == nil || r.TLS == nil {
			http.Error(w, "no certificate recorded for this connection", http.StatusInternalServerError)
			return
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Strict-Transport-Security", "max-age=5184000")
		pageTmpl.Execute(w, map[string]any{
			"Name":     r.TLS.ServerName,
			"Version":  tls.VersionName(r.TLS.Version),
			"Cipher":   tls.CipherSuiteName(r.TLS.CipherSuite),
			"KeyType":  leaf.PublicKeyAlgorithm.String(),
			"Serial":   leaf.SerialNumber.Text(16),
			"NotAfter": leaf.NotAfter.UTC().Format(time.RFC3339),
			"Issuer":   leaf.Issuer.CommonName,
			"Staple":   stapleText(cert.OCSPStaple),
		})
	})
}
