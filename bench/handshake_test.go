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
		servers := handshakeServers(b, c, key == "RSA")
		client := &tls.Config{ServerName: c.names[0], RootCAs: c.roots, MinVersion: tls.VersionTLS13}
		for i, impl := range []string{"static", "acmetls", "certmagic"} {
			b.Run("key="+key+"/impl="+impl, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := handshake(client, servers[i]); err != nil {
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
		servers := handshakeServers(b, c, key == "RSA")
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

// handshakeServers returns the three server configurations B2 compares,
// serving the corpus's first name with an ECDSA, or an RSA, certificate: a
// static tls.Config, acmetls and CertMagic.
func handshakeServers(b *testing.B, c *corpus, rsaKey bool) [3]*tls.Config {
	kt := acmetls.ECDSAP256
	if rsaKey {
		kt = acmetls.RSA2048
	}
	m := &acmetls.Manager{Storage: memStorage(c, 1), KeyTypes: []acmetls.KeyType{kt}}
	if err := m.ManageSync(b.Context(), c.names[0]); err != nil {
		b.Fatal(err)
	}
	cm, stop := newCertMagic(b, c, 1, rsaKey)
	b.Cleanup(stop)
	return [3]*tls.Config{
		{Certificates: []tls.Certificate{c.tlsCert(0, rsaKey)}},
		m.TLSConfig(),
		{GetCertificate: cm.GetCertificate},
	}
}
