package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// onDemandImpls are the contenders of B8: acmetls as configured by
// default (the client's ECDSA certificate first, the RSA one in the
// background), acmetls with ECDSA only, and CertMagic's on-demand
// issuance (ECDSA only).
var onDemandImpls = []string{"acmetls", "acmetls-ecdsa", "certmagic"}

// onDemandServer is a contender serving TLS, tls-alpn-01 included, on the
// port Pebble validates, and allowing every name on demand.
type onDemandServer struct {
	ca      *acmetest.CA
	tlsAddr string
	stop    func()
}

func newOnDemandServer(b *testing.B, impl string) *onDemandServer {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ca, err := acmetest.New(acmetest.Options{TLSPort: port, HTTPPort: 1}) // tls-alpn-01 only
	if err != nil {
		b.Fatal(err)
	}
	var cfg *tls.Config
	var stop func()
	allow := func(context.Context, string) error { return nil }
	switch impl {
	case "acmetls", "acmetls-ecdsa":
		m := &acmetls.Manager{
			CA: ca.DirectoryURL, Email: "bench@example.com", AgreeToTerms: true,
			HTTPClient: ca.HTTPClient(), Storage: &storage.Memory{},
			DisableHTTPChallenge: true,
			OnDemand:             &acmetls.OnDemand{Decision: allow},
			Logger:               discardLogger(),
		}
		if impl == "acmetls-ecdsa" {
			m.KeyTypes = []acmetls.KeyType{acmetls.ECDSAP256}
		}
		cfg = m.TLSConfig()
		stop = func() {}
	case "certmagic":
		var cmCfg *certmagic.Config
		cache := certmagic.NewCache(certmagic.CacheOptions{
			GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cmCfg, nil },
			Logger:           discardLogger(),
		})
		cmCfg = certmagic.New(cache, certmagic.Config{
			Storage:  &certmagic.FileStorage{Path: b.TempDir()},
			OnDemand: &certmagic.OnDemandConfig{DecisionFunc: allow},
			OCSP:     certmagic.OCSPConfig{DisableStapling: true},
			Logger:   discardLogger(),
		})
		cmCfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cmCfg, certmagic.ACMEIssuer{
			CA: ca.DirectoryURL, TestCA: ca.DirectoryURL, Email: "bench@example.com", Agreed: true,
			TrustedRoots: ca.ServerRoots(), DisableHTTPChallenge: true,
			ListenHost: "127.0.0.1", AltTLSALPNPort: port, // taken by the server below: it answers
			Logger: discardLogger(),
		})}
		cfg = cmCfg.TLSConfig()
		stop = cache.Stop
	default:
		b.Fatalf("unknown contender %q", impl)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: cfg, ReadHeaderTimeout: time.Minute,
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	return &onDemandServer{ca: ca, tlsAddr: ln.Addr().String(), stop: func() {
		srv.Close()
		stop()
		ca.Close()
	}}
}

var onDemandRun atomic.Int64 // makes every benchmark run's names new

// BenchmarkFirstOnDemand (B8) is the latency of a client's first handshake
// for a name allowed on demand: the issuance from Pebble in-process
// (tls-alpn-01, no validation delays, its nonce rejections on) included,
// one client at a time. It reports the median and the 99th percentile.
func BenchmarkFirstOnDemand(b *testing.B) {
	for _, impl := range onDemandImpls {
		b.Run("impl="+impl, func(b *testing.B) {
			s := newOnDemandServer(b, impl)
			defer s.stop()
			run := onDemandRun.Add(1)
			var lat []time.Duration
			i := 0
			for b.Loop() {
				i++
				name := fmt.Sprintf("od%d-%d.example.com", run, i)
				start := time.Now()
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Minute}, "tcp", s.tlsAddr,
					&tls.Config{ServerName: name, RootCAs: s.ca.Roots()})
				if err != nil {
					b.Fatalf("%s: %v", name, err)
				}
				lat = append(lat, time.Since(start))
				conn.Close()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
		})
	}
}
