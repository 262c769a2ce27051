package acmetls

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/ocsp"
)

// The fault suite, part four (item 12): staples from a real outside
// responder and from hostile ones. Each test prints its figures.

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// OpenSSL's own responder in its default setup (answers signed by the
// issuing CA, the CA's certificate included) is stapled: the included
// certificate is the issuer's, not a delegated responder's.
func TestOpenSSLResponderIsStapled(t *testing.T) {
	t.Parallel()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is needed (.ci/run installs it): %v", err)
	}
	port := freePort(t)
	e := newEnv(t, acmetest.Options{OCSPResponderURL: fmt.Sprintf("http://127.0.0.1:%d", port)})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	const name = "openssl.example.com"
	ctx := context.Background()
	if err := m.ManageSync(ctx, name); err != nil { // the responder is not up yet: no staple
		t.Fatal(err)
	}
	c, _, err := m.readCert(ctx, name, ECDSAP256)
	if err != nil || c == nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPEM, err := e.ca.IssuerKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	index := fmt.Sprintf("V\t%s\t\t%X\tunknown\t/CN=%s\n", c.Leaf.NotAfter.UTC().Format("060102150405Z"), c.Leaf.SerialNumber.Bytes(), name)
	for file, b := range map[string][]byte{"issuer.pem": e.ca.IssuerPEM(), "issuer.key": keyPEM, "index.txt": []byte(index)} {
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(openssl, "ocsp", "-index", "index.txt", "-port", fmt.Sprint(port),
		"-rsigner", "issuer.pem", "-rkey", "issuer.key", "-CA", "issuer.pem", "-ndays", "1")
	cmd.Dir = dir
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// A connection without a request stops it: wait for it to say it
	// listens rather than probe it.
	waitFor(t, "openssl ocsp to listen", func() bool {
		return bytes.Contains([]byte(out.String()), []byte("waiting for OCSP client connections"))
	})
	m.refreshStaple(ctx, m.tracked(name, ECDSAP256))
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.OCSPResponse) == 0 {
		t.Fatalf("no staple from openssl ocsp; its output:\n%s", out.String())
	}
	leaf, issuer := cs.PeerCertificates[0], cs.PeerCertificates[1]
	r, err := ocsp.Check(cs.OCSPResponse, leaf, issuer, time.Now())
	if err != nil || r.Status != ocsp.Good {
		t.Fatalf("the staple: %v, %v", r, err)
	}
	_, xerr := xocsp.ParseResponseForCert(cs.OCSPResponse, leaf, issuer)
	t.Logf("openssl ocsp (default setup: signed by the issuer, its certificate included): stapled, good until %v, the issuer's certificate included: %v; x/crypto's ParseResponseForCert alone says: %v",
		r.NextUpdate.Format(time.RFC3339), r.Certificate != nil, xerr)
	if r.Certificate == nil {
		t.Error("openssl did not include the issuer's certificate: the test does not test what it says")
	}
}

// While the responder is down, the last staple is served until shortly
// before its nextUpdate, and never after: in real time, with Run.
func TestExpiredStapleNeverServed(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, 10*time.Second)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	const name = "expiring.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	first := checkStaple(t, e, name)
	if first == nil {
		t.Fatal("no staple")
	}
	resp.Set(acmetest.OCSPDown)
	runManager(t, m)
	var stapled, expired, none int
	for time.Now().Before(first.NextUpdate.Add(2 * time.Second)) {
		cs, err := e.handshake(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(cs.OCSPResponse) == 0:
			none++
		case time.Now().Before(first.NextUpdate):
			stapled++
		default:
			expired++
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("responder down, staple valid for 10 s more: %d handshakes stapled before its nextUpdate, %d after it, %d without a staple", stapled, expired, none)
	if expired != 0 || stapled == 0 || none == 0 {
		t.Errorf("stapled %d, expired %d, none %d", stapled, expired, none)
	}
}

// An answer for the right serial whose CertID names another issuer is
// never stapled.
func TestAnswerNamingAnotherIssuerNeverStapled(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, time.Hour)
	resp.Set(acmetest.OCSPOtherIssuer)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	const name = "otherissuer.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	m.refreshStaple(context.Background(), m.tracked(name, ECDSAP256))
	stapled := 0
	for range 5 {
		if checkStaple(t, e, name) != nil {
			stapled++
		}
	}
	t.Logf("responder answering for the right serial under another issuer: asked %d times, %d of 5 handshakes stapled", resp.Requests(), stapled)
	if stapled != 0 || resp.Requests() == 0 {
		t.Errorf("%d stapled, responder asked %d times", stapled, resp.Requests())
	}
}

// A staple fetched for a certificate never lands on the one that replaced
// it meanwhile.
func TestStapleLandsOnItsOwnCertificate(t *testing.T) {
	t.Parallel()
	e, _ := ocspEnv(t, time.Hour)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	const name = "race.example.com"
	ctx := context.Background()
	if err := m.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	old := m.tracked(name, ECDSAP256)
	if err := m.RetryNow(ctx, name); err != nil { // renewed now
		t.Fatal(err)
	}
	m.setStaple(old, []byte("the old certificate's staple"), time.Now().Add(time.Hour), time.Now())
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(cs.PeerCertificates[0].SerialNumber.Bytes()) == old.serial {
		t.Fatal("the renewal did not land")
	}
	if bytes.Equal(cs.OCSPResponse, []byte("the old certificate's staple")) {
		t.Fatal("the renewed certificate carries the old one's staple")
	}
	if r := checkStaple(t, e, name); r == nil || r.SerialNumber.Cmp(cs.PeerCertificates[0].SerialNumber) != 0 {
		t.Errorf("the renewed certificate's staple: %v", r)
	}
}

// Once its responder says it is revoked, a certificate is served without
// its last good staple while its replacement is on the way.
func TestRevokedServedWithoutGoodStaple(t *testing.T) {
	t.Parallel()
	r := acmetest.NewResponder(time.Hour)
	t.Cleanup(r.Close)
	e, ca := newHangingEnv(t, acmetest.Options{OCSPResponderURL: r.URL}, false)
	r.Attach(e.ca)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	const name = "revoking.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if checkStaple(t, e, name) == nil {
		t.Fatal("no staple")
	}
	cs, _ := e.handshake(name, nil)
	r.Revoke(cs.PeerCertificates[0].SerialNumber)
	ca.on.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.refreshStaple(context.Background(), m.tracked(name, ECDSAP256))
	}()
	waitFor(t, "the replacement to reach the CA", func() bool { return ca.held.Load() == 1 })
	cs, err := e.handshake(name, &tls.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("revoked, replacement pending at the CA: the old certificate served with a %d-byte staple", len(cs.OCSPResponse))
	if len(cs.OCSPResponse) != 0 {
		t.Error("a revoked certificate is served with its last good staple")
	}
	ca.release()
	<-done
}
