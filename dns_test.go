package acmetls

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"

	"github.com/acmetls/acmetls/internal/acmetest"
)

// strictProvider is a DNS host's API that honours contexts: a request
// with a context already ended is refused, as an HTTP API's would be.
type strictProvider struct {
	*acmetest.DNSProvider
	appended chan struct{} // receives once a record is added
}

func (p strictProvider) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, err := p.DNSProvider.AppendRecords(ctx, zone, recs)
	select {
	case p.appended <- struct{}{}:
	default:
	}
	return out, err
}

func (p strictProvider) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return p.DNSProvider.DeleteRecords(ctx, zone, recs)
}

func dnsSolver(ca *acmetest.CA, p certmagic.DNSProvider) *certmagic.DNS01Solver {
	return &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
		DNSProvider:        p,
		Resolvers:          []string{ca.DNSAddr()},
		PropagationTimeout: -1, // the stub answers at once
	}}
}

// Item 1 of the certificates issue: a wildcard certificate by dns-01 is
// served for one label below and refused for two; after a success, a
// failed validation and a cancelled order, no _acme-challenge record
// remains with the DNS host.
func TestWildcardByDNS01(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{NoAuthzReuse: true}) // every attempt presents a record
	p := strictProvider{DNSProvider: e.ca.DNSProvider(), appended: make(chan struct{})}
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.DNS01 = dnsSolver(e.ca, p)
	})
	ctx := context.Background()
	if err := m.ManageSync(ctx, "*.wild.example.com"); err != nil {
		t.Fatal(err)
	}
	cs, err := e.handshake("a.wild.example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cs.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "*.wild.example.com" {
		t.Errorf("a.wild.example.com got a certificate for %v", got)
	}
	if _, err := e.handshake("a.b.wild.example.com", nil); err == nil {
		t.Error("a.b.wild.example.com was served the wildcard of wild.example.com")
	}
	if _, err := e.handshake("wild.example.com", nil); err == nil {
		t.Error("wild.example.com itself was served the wildcard")
	}
	if left := e.ca.StoredTXT(); len(left) != 0 {
		t.Errorf("after a success, TXT records left: %v", left)
	}
	// Another process on the storage, told nothing, serves the stored
	// wildcard, for one label below only.
	told := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	told.init()
	told.listNames(ctx) // as the first miss starts it
	if cs, err := e.handshake("b.wild.example.com", nil); err != nil || cs.PeerCertificates[0].DNSNames[0] != "*.wild.example.com" {
		t.Errorf("a process told nothing, for b.wild.example.com: %v", err)
	}
	if _, err := e.handshake("b.c.wild.example.com", nil); err == nil {
		t.Error("a process told nothing served b.c.wild.example.com")
	}

	// A validation that fails: the DNS host has not published the record.
	e.ca.HideTXT(true)
	err = m.ManageSync(ctx, "*.failing.example.com")
	e.ca.HideTXT(false)
	if err == nil {
		t.Error("a validation whose record the CA could not see succeeded")
	}
	if left := e.ca.StoredTXT(); len(left) != 0 {
		t.Errorf("after a failed validation, TXT records left: %v", left)
	}

	// A renewal stopped by Run's end once its record is added.
	clock := newFakeClock(time.Now())
	// Obtained under the first account, renewed under another, which has
	// no valid authorization to reuse: the renewal presents a record.
	// (Pebble reuses one now and then even when told not to.)
	if err := m.ManageSync(ctx, "*.renewing.example.com"); err != nil {
		t.Fatal(err)
	}
	m2 := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.DNS01 = dnsSolver(e.ca, p)
		m.clock = clock
		m.Email = "renewer@example.com"
	})
	if err := m2.ManageSync(ctx, "*.renewing.example.com"); err != nil {
		t.Fatal(err)
	}
	e.ca.HideTXT(true) // the validation cannot succeed before the end
	defer e.ca.HideTXT(false)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m2.Run(runCtx) }()
	clock.setFor(m2, clock.Now().Add(80*24*time.Hour))
	select {
	case <-p.appended:
	case <-time.After(30 * time.Second):
		t.Fatal("the renewal never added its record")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left := e.ca.StoredTXT(); len(left) != 0 {
		t.Errorf("after a renewal stopped by Run's end, TXT records left: %v", left)
	}
}

// A wildcard without a dns-01 solver is refused before any order, saying
// what to set.
func TestWildcardNeedsDNS01(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	m := e.manager()
	err := m.ManageSync(context.Background(), "*.nodns.example.com")
	var nameErr *NameError
	if err == nil || errors.As(err, &nameErr) || len(e.ca.Orders()) != 0 {
		t.Errorf("a wildcard without DNS01: %v, %d orders", err, len(e.ca.Orders()))
	}
	for _, bad := range []string{"*.com", "*.*.example.com", "a.*.example.com"} {
		if err := m.ManageSync(context.Background(), bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
