package acmetls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// KeyType is the type of a certificate's private key.
type KeyType string

// The supported key types. A Manager holds at most one ECDSA and one RSA
// certificate per name, and serves each client the one it supports,
// ECDSA first.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
)

var validKeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096}

// ErrAccountKeyReuse is returned when the ACME account's key is offered as a
// certificate key. The account key signs requests to the CA; a certificate
// key is handed to every TLS server that serves the name. They are never
// the same key.
var ErrAccountKeyReuse = errors.New("acmetls: the ACME account key cannot be used as a certificate key")

// isECDSA reports whether kt is one of the ECDSA key types.
func (kt KeyType) isECDSA() bool { return kt == ECDSAP256 || kt == ECDSAP384 }

func (kt KeyType) valid() bool {
	for _, v := range validKeyTypes {
		if kt == v {
			return true
		}
	}
	return false
}

// checkKeyTypes validates a KeyTypes configuration: known types, no
// duplicates, at most one ECDSA and one RSA type.
func checkKeyTypes(kts []KeyType) error {
	var ec, rs int
	for _, kt := range kts {
		if !kt.valid() {
			names := make([]string, len(validKeyTypes))
			for i, v := range validKeyTypes {
				names[i] = string(v)
			}
			return fmt.Errorf("acmetls: unknown key type %q; valid: %s", kt, strings.Join(names, ", "))
		}
		if kt.isECDSA() {
			ec++
		} else {
			rs++
		}
	}
	if ec > 1 || rs > 1 {
		return fmt.Errorf("acmetls: KeyTypes %v: at most one ECDSA and one RSA key type", kts)
	}
	if len(kts) == 0 {
		return errors.New("acmetls: KeyTypes is empty")
	}
	return nil
}

// generateKey makes a new private key of type kt.
func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("acmetls: unknown key type %q", kt)
}

// newCertKey makes a certificate key of type kt and proves it is not the
// account key.
func newCertKey(kt KeyType, account crypto.Signer) (crypto.Signer, error) {
	k, err := generateKey(kt)
	if err != nil {
		return nil, err
	}
	if err := checkNotAccountKey(k.Public(), account); err != nil {
		return nil, err
	}
	return k, nil
}

// checkNotAccountKey returns ErrAccountKeyReuse if pub is the public half of
// the account key.
func checkNotAccountKey(pub crypto.PublicKey, account crypto.Signer) error {
	if account == nil {
		return nil
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := account.Public().(equaler); ok && e.Equal(pub) {
		return ErrAccountKeyReuse
	}
	return nil
}

// keyTypeOf tells the KeyType of a public key, or "" if it is none of ours.
func keyTypeOf(pub crypto.PublicKey) KeyType {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256
		case elliptic.P384():
			return ECDSAP384
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048
		case 3072:
			return RSA3072
		case 4096:
			return RSA4096
		}
	}
	return ""
}

// encodeKey encodes a private key as PKCS #8 PEM.
func encodeKey(k crypto.Signer) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", fmt.Errorf("acmetls: encoding private key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

// decodeKey parses a PEM private key (PKCS #8, PKCS #1 or SEC 1).
func decodeKey(s string) (crypto.Signer, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("acmetls: no PEM private key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("acmetls: private key of type %T cannot sign", k)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("acmetls: unparsable private key")
}

// keyPair builds a tls.Certificate from a PEM chain and key, checking that
// the key matches the leaf. Leaf is set.
func keyPair(chainPEM, keyPEM string) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair([]byte(chainPEM), []byte(keyPEM))
	if err != nil {
		return nil, fmt.Errorf("acmetls: %w", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("acmetls: parsing leaf: %w", err)
		}
	}
	return &c, nil
}
