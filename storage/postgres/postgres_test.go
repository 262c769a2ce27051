package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// open returns two Storages on one fresh database, each with its own
// pool: two processes of a fleet.
func open(t *testing.T) (*Storage, *Storage) {
	url := pgtest.DB(t)
	ctx := context.Background()
	a, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return a, b
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) (storage.Storage, storage.Storage) { return open(t) })
}

// A process that dies holding a lock releases it: the session ends with
// the connection.
func TestLockReleasedWithItsConnection(t *testing.T) {
	ctx := context.Background()
	a, b := open(t)
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := b.Lock(short, "l"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock held by another process = %v", err)
	}
	a.Close() // as the process's exit would
	wait, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	if err := b.Lock(wait, "l"); err != nil {
		t.Fatalf("the lock of a closed process was not released: %v", err)
	}
	if err := b.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// A role that may read and write the table but not create tables uses the
// table its administrator made.
func TestTableMadeByAdministrator(t *testing.T) {
	ctx := context.Background()
	url := pgtest.DB(t)
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(ctx) })
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "app_" + hex.EncodeToString(b[:])
	for _, stmt := range []string{
		Schema(""),
		"CREATE ROLE " + role + " LOGIN",
		"REVOKE CREATE ON SCHEMA public FROM PUBLIC",
		"GRANT USAGE ON SCHEMA public TO " + role,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON " + DefaultTable + " TO " + role,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(ctx, "DROP OWNED BY "+role+"; DROP ROLE "+role); err != nil {
			t.Error(err)
		}
	})
	appURL := strings.Replace(url, "user=postgres", "user="+role, 1)
	s, err := Open(ctx, appURL)
	if err != nil {
		t.Fatalf("Open as a role that cannot create tables: %v", err)
	}
	defer s.Close()
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Load(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	if _, err := New(ctx, s.pool, "other"); err == nil || !strings.Contains(err.Error(), "creating table") {
		t.Fatalf("New with a table the role may not create = %v", err)
	}
}

// Stat describes values and prefixes, as CertMagic expects.
func TestStat(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	if err := s.Store(ctx, "a/b/c", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	ki, err := s.Stat(ctx, "a/b/c")
	if err != nil || !ki.IsTerminal || ki.Size != 5 || time.Since(ki.Modified) > time.Minute {
		t.Errorf("Stat of a value = %+v, %v", ki, err)
	}
	ki, err = s.Stat(ctx, "a/b")
	if err != nil || ki.IsTerminal {
		t.Errorf("Stat of a prefix = %+v, %v", ki, err)
	}
	if _, err := s.Stat(ctx, "a/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing key = %v", err)
	}
}

// A database that goes away gives clear errors and no false answers; the
// values are there again when it is back (a closed pool stands in for the
// outage).
func TestDatabaseGone(t *testing.T) {
	ctx := context.Background()
	url := pgtest.DB(t)
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Load(ctx, "k"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load without a database = %v, want an error that is not fs.ErrNotExist", err)
	}
	if err := s.Store(ctx, "k", []byte("w")); err == nil {
		t.Error("Store without a database succeeded")
	}
	if err := s.Lock(ctx, "l"); err != nil {
		// Locks open their own connection; the database is still up.
		t.Logf("Lock: %v", err)
	} else {
		_ = s.Unlock(ctx, "l")
	}
	again, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if v, err := again.Load(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("after reconnecting: %q, %v", v, err)
	}
}

func TestOpenBadURL(t *testing.T) {
	if _, err := Open(context.Background(), "host=/nonexistent-dir user=postgres connect_timeout=2"); err == nil {
		t.Fatal("Open of an unreachable database succeeded")
	}
}

// Locks held at once are bounded: one beyond MaxLocks waits, and gets the
// lock once another is released. The connections opened stay within the
// pool's and MaxLocks.
func TestMaxLocks(t *testing.T) {
	ctx := context.Background()
	a, _ := open(t)
	a.MaxLocks = 3
	for i := range 3 {
		if err := a.Lock(ctx, "l"+string(rune('0'+i))); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err := a.Lock(short, "other")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "MaxLocks") {
		t.Fatalf("a fourth lock with MaxLocks 3: %v, want a wait that names MaxLocks", err)
	}
	got := make(chan error, 1)
	go func() { got <- a.Lock(ctx, "other") }()
	time.Sleep(50 * time.Millisecond)
	if err := a.Unlock(ctx, "l0"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting lock was not granted after an unlock")
	}
	if n := backends(t, a); n > int(a.pool.Config().MaxConns)+3 {
		t.Errorf("%d connections, bound %d", n, a.pool.Config().MaxConns+3)
	}
}

// backends counts the sessions open on s's database, but the one asking.
func backends(t *testing.T, s *Storage) int {
	t.Helper()
	var n int
	err := s.pool.QueryRow(context.Background(), `SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A lock whose session was cut is reported lost, and another process
// takes it.
func TestVerifyLock(t *testing.T) {
	ctx := context.Background()
	a, b := open(t)
	if err := a.VerifyLock(ctx, "l"); !errors.Is(err, storage.ErrLockLost) {
		t.Fatalf("VerifyLock of a lock never taken = %v", err)
	}
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := a.VerifyLock(ctx, "l"); err != nil {
		t.Fatalf("VerifyLock of a held lock = %v", err)
	}
	if _, err := b.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.Lock(wait, "l"); err != nil {
		t.Fatalf("the lock of a cut session: %v", err)
	}
	if err := a.VerifyLock(ctx, "l"); !errors.Is(err, storage.ErrLockLost) {
		t.Fatalf("VerifyLock after the session was cut = %v, want ErrLockLost", err)
	}
	if err := a.Unlock(ctx, "l"); !errors.Is(err, storage.ErrLockLost) {
		t.Errorf("Unlock of a lost lock = %v, want ErrLockLost", err)
	}
	if err := b.VerifyLock(ctx, "l"); err != nil {
		t.Fatalf("VerifyLock of the new holder = %v", err)
	}
}

// Watch tells of every value stored by any Storage on the table, and
// returns nil when its context ends.
func TestWatch(t *testing.T) {
	a, b := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	keys := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- a.Watch(ctx, func(key string) { keys <- key }) }()
	deadline := time.Now().Add(10 * time.Second)
	for got := false; !got; {
		// Until the LISTEN is on, notices are lost: store until one comes.
		if err := b.Store(ctx, "acmetls/certs/w.example.com/ecdsa-p256.json", []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case key := <-keys:
			if key != "acmetls/certs/w.example.com/ecdsa-p256.json" {
				t.Fatalf("notice for %q", key)
			}
			got = true
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no notice within 10 s")
			}
		}
	}
	if err := b.Store(ctx, "acmetls/state/other", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if key := <-keys; key != "acmetls/certs/w.example.com/ecdsa-p256.json" && key != "acmetls/state/other" {
		t.Errorf("notice for %q", key)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch after its context ended: %v", err)
	}
}

// Processes starting together on an empty database all get the table:
// CREATE TABLE IF NOT EXISTS alone fails for all but one of them.
func TestConcurrentCreation(t *testing.T) {
	url := pgtest.DB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			s, err := Open(context.Background(), url)
			if err != nil {
				errs <- err
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
