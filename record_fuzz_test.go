package acmetls

import (
	"context"
	"testing"

	"github.com/acmetls/acmetls/storage"
)

// FuzzCertFromRecord feeds stored bytes to the decoder the handshake path
// uses: it returns a certificate only when the record is whole, the key
// matches the leaf and the leaf covers the name; it never panics.
func FuzzCertFromRecord(f *testing.F) {
	chainPEM, keyPEM := selfSignedPEM(f, ECDSAP256, "www.example.com")
	rec := storage.CertRecord{Names: []string{"www.example.com"}, KeyType: string(ECDSAP256), KeyPEM: keyPEM, ChainPEM: chainPEM}
	b, err := rec.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)/2])
	f.Add([]byte(`{"version":1,"names":["www.example.com"],"key_type":"ecdsa-p256","key_pem":"x","chain_pem":"y"}`))
	m := &Manager{KeyTypes: []KeyType{ECDSAP256}, Storage: &failingStorage{}}
	if err := m.init(); err != nil {
		f.Fatal(err)
	}
	m.storedAccountOnce.Do(func() {}) // no account to compare with
	f.Fuzz(func(t *testing.T, b []byte) {
		c, _, err := m.certFromRecord(context.Background(), b, "www.example.com", ECDSAP256)
		if err != nil {
			return
		}
		if c.Leaf == nil || c.Leaf.VerifyHostname("www.example.com") != nil {
			t.Fatal("accepted a certificate that does not cover the name")
		}
		if keyTypeOf(c.Leaf.PublicKey) != ECDSAP256 {
			t.Fatal("accepted a certificate of another key type")
		}
	})
}
