package acmetls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/postgres"
)

// The fault suite, part one: storage that fails, is read-only, is slow to
// give connections, or loses a lock. Each test prints its figures.

// writeFailingStorage refuses writes (Store and Delete) of keys under
// prefixes while fail holds, on top of a real storage.
type writeFailingStorage struct {
	storage.Storage
	prefixes []string
	fail     atomic.Bool
}

func (s *writeFailingStorage) refuses(key string) bool {
	if !s.fail.Load() {
		return false
	}
	for _, p := range s.prefixes {
		if strings.HasPrefix(key, p+"/") {
			return true
		}
	}
	return false
}

func (s *writeFailingStorage) Store(ctx context.Context, key string, v []byte) error {
	if s.refuses(key) {
		return fmt.Errorf("storing %s: %w", key, errStorageDown)
	}
	return s.Storage.Store(ctx, key, v)
}

func (s *writeFailingStorage) Delete(ctx context.Context, key string) error {
	if s.refuses(key) {
		return fmt.Errorf("deleting %s: %w", key, errStorageDown)
	}
	return s.Storage.Delete(ctx, key)
}

// Item 1: PostgreSQL gone read-only (a failover to a standby). Storage
// that cannot take a challenge answer is no name's failure: the first
// order finds it, the breaker holds every name back for a minute, then ten,
// and names are not charged for it. Orders: one per breaker step, however
// many names and handshakes.
func TestReadOnlyPostgresOrdersOncePerBackoffStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	url := pgtest.DB(t)
	ctx := context.Background()
	rw, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	// Before the failover: the table and the account are there.
	if err := e.manager(func(m *Manager) { m.Storage = rw; m.KeyTypes = []KeyType{ECDSAP256} }).ManageSync(ctx, "before.example.com"); err != nil {
		t.Fatal(err)
	}
	ro, err := postgres.Open(ctx, url+" options='-c default_transaction_read_only=on'")
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Store(ctx, "probe", []byte("x")); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("the read-only database took a write: %v", err)
	}
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.Storage = ro
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.OnEvent = evs.add
		m.clock = clock
	})
	before := len(e.ca.Orders())
	burst := func() int {
		for i := range 20 {
			for _, name := range []string{"readonly.example.com", fmt.Sprintf("other%d.example.com", i)} {
				if _, err := e.handshake(name, nil); err == nil {
					t.Fatal("a handshake succeeded on read-only storage")
				}
			}
		}
		return len(e.ca.Orders()) - before
	}
	first := burst()
	clock.Add(time.Minute + time.Second) // the breaker's first wait
	second := burst()
	clock.Add(2 * time.Minute) // within its second wait, ten minutes
	third := burst()
	var attempts []int
	for _, ev := range evs.of(EventObtainFailed) {
		attempts = append(attempts, ev.Attempt)
	}
	st, _ := m.loadState(ctx, "readonly.example.com", ECDSAP256)
	t.Logf("read-only PostgreSQL: 40 handshakes for 21 names -> %d order(s); a minute later, 40 more -> %d in all; 2 minutes on, 40 more -> %d; failures reported as attempts %v; the name's own failures: %d",
		first, second, third, attempts, st.Failures)
	if first > 1 || second > 2 || third != second {
		t.Errorf("orders: %d, %d, %d in all; want at most one per breaker step", first, second, third)
	}
	for _, a := range attempts {
		if a != 0 {
			t.Errorf("a storage failure was counted against a name: attempts %v", attempts)
			break
		}
	}
}

