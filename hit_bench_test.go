package acmetls

import (
	"crypto/tls"
	"testing"
)

// BenchmarkGetCertificateHit is the handshake path's cache hit, for the
// two kinds of client. bench/ compares it with the other libraries.
func BenchmarkGetCertificateHit(b *testing.B) {
	m := cachedManager(b, 0, "www.example.com")
	for _, tc := range []struct {
		name   string
		client *tls.Config
	}{{"ECDSA", &tls.Config{}}, {"RSA-only", rsaOnlyTLS12}} {
		hello := goHello(b, "www.example.com", tc.client)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.GetCertificate(hello); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetCertificateHitStaple compares a hit with and without an OCSP
// staple attached: the staple rides on the cached certificate, so the two
// cost the same and allocate nothing.
func BenchmarkGetCertificateHitStaple(b *testing.B) {
	hello := goHello(b, "www.example.com", &tls.Config{})
	for _, tc := range []struct {
		name   string
		staple []byte
	}{{"staple=none", nil}, {"staple=attached", make([]byte, 1500)}} {
		m := cachedManagerStaple(b, 0, tc.staple, "www.example.com")
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c, err := m.GetCertificate(hello); err != nil || len(c.OCSPStaple) != len(tc.staple) {
					b.Fatal("wrong certificate", err)
				}
			}
		})
	}
}
