package acmetls

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// ocspEnv is an env whose CA names a responder in its certificates.
func ocspEnv(t *testing.T, validity time.Duration) (*env, *acmetest.Responder) {
	t.Helper()
	r := acmetest.NewResponder(validity)
	t.Cleanup(r.Close)
	e := newEnv(t, acmetest.Options{OCSPResponderURL: r.URL})
	r.Attach(e.ca)
	return e, r
}

// checkStaple verifies the staple a handshake got against the chain.
func checkStaple(t *testing.T, e *env, name string) *xocsp.Response {
	t.Helper()
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.OCSPResponse) == 0 {
		return nil
	}
	var issuer *x509.Certificate
	if len(cs.PeerCertificates) > 1 {
		issuer = cs.PeerCertificates[1]
	}
	r, err := xocsp.ParseResponseForCert(cs.OCSPResponse, cs.PeerCertificates[0], issuer)
	if err != nil {
		t.Fatalf("the staple does not verify: %v", err)
	}
	if r.Status != xocsp.Good {
		t.Fatalf("stapled status %d", r.Status)
	}
	return r
}

// A real handshake gets a verified staple; a restarted Manager on the same
// storage staples without asking the responder.
func TestStapleAndRestart(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, 24*time.Hour)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := m.ManageSync(context.Background(), "staple.example.com"); err != nil {
		t.Fatal(err)
	}
	if checkStaple(t, e, "staple.example.com") == nil {
		t.Fatal("no staple")
	}
	asked := resp.Requests()
	if asked == 0 {
		t.Fatal("the responder was never asked")
	}
	e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if checkStaple(t, e, "staple.example.com") == nil {
		t.Fatal("no staple after the restart")
	}
	if n := resp.Requests(); n != asked {
		t.Errorf("the restarted Manager asked the responder %d times", n-asked)
	}
}

// Bad answers are never stapled.
func TestBadResponsesAreNotStapled(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{acmetest.OCSPDown, acmetest.OCSPOtherSerial, acmetest.OCSPWrongKey, acmetest.OCSPExpired} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e, resp := ocspEnv(t, 24*time.Hour)
			resp.Set(mode)
			m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
			if err := m.ManageSync(context.Background(), "bad.example.com"); err != nil {
				t.Fatal(err)
			}
			if resp.Requests() == 0 {
				t.Fatal("the responder was never asked")
			}
			if r := checkStaple(t, e, "bad.example.com"); r != nil {
				t.Fatalf("stapled a %s response", mode)
			}
		})
	}
}

// While the responder fails, the last valid staple is served until just
// before its nextUpdate, and none after: Run drops it on time.
func TestStapleKeptUntilNextUpdate(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, time.Hour)
	clock := newFakeClock(time.Now())
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.clock = clock })
	if err := m.ManageSync(context.Background(), "keep.example.com"); err != nil {
		t.Fatal(err)
	}
	first := checkStaple(t, e, "keep.example.com")
	if first == nil {
		t.Fatal("no staple")
	}
	tr := m.tracked("keep.example.com", ECDSAP256)
	for _, mode := range []string{acmetest.OCSPDown, acmetest.OCSPWrongKey, acmetest.OCSPOtherSerial, acmetest.OCSPOtherIssuer} {
		resp.Set(mode)
		clock.Set(first.NextUpdate.Add(-2 * time.Minute))
		m.refreshStaple(context.Background(), tr)
		if got := checkStaple(t, e, "keep.example.com"); got == nil || !got.NextUpdate.Equal(first.NextUpdate) {
			t.Fatalf("%s before nextUpdate: the last valid staple is gone", mode)
		}
	}
	runManager(t, m)
	clock.setFor(m, first.NextUpdate.Add(-time.Minute))
	waitFor(t, "the expiring staple to be dropped", func() bool { return checkStaple(t, e, "keep.example.com") == nil })
}

