package acmetls

import (
	"context"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// A certificate another account ordered is renewed: the CA refuses the
// renewal's "replaces" (as Let's Encrypt does), and the order is placed
// again without it, instead of failing every renewal until expiry.
func TestRenewalOfAnotherAccountsCertificate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	ctx := context.Background()
	const name = "other-account.example.com"
	first := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	if err := first.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	var evs events
	second := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.Email = "second@example.com" // another account, on the same storage
		m.OnEvent = evs.add
	})
	if err := second.ManageSync(ctx, name); err != nil { // from storage
		t.Fatal(err)
	}
	if err := second.RetryNow(ctx, name); err != nil {
		t.Fatalf("renewal under another account: %v", err)
	}
	// The CA counts the orders it accepted: the one with replaces was
	// refused.
	orders := e.ca.Orders()
	if len(evs.of(EventRenewed)) != 1 || len(orders) != 2 || orders[1].Replaces != "" {
		t.Errorf("renewed %d times; orders accepted %+v; want the first and a renewal without replaces", len(evs.of(EventRenewed)), orders)
	}
}
