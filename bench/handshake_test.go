package bench

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/acmetls/acmetls"
)

// BenchmarkHandshake is B2: full TLS 1.3 handshakes, client and server in
// this process over an in-memory connection, the client verifying the
// chain. The server's certificate comes from a static tls.Config, from
// acmetls, or from CertMagic.
func BenchmarkHandshake(b *testing.B) {
	c := getCorpus(b, 1)
	for _, key := range []string{"ECDSA", "RSA"} {
		rsaKey := key == "RSA"
		cert := c.tlsCert(0, rsaKey)
		kt := acmetls.ECDSAP256
		if rsaKey {
			kt = acmetls.RSA2048
		}
		m := &acmetls.Manager{Storage: memStorage(c, 1), KeyTypes: []acmetls.KeyType{kt}}
		if err := m.ManageSync(b.Context(), c.names[0]); err != nil {
			b.Fatal(err)
		}
		cm, stop := newCertMagic(b, c, 1, rsaKey)
		defer stop()
		servers := []struct {
			impl string
			cfg  *tls.Config
		}{
			{"static", &tls.Config{Certificates: []tls.Certificate{cert}}},
			{"acmetls", m.TLSConfig()},
			{"certmagic", &tls.Config{GetCertificate: cm.GetCertificate}},
		}
		client := &tls.Config{ServerName: c.names[0], RootCAs: c.roots, MinVersion: tls.VersionTLS13}
		for _, srv := range servers {
			b.Run("key="+key+"/impl="+srv.impl, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := handshake(client, srv.cfg); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			})
		}
	}
}

// handshake runs one TLS handshake between a client and a server config.
func handshake(client, server *tls.Config) error {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() { errc <- tls.Server(c2, server).Handshake() }()
	if err := tls.Client(c1, client).Handshake(); err != nil {
		return err
	}
	return <-errc
}

// BenchmarkHandshakeInterleaved is B2 measured so that drift on a shared
// machine cancels out: every op runs one handshake against each server, in
// rotating order, and reports each server's handshakes per second and
// acmetls's ratio to the static config.
func BenchmarkHandshakeInterleaved(b *testing.B) {
	c := getCorpus(b, 1)
	for _, key := range []string{"ECDSA", "RSA"} {
		rsaKey := key == "RSA"
		cert := c.tlsCert(0, rsaKey)
		kt := acmetls.ECDSAP256
		if rsaKey {
			kt = acmetls.RSA2048
		}
		m := &acmetls.Manager{Storage: memStorage(c, 1), KeyTypes: []acmetls.KeyType{kt}}
		if err := m.ManageSync(b.Context(), c.names[0]); err != nil {
			b.Fatal(err)
		}
		cm, stop := newCertMagic(b, c, 1, rsaKey)
		defer stop()
		servers := []*tls.Config{
			{Certificates: []tls.Certificate{cert}},
			m.TLSConfig(),
			{GetCertificate: cm.GetCertificate},
		}
		client := &tls.Config{ServerName: c.names[0], RootCAs: c.roots, MinVersion: tls.VersionTLS13}
		b.Run("key="+key, func(b *testing.B) {
			var spent [3]time.Duration
			i := 0
			for b.Loop() {
				for j := range servers {
					k := (i + j) % len(servers)
					start := time.Now()
					if err := handshake(client, servers[k]); err != nil {
						b.Fatal(err)
					}
					spent[k] += time.Since(start)
				}
				i++
			}
			n := float64(b.N)
			b.ReportMetric(n/spent[0].Seconds(), "static-hs/s")
			b.ReportMetric(n/spent[1].Seconds(), "acmetls-hs/s")
			b.ReportMetric(n/spent[2].Seconds(), "certmagic-hs/s")
			b.ReportMetric(spent[0].Seconds()/spent[1].Seconds(), "acmetls/static")
		})
	}
}
