package bench

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// BenchmarkResumption (B9) is the cost of a TLS 1.3 handshake that
// resumes a session, against a full one, on acmetls's configuration:
// tickets sealed with the keys shared through storage (any frontend
// resumes them), and with crypto/tls's own per-process keys
// (LocalSessionTickets). Client and server in this process over an
// in-memory connection; ECDSA certificate.
func BenchmarkResumption(b *testing.B) {
	c := getCorpus(b, 1)
	shared := newAcmetls(b, c, 1, nil)
	local := newAcmetls(b, c, 1, nil)
	local.LocalSessionTickets = true
	for _, tc := range []struct {
		name    string
		server  *tls.Config
		resumed bool
	}{
		{"full", shared.TLSConfig(), false},
		{"resumed/tickets=shared", shared.TLSConfig(), true},
		{"resumed/tickets=local", local.TLSConfig(), true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client := &tls.Config{ServerName: c.names[0], RootCAs: c.roots, MinVersion: tls.VersionTLS13}
			if tc.resumed {
				client.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				if _, err := resumingHandshake(client, tc.server); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				resumed, err := resumingHandshake(client, tc.server)
				if err != nil {
					b.Fatal(err)
				}
				if resumed != tc.resumed {
					b.Fatalf("resumed: %v, want %v", resumed, tc.resumed)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// resumingHandshake runs a handshake and reads one byte the server sends
// after it, so that the client takes the session ticket that precedes it.
func resumingHandshake(client, server *tls.Config) (bool, error) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(c2, server)
		if err := s.Handshake(); err != nil {
			errc <- err
			return
		}
		_, err := s.Write([]byte{1})
		errc <- err
	}()
	conn := tls.Client(c1, client)
	if err := conn.Handshake(); err != nil {
		return false, err
	}
	var one [1]byte
	if _, err := io.ReadFull(conn, one[:]); err != nil {
		return false, err
	}
	return conn.ConnectionState().DidResume, <-errc
}
