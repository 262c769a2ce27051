package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
)

func TestEndToEndDualCertificates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager()
	const name = "dual.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}

	cs, err := e.handshake(name, ecdsaTLS13Client)
	if err != nil {
		t.Fatalf("TLS 1.3 handshake: %v", err)
	}
	if got := leafKeyAlgorithm(cs); got != "ECDSA" {
		t.Errorf("TLS 1.3 client got a %s certificate, want ECDSA", got)
	}
	if cs.Version != 0x0304 {
		t.Errorf("version %x, want TLS 1.3", cs.Version)
	}
	ecdsaSerial := cs.PeerCertificates[0].SerialNumber

	cs, err = e.handshake(name, rsaOnlyTLS12)
	if err != nil {
		t.Fatalf("RSA-only TLS 1.2 handshake: %v", err)
	}
	if got := leafKeyAlgorithm(cs); got != "RSA" {
		t.Errorf("RSA-only client got a %s certificate, want RSA", got)
	}
	if cs.PeerCertificates[0].SerialNumber.Cmp(ecdsaSerial) == 0 {
		t.Error("both clients got the same certificate")
	}
	// The chain verifies against the CA's root (the dial already checked
	// it; check the names too).
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: e.ca.Roots(), Intermediates: pool(cs.PeerCertificates[1:])}); err != nil {
		t.Errorf("chain does not verify: %v", err)
	}
	if n := len(e.ca.Finalizations()); n != 2 {
		t.Errorf("CA finalized %d orders, want 2 (one per key type)", n)
	}
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// onlyChallenge leaves one challenge type enabled.
var onlyChallenge = []struct {
	name    string
	disable func(*Manager)
}{
	{"http-01", func(m *Manager) { m.DisableTLSALPNChallenge = true }},
	{"tls-alpn-01", func(m *Manager) { m.DisableHTTPChallenge = true }},
}

func TestEachChallengeType(t *testing.T) {
	t.Parallel()
	for _, tc := range onlyChallenge {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, acmetest.Options{})
			m := e.manager(tc.disable, func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
			if err := m.ManageSync(context.Background(), "chal.example.com"); err != nil {
				t.Fatal(err)
			}
			if _, err := e.handshake("chal.example.com", nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A frontend that did not place the order answers the CA's challenge from
// shared storage.
func TestChallengeAnsweredBySibling(t *testing.T) {
	t.Parallel()
	for _, tc := range onlyChallenge {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, acmetest.Options{})
			front := e.manager()
			orderer := e.manager(tc.disable, func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
			e.front.Store(front) // the CA reaches the frontend, not the orderer
			if err := orderer.ManageSync(context.Background(), "sibling.example.com"); err != nil {
				t.Fatal(err)
			}
			if n := e.ca.FinalizationsFor("sibling.example.com", "ECDSA"); n != 1 {
				t.Fatalf("finalizations = %d, want 1", n)
			}
			// The frontend serves the certificate from storage.
			cs, err := e.handshake("sibling.example.com", nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := leafKeyAlgorithm(cs); got != "ECDSA" {
				t.Errorf("got %s, want ECDSA", got)
			}
		})
	}
}

func TestRestartServesFromStorage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	names := []string{"a.example.com", "b.example.com"}
	if err := e.manager().ManageSync(context.Background(), names...); err != nil {
		t.Fatal(err)
	}
	orders := len(e.ca.Orders())
	if orders != 4 {
		t.Fatalf("first Manager placed %d orders, want 4", orders)
	}

	// A new process on the same storage: managed names and a handshake
	// for each key type, no order.
	m2 := e.manager()
	if err := m2.ManageSync(context.Background(), names...); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		for _, client := range []*tls.Config{ecdsaTLS13Client, rsaOnlyTLS12} {
			if _, err := e.handshake(name, client); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	// A third process that was told nothing still serves what storage
	// holds.
	e.manager()
	if _, err := e.handshake("a.example.com", rsaOnlyTLS12); err != nil {
		t.Fatal(err)
	}
	if got := len(e.ca.Orders()); got != orders {
		t.Errorf("restarted Managers placed %d new orders, want 0", got-orders)
	}
}