// A lock storage refuses (permissions, a database gone) is reported, holds
// every name back for a while, and leaves names uncharged.
func TestStorageThatCannotLockIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	st := &lockFailingStorage{Storage: e.storage}
	st.fail.Store(true)
	clock := newFakeClock(time.Now())
	var evs events
	e.manager(func(m *Manager) {
		m.Storage = st
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.OnEvent = evs.add
		m.clock = clock
	})
	for i := range 20 {
		if _, err := e.handshake(fmt.Sprintf("lock%d.example.com", i), nil); err == nil {
			t.Fatal("served without a lock")
		}
	}
	locks := st.tries.Load()
	fails := evs.of(EventObtainFailed)
	st.fail.Store(false)
	clock.Add(time.Minute + time.Second)
	if _, err := e.handshake("lock3.example.com", nil); err != nil {
		t.Fatalf("after storage recovered: %v", err)
	}
	t.Logf("storage refusing locks: 20 new names -> %d lock attempt(s), %d event(s) %v; a minute after it recovered, served at once", locks, len(fails), fails)
	if len(fails) != 1 || fails[0].Attempt != 0 || locks != 1 {
		t.Errorf("%d lock attempts, events %v; want one of each, attempt 0", locks, fails)
	}
}

// lockFailingStorage refuses locks while fail holds, and counts tries.
type lockFailingStorage struct {
	storage.Storage
	fail  atomic.Bool
	tries atomic.Int32
}

func (s *lockFailingStorage) Lock(ctx context.Context, name string) error {
	s.tries.Add(1)
	if s.fail.Load() {
		return fmt.Errorf("open %s: operation not permitted", name)
	}
	return s.Storage.Lock(ctx, name)
}

// Item 1: certificate and state writes failing. A certificate the CA
// issued is served from memory, never ordered twice, and written once
// storage takes writes again; a backoff that cannot be written still
// holds, and its failures count.
func TestUnwritableCertificatesAreServedFromMemory(t *testing.T) {
	t.Parallel()
	var refusing atomic.Bool
	e := newEnv(t, acmetest.Options{Intercept: refuseOrders(&refusing, "1")})
	st := &writeFailingStorage{Storage: e.storage, prefixes: []string{storage.CertsDir, storage.StatesDir}}
	st.fail.Store(true)
	const name = "unwritable.example.com"
	clock := newFakeClock(time.Now())
	var evs events
	m := e.manager(func(m *Manager) {
		m.Storage = st
		m.OnDemand = &OnDemand{Names: []string{name}}
		m.OnEvent = evs.add
		m.clock = clock
	})
	ctx := context.Background()
	var serial string
	for i := range 10 {
		cs, err := e.handshake(name, nil)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		s := cs.PeerCertificates[0].SerialNumber.String()
		if i > 0 && s != serial {
			t.Fatalf("handshake %d got serial %s, the first %s", i, s, serial)
		}
		serial = s
	}
	for range 5 {
		if err := m.ManageSync(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	ecdsa, rsa := e.ca.FinalizationsFor(name, "ECDSA"), e.ca.FinalizationsFor(name, "RSA")
	t.Logf("cert and state writes failing: 10 handshakes and 5 ManageSync -> %d ECDSA and %d RSA certificate(s) issued", ecdsa, rsa)
	if ecdsa != 1 || rsa != 1 {
		t.Errorf("certificates issued: %d ECDSA, %d RSA; want one each", ecdsa, rsa)
	}
	// Storage takes writes again: Run writes what it refused.
	st.fail.Store(false)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	waitFor(t, "the record to be written", func() bool { return m.unsaved.len() == 0 })
	cancel()
	<-done
	c, _, err := m.readStored(ctx, name, ECDSAP256)
	if err != nil || c == nil || c.Leaf.SerialNumber.String() != serial {
		t.Fatalf("stored after recovery: %v, %v; want serial %s", c, err, serial)
	}

	// A failing CA with state writes failing: the backoff holds in
	// memory and its failures count.
	const failing = "failing.example.com"
	st.fail.Store(true)
	refusing.Store(true)
	for range 5 {
		_ = m.ManageSync(ctx, failing) // one attempt, then backing off
	}
	for step := range 3 {
		clock.Add(renew.Backoff(step+1) + time.Second)
		_ = m.ManageSync(ctx, failing)
	}
	var attempts []int
	for _, ev := range evs.of(EventObtainFailed) {
		if ev.ServerName == failing && ev.KeyType == ECDSAP256 {
			attempts = append(attempts, ev.Attempt)
		}
	}
	t.Logf("a failing CA with state writes failing: 5 ManageSync, then one after each of 3 backoff steps -> ECDSA failures reported as attempts %v", attempts)
	if fmt.Sprint(attempts) != "[1 2 3 4]" {
		t.Errorf("ECDSA failures reported as attempts %v, want [1 2 3 4]", attempts)
	}
}

// Item 2: while the CA hangs, new names wait for an order slot before
// they take a storage lock: the database connections stay within the
// documented bound (the pool's and one per order slot), not one per name.
func TestHangingCABoundsDatabaseConnections(t *testing.T) {
	t.Parallel()
	e, ca := newHangingEnv(t, acmetest.Options{}, true)
	url := pgtest.DB(t)
	ctx := context.Background()
	st, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e.manager(func(m *Manager) {
		m.Storage = st
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
	})
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() { _, _ = e.handshake(fmt.Sprintf("new%d.example.com", i), nil) })
	}
	waitFor(t, "every order slot to hang at the CA", func() bool { return ca.held.Load() == maxConcurrentOrders })
	time.Sleep(200 * time.Millisecond) // time for names beyond the slots to take what they would
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var conns, locks int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&conns); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&locks); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	bound := int(cfg.MaxConns) + maxConcurrentOrders
	t.Logf("60 new names, the CA hanging: %d orders in flight, %d advisory locks, %d PostgreSQL connections (bound: pool %d + order slots %d = %d)",
		ca.held.Load(), locks, conns, cfg.MaxConns, maxConcurrentOrders, bound)
	if conns > bound || locks > maxConcurrentOrders {
		t.Errorf("%d connections and %d locks, bound %d and %d", conns, locks, bound, maxConcurrentOrders)
	}
	ca.release()
	wg.Wait()
}

