package acmetls

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// Item 4 of the certificates issue: the shortlived profile gives a
// certificate of about 6 days, whose renewal is scheduled at half its
// lifetime (the CA offers no renewal information here; where it does, its
// window decides); an unknown profile is refused before any order, naming
// the profiles the CA offers.
func TestProfiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{Profiles: map[string]time.Duration{"shortlived": 6 * 24 * time.Hour}, DisableARI: true})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.Profile = "shortlived" })
	const name = "short.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	tr := m.tracked(name, ECDSAP256)
	life := tr.notAfter.Sub(tr.notBefore)
	half := tr.notBefore.Add(life / 2)
	t.Logf("shortlived: a certificate of %v, renewal due %v after it starts", life.Round(time.Hour), tr.due.Sub(tr.notBefore).Round(time.Minute))
	if life < 6*24*time.Hour-time.Hour || life > 6*24*time.Hour+time.Hour {
		t.Errorf("lifetime %v, want about 6 days", life)
	}
	if tr.due.Before(half) || tr.due.After(half.Add(renewSpread)) {
		t.Errorf("renewal due %v after issuance, want at half the lifetime (%v), spread over at most %v", tr.due.Sub(tr.notBefore), life/2, renewSpread)
	}

	orders := len(e.ca.Orders())
	bad := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.Profile = "sixmonths" })
	err := bad.ManageSync(context.Background(), "unknown-profile.example.com")
	if !errors.Is(err, ErrUnknownProfile) || !strings.Contains(err.Error(), `"sixmonths"`) || !strings.Contains(err.Error(), "default, shortlived") {
		t.Errorf("an unknown profile: %v; want ErrUnknownProfile naming it and the offered ones", err)
	}
	if n := len(e.ca.Orders()); n != orders {
		t.Errorf("%d orders placed for an unknown profile", n-orders)
	}
}

// Item 6 of the certificates issue: a CA that requires external account
// binding refuses an account without one, with an error that says what to
// set, and issues with it.
func TestExternalAccountBinding(t *testing.T) {
	t.Parallel()
	mac := make([]byte, 32)
	rand.Read(mac)
	key := base64.RawURLEncoding.EncodeToString(mac)
	e := newEnv(t, acmetest.Options{EABKeys: map[string]string{"kid-1": key}})
	without := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	err := without.ManageSync(context.Background(), "eab.example.com")
	if !errors.Is(err, ErrExternalAccount) || !strings.Contains(err.Error(), "Manager.ExternalAccount") {
		t.Errorf("without a binding: %v; want ErrExternalAccount saying what to set", err)
	}
	wrong := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.Email = "wrong@example.com"
		m.ExternalAccount = &ExternalAccount{KeyID: "kid-1", MACKey: base64.RawURLEncoding.EncodeToString(make([]byte, 32))}
	})
	if err := wrong.ManageSync(context.Background(), "eab.example.com"); err == nil {
		t.Error("a binding with the wrong HMAC key was accepted")
	}
	if n := e.ca.Accounts(); n != 0 {
		t.Errorf("%d accounts registered without a valid binding", n)
	}
	with := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.Email = "bound@example.com"
		m.ExternalAccount = &ExternalAccount{KeyID: "kid-1", MACKey: key}
	})
	if err := with.ManageSync(context.Background(), "eab.example.com"); err != nil {
		t.Fatalf("with the binding: %v", err)
	}
	if _, err := e.handshake("eab.example.com", nil); err != nil {
		t.Error(err)
	}
}

// Item 8 of the certificates issue: with two alternate chains offered,
// PreferredChain picks the one under the named root, and a client that
// trusts that root alone verifies what is served; one that trusts only
// the default root does not.
func TestPreferredAlternateChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{AlternateRoots: 2})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.PreferredChain = e.ca.RootCommonName(2)
	})
	const name = "alternate.example.com"
	if err := m.ManageSync(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	dial := func(roots *x509.CertPool) error {
		conn, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{ServerName: name, RootCAs: roots})
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(e.ca.Root(2)); err != nil {
		t.Errorf("a client trusting the preferred root alone: %v", err)
	}
	if err := dial(e.ca.Root(0)); err == nil {
		t.Error("a client trusting the default root alone verified the alternate chain")
	}
}
