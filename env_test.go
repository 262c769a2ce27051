package acmetls

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zaptest"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// env is one test world: a Pebble CA, one shared storage, and an HTTP and a
// TLS listener on 127.0.0.1 where the CA validates. The listeners serve
// whichever Manager was last passed to serve.
type env struct {
	t       *testing.T
	ca      *acmetest.CA
	storage storage.Storage
	tlsAddr string
	// httpPort and tlsPort are where the CA validates: another CA
	// validating this env's names is started on them.
	httpPort, tlsPort int
	front             atomic.Pointer[Manager]
}

func newEnv(t *testing.T, opts acmetest.Options) *env {
	t.Helper()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.HTTPPort = httpLn.Addr().(*net.TCPAddr).Port
	opts.TLSPort = tlsLn.Addr().(*net.TCPAddr).Port
	ca, err := acmetest.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Close)
	e := &env{
		t:        t,
		ca:       ca,
		storage:  &certmagic.FileStorage{Path: t.TempDir()},
		tlsAddr:  tlsLn.Addr().String(),
		httpPort: opts.HTTPPort, tlsPort: opts.TLSPort,
	}
	quiet := log.New(io.Discard, "", 0)
	httpSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.front.Load().HTTPHandler(nil).ServeHTTP(w, r)
		}),
		ErrorLog: quiet,
	}
	tlsSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{
			GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				return e.front.Load().GetCertificate(h)
			},
			NextProtos: []string{"h2", "http/1.1", acmeTLS1Protocol},
		},
		ErrorLog: quiet,
	}
	go httpSrv.Serve(httpLn)
	go tlsSrv.ServeTLS(tlsLn, "", "")
	t.Cleanup(func() {
		httpSrv.Close()
		tlsSrv.Close()
	})
	return e
}

// manager returns a Manager on the env's CA and storage, changed by fns,
// and makes the listeners serve it.
func (e *env) manager(fns ...func(*Manager)) *Manager {
	m := &Manager{
		CA:           e.ca.DirectoryURL,
		Email:        "admin@example.com",
		AgreeToTerms: true,
		HTTPClient:   e.ca.HTTPClient(),
		Storage:      e.storage,
		Logger:       zaptest.NewLogger(e.t),
	}
	for _, fn := range fns {
		fn(m)
	}
	e.front.Store(m)
	return m
}

// handshake connects to the TLS listener as a client configured by cfg
// (ServerName is filled in, and RootCAs, if nil, with the CA's roots) and returns the connection state.
func (e *env) handshake(name string, cfg *tls.Config) (tls.ConnectionState, error) {
	return e.handshakeWithin(name, cfg, 10*time.Second)
}

// handshakeWithin is handshake with a client that waits up to timeout.
func (e *env) handshakeWithin(name string, cfg *tls.Config, timeout time.Duration) (tls.ConnectionState, error) {
	if cfg == nil {
		cfg = &tls.Config{}
	} else {
		cfg = cfg.Clone()
	}
	cfg.ServerName = name
	if cfg.RootCAs == nil {
		cfg.RootCAs = e.ca.Roots()
	}
	d := &tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: timeout}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", e.tlsAddr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState(), nil
}

// waitFor polls cond until it holds or a minute passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Clients of the two kinds the dual-certificate tests use.
var (
	ecdsaTLS13Client = &tls.Config{MinVersion: tls.VersionTLS13}
	rsaOnlyTLS12     = &tls.Config{
		MaxVersion:   tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	}
)

func leafKeyAlgorithm(cs tls.ConnectionState) string {
	return cs.PeerCertificates[0].PublicKeyAlgorithm.String()
}
