package acmetls

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// Item 5 of the certificates issue: an IP address given to ManageSync
// gets a certificate for it (RFC 8738), by http-01 or by tls-alpn-01
// (validated under its reverse-DNS name), and a client that dials the
// address, sending no server name, gets it.
func TestIPCertificate(t *testing.T) {
	for _, tc := range []struct {
		name       string
		noHTTP, no bool
	}{{"http-01", true, false}, {"tls-alpn-01", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, acmetest.Options{Profiles: map[string]time.Duration{"shortlived": 6 * 24 * time.Hour}})
			m := e.manager(func(m *Manager) {
				m.KeyTypes = []KeyType{ECDSAP256}
				m.DisableTLSALPNChallenge = tc.noHTTP
				m.DisableHTTPChallenge = tc.no
				m.Profile = "shortlived"
			})
			if err := m.ManageSync(context.Background(), "127.0.0.1"); err != nil {
				t.Fatal(err)
			}
			// Dialing an address, crypto/tls sends no server name and
			// verifies the address against the certificate.
			conn, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{RootCAs: e.ca.Roots()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			leaf := conn.ConnectionState().PeerCertificates[0]
			if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || len(leaf.DNSNames) != 0 {
				t.Errorf("certificate for %v %v", leaf.IPAddresses, leaf.DNSNames)
			}
		})
	}
	// An address not given to ManageSync is refused, as before.
	m := cachedManager(t, 10, "www.example.com")
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Error("a client without a server name was served with no IP managed")
	}
}

func TestReverseIP(t *testing.T) {
	for in, want := range map[string]string{
		"1.0.0.127.in-addr.arpa": "127.0.0.1",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa": "::1",
		"1.0.0.in-addr.arpa":     "",
		"example.com":            "",
		"a.0.0.127.in-addr.arpa": "",
	} {
		got, ok := reverseIP(in)
		if got != want || ok != (want != "") {
			t.Errorf("reverseIP(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
