package acmetls

import (
	"context"
	"sync"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// Processes sharing storage place one order per name and key type, whoever
// asks first: the storage lock and the re-check under it.
func TestSharedStorageOrdersOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	const name = "shared.example.com"
	managers := []*Manager{e.manager(), e.manager(), e.manager()}
	var wg sync.WaitGroup
	errs := make([]error, len(managers))
	for i, m := range managers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.ManageSync(context.Background(), name)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("manager %d: %v", i, err)
		}
	}
	if n := e.ca.Accounts(); n != 1 {
		t.Errorf("the CA created %d accounts, want 1 for the storage", n)
	}
	for _, alg := range []string{"ECDSA", "RSA"} {
		if n := e.ca.FinalizationsFor(name, alg); n != 1 {
			t.Errorf("%s finalizations = %d, want 1", alg, n)
		}
	}
	// Every Manager serves the same certificate.
	var serial string
	for i, m := range managers {
		e.front.Store(m)
		cs, err := e.handshake(name, ecdsaTLS13Client)
		if err != nil {
			t.Fatal(err)
		}
		s := cs.PeerCertificates[0].SerialNumber.String()
		if i > 0 && s != serial {
			t.Errorf("manager %d serves serial %s, manager 0 serves %s", i, s, serial)
		}
		serial = s
	}
}

func TestPreferredChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{AlternateRoots: 1})
	alt := e.ca.RootCommonName(1)
	m := e.manager(func(m *Manager) {
		m.PreferredChain = alt
		m.KeyTypes = []KeyType{ECDSAP256}
	})
	if err := m.ManageSync(context.Background(), "chain.example.com"); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake("chain.example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	top := cs.PeerCertificates[len(cs.PeerCertificates)-1]
	if top.Issuer.CommonName != alt {
		t.Errorf("chain ends under %q, want the preferred %q", top.Issuer.CommonName, alt)
	}
	// Without a preference, the CA's default chain, under root 0.
	e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := e.front.Load().ManageSync(context.Background(), "default-chain.example.com"); err != nil {
		t.Fatal(err)
	}
	cs, err = e.handshake("default-chain.example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	top = cs.PeerCertificates[len(cs.PeerCertificates)-1]
	if def := e.ca.RootCommonName(0); top.Issuer.CommonName != def || def == alt {
		t.Errorf("default chain ends under %q, want %q (preferred was %q)", top.Issuer.CommonName, def, alt)
	}
}