// Item 3: refusals cost nothing. Once the listing of stored names is in,
// a name that is neither managed, nor allowed, nor stored reads no
// storage, and a flood of distinct such names leaves the heap flat; before
// the listing, a refusal reads storage once and is remembered.
//
// Not parallel: the heap it measures is the process's.
func TestRefusalsReadNoStorage(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		testRefusals(t, &storage.Memory{}, 100_000)
	})
	t.Run("postgres", func(t *testing.T) {
		st, err := postgres.Open(context.Background(), pgtest.DB(t))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		testRefusals(t, st, 10_000)
	})
}

func testRefusals(t *testing.T, backend storage.Storage, flood int) {
	ctx := context.Background()
	stored := make([]string, 50)
	for i := range stored {
		stored[i] = fmt.Sprintf("stored%d.example.com", i)
		chain, key := selfSignedPEM(t, ECDSAP256, stored[i])
		rec := storage.CertRecord{Names: []string{stored[i]}, KeyType: string(ECDSAP256), KeyPEM: key, ChainPEM: chain}
		b, _ := rec.Marshal()
		if err := backend.Store(ctx, storage.CertKey(stored[i], string(ECDSAP256)), b); err != nil {
			t.Fatal(err)
		}
	}
	st := &countingStorage{Storage: backend}
	m := &Manager{Storage: st, KeyTypes: []KeyType{ECDSAP256}}
	hello := &tls.ClientHelloInfo{SupportedVersions: []uint16{tls.VersionTLS13}}
	refuse := func(name string) {
		hello.ServerName = name
		if _, err := m.GetCertificate(hello); !errors.Is(err, ErrNotManaged) {
			t.Fatalf("%s: %v, want ErrNotManaged", name, err)
		}
	}
	// Before the listing is in: one read, then remembered.
	for range 1000 {
		refuse("unknown.example.com")
	}
	coldReads := st.loads.Load()
	waitFor(t, "the listing of stored names", func() bool {
		_, known := m.names.mayHold("x.example.com")
		return known
	})
	reads := st.loads.Load()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range flood {
		refuse(fmt.Sprintf("r%d.example.net", i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	floodReads := st.loads.Load() - reads
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// A stored name is still served, from storage.
	hello.ServerName = stored[7]
	if _, err := m.GetCertificate(hello); err != nil {
		t.Fatalf("a stored name: %v", err)
	}
	t.Logf("OnDemand nil: 1,000 handshakes for one unknown name before the listing -> %d storage read(s); %d distinct unknown names after it -> %d reads, heap %+d bytes",
		coldReads, flood, floodReads, growth)
	if coldReads > 1 || floodReads != 0 {
		t.Errorf("storage reads: %d for one name, %d for the flood; want at most 1 and 0", coldReads, floodReads)
	}
	// What the Manager keeps per refused name: nothing.
	m.denied.mu.Lock()
	remembered := len(m.denied.byKey)
	m.denied.mu.Unlock()
	if remembered > 1 || m.cache.len() > 1 || growth > 2<<20 {
		t.Errorf("after the flood: %d denials remembered, %d names cached, heap %+d bytes", remembered, m.cache.len(), growth)
	}

	// A policy is asked before storage for names only it could allow.
	var decisions atomic.Int32
	m2 := &Manager{Storage: st, KeyTypes: []KeyType{ECDSAP256}, OnDemand: &OnDemand{Decision: func(context.Context, string) error {
		decisions.Add(1)
		return errors.New("not a customer")
	}}}
	m2.names = storedNames{}
	hello.ServerName = "warm.example.org"
	_, _ = m2.GetCertificate(hello)
	waitFor(t, "the second listing", func() bool {
		_, known := m2.names.mayHold("x.example.com")
		return known
	})
	reads = st.loads.Load()
	for i := range 1000 {
		hello.ServerName = fmt.Sprintf("d%d.example.org", i)
		if _, err := m2.GetCertificate(hello); err == nil {
			t.Fatal("a denied name was served")
		}
	}
	if n := st.loads.Load() - reads; n != 0 || decisions.Load() < 1000 {
		t.Errorf("1,000 names the policy denies: %d storage reads, %d decisions; want 0 and 1,000", n, decisions.Load())
	}
}

// Item 11: a frontend whose lock session is cut mid-order (here by
// pg_terminate_backend) while another frontend orders the same name: it
// notices before writing, says so once at Warn, and both frontends serve
// the certificate in storage.
func TestLostPostgresLockConverges(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	var finals atomic.Int32
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/finalize-order/") && finals.Add(1) == 1 {
			<-hold // the first frontend's order waits
		}
		return false
	}})
	url := pgtest.DB(t)
	ctx := context.Background()
	open := func() *postgres.Storage {
		st, err := postgres.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		return st
	}
	core, logs := observer.New(zapcore.WarnLevel)
	const name = "cut.example.com"
	a := e.manager(func(m *Manager) { m.Storage = open(); m.KeyTypes = []KeyType{ECDSAP256}; m.Logger = zap.New(core) })
	errA := make(chan error, 1)
	go func() { errA <- a.ManageSync(ctx, name) }()
	waitFor(t, "the first order to reach finalization", func() bool { return finals.Load() == 1 })
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var cut int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&cut); err != nil || cut != 1 {
		t.Fatalf("cutting the lock's session: %d, %v", cut, err)
	}
	b := e.manager(func(m *Manager) { m.Storage = open(); m.KeyTypes = []KeyType{ECDSAP256} })
	if err := b.ManageSync(ctx, name); err != nil {
		t.Fatal(err)
	}
	close(hold)
	if err := <-errA; err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, m := range []*Manager{a, b} {
		e.front.Store(m)
		cs, err := e.handshake(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, cs.PeerCertificates[0].SerialNumber.String())
	}
	stored, _, err := b.readStored(ctx, name, ECDSAP256)
	if err != nil || stored == nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range logs.All() {
		lines = append(lines, l.Message)
	}
	t.Logf("lock session cut mid-order: %d certificates issued, frontends serve %v, storage holds %s; Warn lines on the cut frontend: %q",
		e.ca.FinalizationsFor(name, "ECDSA"), serials, stored.Leaf.SerialNumber, lines)
	if serials[0] != serials[1] || serials[0] != stored.Leaf.SerialNumber.String() {
		t.Errorf("frontends serve %v, storage holds %s", serials, stored.Leaf.SerialNumber)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "lock lost") {
		t.Errorf("Warn lines %q, want one about the lost lock", lines)
	}
}
