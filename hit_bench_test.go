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
