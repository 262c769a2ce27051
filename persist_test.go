package acmetls

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libdns/libdns"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// Item 2 of the certificates issue: with the records the Manager printed
// set once by the customer, three issuances and a renewal (a wildcard
// included) succeed and the library writes nothing to DNS; a missing or
// wrong record is refused before any order, with the reason; a record
// whose persistUntil approaches is reported.
func TestDNSPersist(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{NoAuthzReuse: true})
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.DNSPersist = &DNSPersist{IssuerDomain: "pebble.letsencrypt.org", Resolvers: []string{e.ca.DNSAddr()}}
		m.clock = clock
		m.OnEvent = evs.add
	})
	ctx := context.Background()
	customer := e.ca.DNSProvider()
	set := func(name, value string) {
		t.Helper()
		if _, err := customer.AppendRecords(ctx, name+".", []libdns.Record{libdns.RR{Type: "TXT", Name: "@", Data: value}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"*.persist.example.com", "www.persist.example.com"} {
		record, value, err := m.PersistRecord(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("for %s the customer sets: %s TXT %q", name, record, value)
		set(record, value)
	}
	writes := e.ca.DNSWrites()
	for _, name := range []string{"*.persist.example.com", "persist.example.com", "www.persist.example.com"} {
		if err := m.ManageSync(ctx, name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := e.handshake("a.persist.example.com", nil); err != nil {
		t.Errorf("the wildcard: %v", err)
	}
	if err := m.RetryNow(ctx, "*.persist.example.com"); err != nil {
		t.Fatalf("renewing the wildcard: %v", err)
	}
	if n := len(evs.of(EventRenewed)); n != 1 {
		t.Errorf("%d renewals, want 1", n)
	}
	if n := e.ca.DNSWrites() - writes; n != 0 {
		t.Errorf("the library wrote %d DNS records", n)
	}

	orders := len(e.ca.Orders())
	err := m.ManageSync(ctx, "missing.example.com")
	if !errors.Is(err, ErrPersistRecord) || !strings.Contains(err.Error(), "_validation-persist.missing.example.com") || !strings.Contains(err.Error(), "no TXT record") {
		t.Errorf("no record: %v", err)
	}
	set("_validation-persist.wrong.example.com", "pebble.letsencrypt.org; accounturi=https://ca.example/acct/1")
	if err := m.ManageSync(ctx, "wrong.example.com"); !errors.Is(err, ErrPersistRecord) || !strings.Contains(err.Error(), "not this Manager's") {
		t.Errorf("a record for another account: %v", err)
	}
	_, value, _ := m.PersistRecord(ctx, "plain.example.com")
	set("_validation-persist.nowild.example.com", value) // no policy=wildcard
	if err := m.ManageSync(ctx, "*.nowild.example.com"); !errors.Is(err, ErrPersistRecord) || !strings.Contains(err.Error(), "policy=wildcard") {
		t.Errorf("a wildcard whose record lacks the policy: %v", err)
	}
	if n := len(e.ca.Orders()); n != orders {
		t.Errorf("%d orders placed for names whose records are missing or wrong", n-orders)
	}

	soon := clock.Now().Add(10 * 24 * time.Hour)
	set("_validation-persist.soon.example.com", value+"; persistUntil="+strconv.FormatInt(soon.Unix(), 10))
	if err := m.ManageSync(ctx, "soon.example.com"); err != nil {
		t.Fatal(err)
	}
	if got := evs.of(EventPersistExpiring); len(got) != 1 || got[0].ServerName != "soon.example.com" || !got[0].NextAttempt.Equal(time.Unix(soon.Unix(), 0)) {
		t.Errorf("events for a record expiring in 10 days: %v", got)
	}
}
