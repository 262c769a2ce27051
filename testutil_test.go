package acmetls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// selfSigned makes a certificate of key type kt for names, valid now.
func selfSigned(t testing.TB, kt KeyType, names ...string) *tls.Certificate {
	t.Helper()
	chainPEM, keyPEM := selfSignedPEM(t, kt, names...)
	c, err := keyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// selfSignedPEM is selfSigned in PEM: chain, then key.
func selfSignedPEM(t testing.TB, kt KeyType, names ...string) (string, string) {
	t.Helper()
	key, err := generateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), keyPEM
}

// pipe returns the two ends of an in-memory full-duplex connection.
func pipe() (net.Conn, net.Conn) { return net.Pipe() }

// keyAlgorithm names the type of c's key: "ECDSA" or "RSA".
func keyAlgorithm(c *tls.Certificate) string {
	switch c.PrivateKey.(crypto.Signer).Public().(type) {
	case *ecdsa.PublicKey:
		return "ECDSA"
	case *rsa.PublicKey:
		return "RSA"
	}
	return "?"
}
