package acmetls

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/postgres"
)

// Processes sharing storage place one order per name and key type, whoever
// asks first: the storage lock and the re-check under it. The frontends
// share a directory, or a PostgreSQL database through a connection pool
// each, as processes would.
func TestSharedStorageOrdersOnce(t *testing.T) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, acmetest.Options{})
		testOrdersOnce(t, e, func() storage.Storage { return e.storage })
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, acmetest.Options{})
		url := pgtest.DB(t)
		testOrdersOnce(t, e, func() storage.Storage {
			st, err := postgres.Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(st.Close)
			return st
		})
	})
}

// testOrdersOnce runs three frontends on storages from open at once, then
// a fourth that starts after them.
func testOrdersOnce(t *testing.T, e *env, open func() storage.Storage) {
	const name = "shared.example.com"
	var managers []*Manager
	for range 3 {
		st := open()
		managers = append(managers, e.manager(func(m *Manager) { m.Storage = st }))
	}
	// The CA's validation requests reach the last frontend only: the
	// others' orders are answered through storage.
	var wg sync.WaitGroup
	errs := make([]error, len(managers))
	for i, m := range managers {
		wg.Go(func() { errs[i] = m.ManageSync(context.Background(), name) })
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
	// A frontend started later serves from storage, ordering nothing.
	st := open()
	managers = append(managers, e.manager(func(m *Manager) {
		m.Storage = st
		m.OnDemand = &OnDemand{Names: []string{name}}
	}))
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
	if n := len(e.ca.Orders()); n != 2 {
		t.Errorf("the CA received %d orders, want 2 (one per key type)", n)
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

// Managing many new names at once keeps a bounded number of orders open
// at the CA.
func TestOrdersInFlightAreBounded(t *testing.T) {
	t.Parallel()
	var e *env
	var peak atomic.Int32
	// At each finalize request, the orders the CA accepted and has not
	// finalized yet are open, this one included. (Counting order requests
	// instead would count the retries of refused nonces too.)
	e = newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/finalize-order/") {
			n := int32(len(e.ca.Orders()) - len(e.ca.Finalizations()))
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
		}
		return false
	}})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	names := make([]string, 3*maxConcurrentOrders)
	for i := range names {
		names[i] = fmt.Sprintf("bulk%d.example.com", i)
	}
	if err := m.ManageSync(context.Background(), names...); err != nil {
		t.Fatal(err)
	}
	if n := len(e.ca.Finalizations()); n != len(names) {
		t.Fatalf("finalizations = %d, want %d", n, len(names))
	}
	t.Logf("peak orders in flight: %d", peak.Load())
	if p := peak.Load(); p > maxConcurrentOrders || p < 2 {
		t.Errorf("peak orders in flight = %d, want 2..%d", p, maxConcurrentOrders)
	}
}
