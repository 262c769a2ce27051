package acmetls

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// Item 3 of the certificates issue: a group at the limit is one order, one
// certificate served for every name in it, and renewed as a group; one
// name more is refused before any order, naming the limit.
func TestManageGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	// A cache smaller than the group: most grouped names are evicted.
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.CacheCapacity = 10 })
	ctx := context.Background()
	names := make([]string, MaxNamesPerCertificate+1)
	for i := range names {
		names[i] = fmt.Sprintf("g%d.example.com", i)
	}
	err := m.ManageGroup(ctx, names...)
	if err == nil || !strings.Contains(err.Error(), "at most 100") || len(e.ca.Orders()) != 0 {
		t.Fatalf("a group over the limit: %v, %d orders; want a refusal naming the limit, no order", err, len(e.ca.Orders()))
	}
	group := names[:MaxNamesPerCertificate]
	if err := m.ManageGroup(ctx, group...); err != nil {
		t.Fatal(err)
	}
	if orders := e.ca.Orders(); len(orders) != 1 || len(orders[0].Names) != MaxNamesPerCertificate {
		t.Fatalf("orders: %d, want one of %d names", len(orders), MaxNamesPerCertificate)
	}
	first, err := e.handshake(group[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	last, err := e.handshake(group[len(group)-1], nil)
	if err != nil {
		t.Fatal(err)
	}
	if !first.PeerCertificates[0].Equal(last.PeerCertificates[0]) || len(last.PeerCertificates[0].DNSNames) != MaxNamesPerCertificate {
		t.Error("the group's first and last names got different certificates")
	}
	// Evicted, a grouped name is served its group's certificate, never
	// ordered alone.
	if cs, err := e.handshake(group[50], nil); err != nil || !cs.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
		t.Errorf("a grouped name out of the cache: %v", err)
	}
	if n := len(e.ca.Orders()); n != 1 {
		t.Errorf("%d orders after handshakes for evicted grouped names, want 1", n)
	}
	if err := m.RetryNow(ctx, group[0]); err != nil {
		t.Fatal(err)
	}
	orders := e.ca.Orders()
	if len(orders) != 2 || len(orders[1].Names) != MaxNamesPerCertificate || orders[1].Replaces == "" {
		t.Errorf("the renewal: %d orders, the last of %d names; want a second one of %d, replacing", len(orders), len(orders[len(orders)-1].Names), MaxNamesPerCertificate)
	}
	renewed, err := e.handshake(group[99], nil)
	if err != nil || renewed.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
		t.Errorf("a grouped name after the renewal: %v", err)
	}
}
