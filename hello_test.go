package acmetls

import (
	"crypto/tls"
	"testing"
)

// testCerts makes one self-signed certificate per key type, for tests
// that need certificates but not a CA.
func testCerts(t testing.TB, kts ...KeyType) map[KeyType]*tls.Certificate {
	t.Helper()
	out := make(map[KeyType]*tls.Certificate)
	for _, kt := range kts {
		out[kt] = selfSigned(t, kt, "www.example.com")
	}
	return out
}

var (
	fuzzVersions = []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12, tls.VersionTLS13}
	fuzzSchemes  = []tls.SignatureScheme{
		tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512,
		tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512, tls.PKCS1WithSHA1,
		tls.ECDSAWithP256AndSHA256, tls.ECDSAWithP384AndSHA384, tls.ECDSAWithP521AndSHA512, tls.ECDSAWithSHA1,
		tls.Ed25519,
	}
	fuzzCurves = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521, tls.X25519MLKEM768, tls.SecP256r1MLKEM768, 0x1234}
	fuzzSuites = []uint16{
		tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_ECDSA_WITH_RC4_128_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	}
	fuzzPoints = []uint8{0, 1, 2}
)

// helloFromBits builds a ClientHelloInfo whose lists are the subsets of
// the candidates above selected by the bits of each mask.
func helloFromBits(versions uint8, schemes uint16, curves uint8, suites uint16, points uint8) *tls.ClientHelloInfo {
	h := &tls.ClientHelloInfo{}
	for i, v := range fuzzVersions {
		if versions&(1<<i) != 0 {
			h.SupportedVersions = append(h.SupportedVersions, v)
		}
	}
	for i, s := range fuzzSchemes {
		if schemes&(1<<i) != 0 {
			h.SignatureSchemes = append(h.SignatureSchemes, s)
		}
	}
	for i, c := range fuzzCurves {
		if curves&(1<<i) != 0 {
			h.SupportedCurves = append(h.SupportedCurves, c)
		}
	}
	for i, s := range fuzzSuites {
		if suites&(1<<i) != 0 {
			h.CipherSuites = append(h.CipherSuites, s)
		}
	}
	for i, p := range fuzzPoints {
		if points&(1<<i) != 0 {
			h.SupportedPoints = append(h.SupportedPoints, p)
		}
	}
	return h
}

// FuzzSupportsMatchesCrypto proves the allocation-free check equal to
// crypto/tls's SupportsCertificate for every key type acmetls issues.
func FuzzSupportsMatchesCrypto(f *testing.F) {
	certs := testCerts(f, ECDSAP256, ECDSAP384, RSA2048)
	// A modern TLS 1.3 client, an RSA-only TLS 1.2 client, a TLS 1.2
	// client with ECDSA, one without signature_algorithms, one with only
	// compressed points, one offering only TLS 1.0.
	f.Add(uint8(0b1100), uint16(0xFFF), uint8(0b111), uint16(0xFFF), uint8(1))
	f.Add(uint8(0b0100), uint16(0b1111111), uint8(0b11), uint16(0b1000000), uint8(1))
	f.Add(uint8(0b0100), uint16(0b11110000000), uint8(0b11), uint16(0b100), uint8(0))
	f.Add(uint8(0b0100), uint16(0), uint8(0b10), uint16(0b11100), uint8(1))
	f.Add(uint8(0b0100), uint16(0xFFF), uint8(0b10), uint16(0xFFF), uint8(0b110))
	f.Add(uint8(0b0001), uint16(0xFFF), uint8(0b1), uint16(0xFFF), uint8(1))
	f.Fuzz(func(t *testing.T, versions uint8, schemes uint16, curves uint8, suites uint16, points uint8) {
		h := helloFromBits(versions, schemes, curves, suites, points)
		for kt, c := range certs {
			want := h.SupportsCertificate(c) == nil
			if got := supports(h, kt); got != want {
				t.Fatalf("%s: supports = %v, SupportsCertificate says %v, for %+v", kt, got, want, h)
			}
		}
	})
}

// Every combination of the candidate lists is too many; walk a dense grid
// in the ordinary test run so CI checks far more than the seeds.
func TestSupportsMatchesCryptoGrid(t *testing.T) {
	t.Parallel()
	certs := testCerts(t, ECDSAP256, ECDSAP384, RSA2048)
	n := 0
	for versions := uint8(0); versions < 16; versions++ {
		for _, schemes := range []uint16{0, 0xFFF, 0b1111111, 0b11110000000, 0b1, 0b1000, 0b10000000, 0b100000000, 0b1000000000000 - 1 - 0b10000000} {
			for curves := uint8(0); curves < 128; curves += 3 {
				for _, suites := range []uint16{0, 0xFFF, 0b11, 0b1100, 0b11000000, 0b100, 0b1000000, 0b110000000000, 0b1100000000} {
					for points := uint8(0); points < 8; points++ {
						h := helloFromBits(versions, schemes, curves, suites, points)
						for kt, c := range certs {
							n++
							want := h.SupportsCertificate(c) == nil
							if got := supports(h, kt); got != want {
								t.Fatalf("%s: supports = %v, SupportsCertificate says %v, for %+v", kt, got, want, h)
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d hellos x key types agree", n)
}
