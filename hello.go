package acmetls

import "crypto/tls"

// This file decides, without allocating, whether a client can use an ECDSA
// or an RSA certificate. It mirrors tls.ClientHelloInfo.SupportsCertificate
// for the key types acmetls issues and the server configuration TLSConfig
// returns (TLS 1.2 and 1.3, Go's default cipher suites and groups).
// SupportsCertificate allocates about seven times per call; this is on
// every handshake. FuzzSupportsMatchesCrypto proves the two agree. A
// handshake that neither fast check accepts still goes through
// SupportsCertificate, so a client is never refused here that crypto/tls
// would serve.

// ecdsaSuites and rsaSuites are Go's default TLS 1.2 ECDHE cipher suites
// for each certificate type.
var (
	ecdsaSuites = [...]uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	}
	rsaSuites = [...]uint16{
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	}
)

// supports reports whether the client that sent hello can be served a
// certificate whose key is of type kt.
func supports(hello *tls.ClientHelloInfo, kt KeyType) bool {
	return supportsIndex(hello, indexOf(kt))
}

// supportsIndex is supports with the key type as a keyIndex, so that the
// handshake path compares bytes, not strings.
func supportsIndex(hello *tls.ClientHelloInfo, ki keyIndex) bool {
	return supportsAt(hello, mutualVersion(hello.SupportedVersions), ki)
}

// supportsAt is supportsIndex at the version the server will negotiate.
func supportsAt(hello *tls.ClientHelloInfo, vers uint16, ki keyIndex) bool {
	if vers == 0 || ki == 0 {
		return false
	}
	if len(hello.SignatureSchemes) > 0 && !anySignatureScheme(vers, ki, hello.SignatureSchemes) {
		return false
	}
	if vers == tls.VersionTLS13 {
		return true
	}
	if !supportsECDHE(hello) {
		return false
	}
	switch ki {
	case kiP256:
		return containsCurve(hello.SupportedCurves, tls.CurveP256) && anySuite(hello.CipherSuites, ecdsaSuites[:])
	case kiP384:
		return containsCurve(hello.SupportedCurves, tls.CurveP384) && anySuite(hello.CipherSuites, ecdsaSuites[:])
	}
	return anySuite(hello.CipherSuites, rsaSuites[:])
}

func mutualVersion(peer []uint16) uint16 {
	var has12 bool
	for _, v := range peer {
		switch v {
		case tls.VersionTLS13:
			return tls.VersionTLS13
		case tls.VersionTLS12:
			has12 = true
		}
	}
	if has12 {
		return tls.VersionTLS12
	}
	return 0
}

// offersScheme reports whether the client lists the signature scheme s.
func offersScheme(peer []tls.SignatureScheme, s tls.SignatureScheme) bool {
	for _, x := range peer {
		if x == s {
			return true
		}
	}
	return false
}

func anySignatureScheme(vers uint16, ki keyIndex, peer []tls.SignatureScheme) bool {
	for _, s := range peer {
		if signatureSchemeFits(vers, ki, s) {
			return true
		}
	}
	return false
}

// signatureSchemeFits reports whether the server may sign with s using a key
// of type kt at version vers (SHA-1 is disabled in both versions, PKCS #1
// v1.5 in TLS 1.3, and TLS 1.3 binds ECDSA schemes to one curve).
func signatureSchemeFits(vers uint16, ki keyIndex, s tls.SignatureScheme) bool {
	switch ki {
	case kiP256, kiP384:
		if vers == tls.VersionTLS13 {
			return (ki == kiP256 && s == tls.ECDSAWithP256AndSHA256) ||
				(ki == kiP384 && s == tls.ECDSAWithP384AndSHA384)
		}
		return s == tls.ECDSAWithP256AndSHA256 || s == tls.ECDSAWithP384AndSHA384 || s == tls.ECDSAWithP521AndSHA512
	default:
		switch s {
		case tls.PSSWithSHA256, tls.PSSWithSHA384, tls.PSSWithSHA512:
			return true
		case tls.PKCS1WithSHA256, tls.PKCS1WithSHA384, tls.PKCS1WithSHA512:
			return vers == tls.VersionTLS12
		}
		return false
	}
}

// supportsECDHE reports whether the client offers a group usable for ECDHE
// in TLS 1.2 and accepts uncompressed points.
func supportsECDHE(hello *tls.ClientHelloInfo) bool {
	var group bool
	for _, c := range hello.SupportedCurves {
		if c == tls.X25519 || c == tls.CurveP256 || c == tls.CurveP384 || c == tls.CurveP521 {
			group = true
			break
		}
	}
	if !group {
		return false
	}
	if len(hello.SupportedPoints) == 0 {
		return true
	}
	for _, p := range hello.SupportedPoints {
		if p == 0 { // uncompressed
			return true
		}
	}
	return false
}

func containsCurve(cs []tls.CurveID, c tls.CurveID) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

func anySuite(offered []uint16, ours []uint16) bool {
	for _, o := range offered {
		for _, s := range ours {
			if o == s {
				return true
			}
		}
	}
	return false
}