// A revoked certificate is replaced at once, and the next handshake gets
// the new one.
func TestRevokedCertificateIsReplaced(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, 24*time.Hour)
	var evs events
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.OnEvent = evs.add })
	const name = "revoked.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := cs.PeerCertificates[0].SerialNumber
	resp.Revoke(old)
	m.refreshStaple(context.Background(), m.tracked(name, ECDSAP256))
	if len(evs.of(EventRevoked)) != 1 || len(evs.of(EventRenewed)) != 1 {
		t.Fatalf("events: revoked %d, renewed %d", len(evs.of(EventRevoked)), len(evs.of(EventRenewed)))
	}
	if n := e.ca.FinalizationsFor(name, "ECDSA"); n != 2 {
		t.Errorf("finalizations = %d, want 2", n)
	}
	cs, err = e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PeerCertificates[0].SerialNumber.Cmp(old) == 0 {
		t.Error("the revoked certificate is still served")
	}
}

// Certificates without a responder cost no request and no staple.
func TestNoResponderNoRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := m.ManageSync(context.Background(), "plain.example.com"); err != nil {
		t.Fatal(err)
	}
	if tr := m.tracked("plain.example.com", ECDSAP256); !tr.stapleNext.IsZero() {
		t.Error("a staple refresh is scheduled for a certificate without a responder")
	}
	if checkStaple(t, e, "plain.example.com") != nil {
		t.Error("a staple without a responder")
	}
}

// Run refreshes a staple at the middle of its validity.
func TestRunRefreshesStaples(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, 20*time.Second)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := m.ManageSync(context.Background(), "fresh.example.com"); err != nil {
		t.Fatal(err)
	}
	first := checkStaple(t, e, "fresh.example.com")
	if first == nil {
		t.Fatal("no staple")
	}
	runManager(t, m)
	waitFor(t, "a refreshed staple", func() bool {
		r := checkStaple(t, e, "fresh.example.com")
		return r != nil && r.ThisUpdate.After(first.ThisUpdate)
	})
	if resp.Requests() < 2 {
		t.Errorf("responder asked %d times", resp.Requests())
	}
}

// MustStaple puts the TLS feature extension asking for status_request in
// the certificate request, and the CA's certificate carries it.
func TestMustStaple(t *testing.T) {
	t.Parallel()
	key, err := generateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []bool{false, true} {
		csr, err := newCSR(key, []string{"must.example.com"}, want)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, ext := range csr.Extensions {
			if ext.Id.Equal(oidTLSFeature) && string(ext.Value) == string(mustStaple) {
				found = true
			}
		}
		if found != want {
			t.Errorf("MustStaple %v: extension present = %v", want, found)
		}
	}
	e, _ := ocspEnv(t, 24*time.Hour)
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.MustStaple = true })
	if err := m.ManageSync(context.Background(), "must.example.com"); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake("must.example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.OCSPResponse) == 0 {
		t.Error("a Must-Staple certificate served without a staple")
	}
	var inCert bool
	for _, ext := range cs.PeerCertificates[0].Extensions {
		inCert = inCert || ext.Id.Equal(oidTLSFeature)
	}
	if !inCert {
		t.Error("the certificate lacks the TLS feature extension")
	}
}

// A responder that hangs never delays a handshake: a certificate loaded
// from storage without a stored staple is served at once, and its staple
// follows in the background, without Run.
func TestHangingResponderDoesNotDelayHandshakes(t *testing.T) {
	t.Parallel()
	e, resp := ocspEnv(t, 24*time.Hour)
	only := func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} }
	resp.Set(acmetest.OCSPDown) // stored: the certificate, no staple
	if err := e.manager(only).ManageSync(context.Background(), "hang.example.com"); err != nil {
		t.Fatal(err)
	}
	resp.Set(acmetest.OCSPGood)
	resp.Hold()
	asked := resp.Requests()
	e.manager(only) // a restart: the certificate is in storage only
	if checkStaple(t, e, "hang.example.com") != nil {
		t.Fatal("stapled while the responder hangs")
	}
	waitFor(t, "the background staple request", func() bool { return resp.Requests() > asked })
	resp.Release()
	waitFor(t, "the staple", func() bool {
		cs, err := e.handshake("hang.example.com", nil)
		return err == nil && len(cs.OCSPResponse) > 0
	})
	if checkStaple(t, e, "hang.example.com") == nil {
		t.Fatal("no verified staple")
	}
}
