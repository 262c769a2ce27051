package acmetls

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"sync"
)

// compact returns the form of c the cache holds, which costs less than
// half the memory of what tls.X509KeyPair returns:
//
//   - no Leaf: crypto/tls does not need the parsed leaf to serve a
//     certificate chosen by GetCertificate, and a parsed leaf costs about
//     2 KiB;
//   - an RSA private key kept as its DER (1.3 KiB for RSA 2048) until its
//     first signature, instead of parsed with its CRT and Montgomery
//     precomputations (4.5 KiB), and its public key read from the leaf when
//     first asked for. Most clients are served ECDSA; the RSA key of most
//     names is never used.
//
// c must come from keyPair, which has checked that key and leaf match.
func compact(c *tls.Certificate) (*tls.Certificate, error) {
	out := *c
	out.Leaf = nil
	if k, ok := c.PrivateKey.(*rsa.PrivateKey); ok {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		out.PrivateKey = &lazyRSAKey{leaf: c.Certificate[0], der: der}
	}
	return &out, nil
}

// lazyRSAKey is an RSA private key parsed on first use. It is a
// crypto.Signer and a crypto.Decrypter, like *rsa.PrivateKey, so crypto/tls
// treats it as one.
type lazyRSAKey struct {
	leaf    []byte // the certificate's DER, shared with the tls.Certificate
	pubOnce sync.Once
	pub     *rsa.PublicKey

	der  []byte // PKCS #8
	once sync.Once
	key  *rsa.PrivateKey
	err  error
}

var (
	_ crypto.Signer    = (*lazyRSAKey)(nil)
	_ crypto.Decrypter = (*lazyRSAKey)(nil)
)

// Public returns the public key, from the leaf, without parsing the
// private key. The leaf was checked against the key when it was loaded.
func (k *lazyRSAKey) Public() crypto.PublicKey {
	k.pubOnce.Do(func() {
		if leaf, err := x509.ParseCertificate(k.leaf); err == nil {
			k.pub, _ = leaf.PublicKey.(*rsa.PublicKey)
		}
	})
	return k.pub
}

// Sign signs with the parsed key.
func (k *lazyRSAKey) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	key, err := k.load()
	if err != nil {
		return nil, err
	}
	return key.Sign(rand, digest, opts)
}

// Decrypt decrypts with the parsed key.
func (k *lazyRSAKey) Decrypt(rand io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	key, err := k.load()
	if err != nil {
		return nil, err
	}
	return key.Decrypt(rand, msg, opts)
}

func (k *lazyRSAKey) load() (*rsa.PrivateKey, error) {
	k.once.Do(func() {
		parsed, err := x509.ParsePKCS8PrivateKey(k.der)
		if err != nil {
			k.err = err
			return
		}
		key, ok := parsed.(*rsa.PrivateKey)
		if !ok {
			k.err = errors.New("acmetls: stored RSA key is not an RSA key")
			return
		}
		k.key, k.der = key, nil
	})
	return k.key, k.err
}
