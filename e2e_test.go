package acmetls

import (
	"context"
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
