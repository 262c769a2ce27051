package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crypto/rand"

	"github.com/caddyserver/certmagic"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

func TestCheckKeyTypes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kts     []KeyType
		wantErr string
	}{
		{[]KeyType{ECDSAP256, RSA2048}, ""},
		{[]KeyType{ECDSAP384, RSA4096}, ""},
		{[]KeyType{RSA3072}, ""},
		{[]KeyType{"ed25519"}, `unknown key type "ed25519"; valid: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096`},
		{[]KeyType{"rsa1024"}, "valid: ecdsa-p256"},
		{[]KeyType{ECDSAP256, ECDSAP384}, "at most one ECDSA and one RSA"},
		{[]KeyType{RSA2048, RSA2048}, "at most one ECDSA and one RSA"},
	} {
		err := checkKeyTypes(tc.kts)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.kts, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: error %v, want it to contain %q", tc.kts, err, tc.wantErr)
		}
	}
	m := &Manager{KeyTypes: []KeyType{"dsa"}}
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.example.com"}); err == nil || !strings.Contains(err.Error(), "dsa") {
		t.Errorf("a Manager with a bad key type served: %v", err)
	}
}

func TestNewCertKeyIsNeverTheAccountKey(t *testing.T) {
	t.Parallel()
	account, err := generateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkNotAccountKey(account.Public(), account); !errors.Is(err, ErrAccountKeyReuse) {
		t.Fatalf("the account key itself: %v, want ErrAccountKeyReuse", err)
	}
	for _, kt := range []KeyType{ECDSAP256, RSA2048} {
		k, err := newCertKey(kt, account)
		if err != nil {
			t.Fatal(err)
		}
		if keyTypeOf(k.Public()) != kt {
			t.Errorf("newCertKey(%s) made a %s key", kt, keyTypeOf(k.Public()))
		}
	}
}

// A certificate record whose key is the account key is refused and
// replaced by a certificate with a key of its own.
func TestAccountKeyRefusedAsCertificateKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	ctx := context.Background()
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := m.ManageSync(ctx, "first.example.com"); err != nil {
		t.Fatal(err)
	}
	acct, err := m.getAccount(ctx, m.issuers[0])
	if err != nil {
		t.Fatal(err)
	}

	// Plant a record for another name whose key is the account key.
	const name = "planted.example.com"
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, acct.PrivateKey.Public(), acct.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(acct.PrivateKey)
	rec := storage.CertRecord{
		Names: []string{name}, KeyType: string(ECDSAP256), KeyPEM: keyPEM,
		ChainPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}
	b, _ := rec.Marshal()
	if err := e.storage.Store(ctx, storage.CertKey(name, string(ECDSAP256)), b); err != nil {
		t.Fatal(err)
	}

	// A fresh process must not serve it.
	m2 := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := m2.init(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m2.certFromRecord(ctx, b, name, ECDSAP256); !errors.Is(err, ErrAccountKeyReuse) {
		t.Fatalf("certFromRecord: %v, want ErrAccountKeyReuse", err)
	}
	if err := m2.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if checkNotAccountKey(cs.PeerCertificates[0].PublicKey, acct.PrivateKey) != nil {
		t.Fatal("served a certificate whose key is the account key")
	}
	if n := e.ca.FinalizationsFor(name, "ECDSA"); n != 1 {
		t.Errorf("finalizations for the planted name = %d, want 1 (replaced)", n)
	}
}

// Files that hold key material are readable by their owner only.
func TestKeyFilesArePrivate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	if err := e.manager().ManageSync(context.Background(), "perm.example.com"); err != nil {
		t.Fatal(err)
	}
	root := e.storage.(*certmagic.FileStorage).Path
	files := 0
	err := filepath.WalkDir(filepath.Join(root, storage.Prefix), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if perm := info.Mode().Perm(); perm&0o077 != 0 {
				t.Errorf("%s: directory mode %o, want no group or other access", path, perm)
			}
			return nil
		}
		files++
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s: mode %o, want 600", path, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 { // the account and one record per key type
		t.Errorf("found %d files, want at least 3", files)
	}
}

// Without AgreeToTerms, creating an account fails with an error naming the
// CA's terms URL, taken from its directory.
func TestTermsMustBeAgreed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager(func(m *Manager) { m.AgreeToTerms = false })
	err := m.ManageSync(context.Background(), "terms.example.com")
	if !errors.Is(err, ErrTermsNotAgreed) {
		t.Fatalf("err = %v, want ErrTermsNotAgreed", err)
	}
	if !strings.Contains(err.Error(), "data:text/plain") { // Pebble's terms URL
		t.Errorf("error does not name the terms URL: %v", err)
	}
	if n := len(e.ca.Orders()); n != 0 {
		t.Errorf("orders = %d", n)
	}
}

// The keyIndex constants follow validKeyTypes.
func TestKeyIndexes(t *testing.T) {
	for i, want := range []keyIndex{kiP256, kiP384, kiRSA2048, kiRSA3072, kiRSA4096} {
		kt := validKeyTypes[i]
		if got := indexOf(kt); got != want || got.keyType() != kt {
			t.Errorf("%s: index %d, want %d", kt, got, want)
		}
	}
	if indexOf("dsa") != 0 || keyIndex(0).keyType() != "" {
		t.Error("unknown key types do not map to zero")
	}
}
