package acmetls

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/postgres"
)

// Item 3 of the fleet issue, on PostgreSQL: a certificate one process
// renews is served by another within a second, told by LISTEN/NOTIFY,
// long before it would read storage for it (its renewal is weeks away).
func TestPickupOnPostgres(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	url := pgtest.DB(t)
	open := func() storage.Storage {
		st, err := postgres.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		return st
	}
	const name = "pickup.example.com"
	renewer := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.Storage = open() })
	server := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.Storage = open() })
	ctx := context.Background()
	if err := renewer.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	first, err := e.handshake(name, nil) // served by server, from storage
	if err != nil {
		t.Fatal(err)
	}
	runManager(t, server)
	time.Sleep(100 * time.Millisecond) // its LISTEN is on
	if err := renewer.RetryNow(ctx, name); err != nil {
		t.Fatal(err)
	}
	stored := time.Now()
	var took time.Duration
	for {
		cs, err := e.handshake(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !cs.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
			took = time.Since(stored)
			break
		}
		if time.Since(stored) > 10*time.Second {
			t.Fatal("the renewed certificate was not served within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("a renewal stored by one process served by another %v after it was stored", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("pickup took %v, over the bound of a second", took)
	}
}

// certOfKey reads the name and key type of certificate and staple keys
// only, and only for names in normal form.
func TestCertOfKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		name string
		kt   KeyType
		ok   bool
	}{
		{storage.CertKey("a.example.com", string(ECDSAP256)), "a.example.com", ECDSAP256, true},
		{storage.StapleKey("a.example.com", string(RSA2048)), "a.example.com", RSA2048, true},
		{storage.StateKey("a.example.com", string(RSA2048)), "", "", false},
		{storage.CertKey("*.example.com", string(ECDSAP256)), "", "", false},
		{storage.CertsDir + "/A.example.com/ecdsa-p256.json", "", "", false},
		{storage.CertsDir + "/a.example.com/ed25519.json", "", "", false},
		{storage.CertsDir + "/a.example.com", "", "", false},
		{storage.TicketKeysKey, "", "", false},
	} {
		name, kt, ok := certOfKey(tc.key)
		if name != tc.name || kt != tc.kt || ok != tc.ok {
			t.Errorf("certOfKey(%q) = %q, %q, %v; want %q, %q, %v", tc.key, name, kt, ok, tc.name, tc.kt, tc.ok)
		}
	}
}

// Item 3 of the fleet issue, on file storage, which tells of no writes:
// a certificate one process renews is served by another within one poll
// of the journal, weeks before it would read storage for it, and each
// poll lists one small directory.
func TestPickupOnFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	clock := newFakeClock(time.Now())
	reads := &countingStore{Storage: e.storage}
	const name = "pickup-files.example.com"
	renewer := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.clock = clock })
	server := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256}; m.clock = clock; m.Storage = reads })
	ctx := context.Background()
	if err := renewer.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	first, err := e.handshake(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	runManager(t, server)
	waitFor(t, "the first listing of the journal", func() bool { return reads.lists.Load() >= 1 })
	if err := renewer.RetryNow(ctx, name); err != nil {
		t.Fatal(err)
	}
	listsBefore, loadsBefore := reads.lists.Load(), reads.loads.Load()
	clock.Add(changesPoll)
	waitFor(t, "the renewed certificate served", func() bool {
		cs, err := e.handshake(name, nil)
		return err == nil && !cs.PeerCertificates[0].Equal(first.PeerCertificates[0])
	})
	t.Logf("picked up after one poll (%v less up to a fifth): %d listing, %d loads (the journal record and the certificate)",
		changesPoll, reads.lists.Load()-listsBefore, reads.loads.Load()-loadsBefore)
}

// countingStore counts Lists and Loads through it.
type countingStore struct {
	storage.Storage
	lists, loads atomic.Int32
}

func (s *countingStore) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	s.lists.Add(1)
	return s.Storage.List(ctx, prefix, recursive)
}

func (s *countingStore) Load(ctx context.Context, key string) ([]byte, error) {
	s.loads.Add(1)
	return s.Storage.Load(ctx, key)
}
