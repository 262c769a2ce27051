package acmetls

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"
)

// The compact RSA key signs, decrypts and reports its public key like the
// parsed one, and parses the private key only once used.
func TestLazyRSAKey(t *testing.T) {
	c := selfSigned(t, RSA2048, "rsa.example.com")
	cc, err := compact(c)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Leaf != nil {
		t.Error("compact kept the leaf")
	}
	k := cc.PrivateKey.(*lazyRSAKey)
	if k.key != nil {
		t.Fatal("the private key was parsed before use")
	}
	want := c.PrivateKey.(*rsa.PrivateKey)
	if !want.PublicKey.Equal(k.Public()) {
		t.Fatal("Public differs from the parsed key's")
	}
	digest := sha256.Sum256([]byte("hello"))
	sig, err := k.Sign(rand.Reader, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(&want.PublicKey, crypto.SHA256, digest[:], sig, nil); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	msg, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, &want.PublicKey, []byte("secret"), nil)
	if got, err := k.Decrypt(rand.Reader, msg, &rsa.OAEPOptions{Hash: crypto.SHA256}); err != nil || string(got) != "secret" {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
	// ECDSA keys stay as they are.
	e := selfSigned(t, ECDSAP256, "ec.example.com")
	ce, _ := compact(e)
	if ce.PrivateKey != e.PrivateKey || ce.Leaf != nil {
		t.Error("compact changed an ECDSA key or kept the leaf")
	}
}
