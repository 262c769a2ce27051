// Package postgres keeps acmetls's state in PostgreSQL, so that a fleet of
// frontends shares its certificates, accounts, challenge answers, renewal
// state and staples through one database.
//
// Values are rows of one table; locks are PostgreSQL session advisory
// locks, each held on a connection of its own, so a process that dies or
// loses its database connection releases its locks with it: no stale lock
// files, no lock expiry to tune.
//
// [Storage] also has certmagic.Storage's Stat, so it serves CertMagic too.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/acmetls/acmetls/storage"
)

// DefaultTable is the table Open and New use when given none.
const DefaultTable = "acmetls_storage"

// Storage is a [storage.Storage] in a PostgreSQL table. It is safe for
// concurrent use; several processes may share one table.
type Storage struct {
	pool   *pgxpool.Pool
	owned  bool   // the pool was made by Open, and Close closes it
	table  string // quoted identifier
	lockNS string // prefix of the advisory lock names, per table

	// MaxLocks bounds the locks this Storage holds at once, each on a
	// connection of its own: a Lock beyond it waits for an Unlock, or
	// for its context to end. Zero means DefaultMaxLocks. Set it before
	// the first Lock and do not change it after. The connections this
	// Storage opens are at most the pool's MaxConns plus MaxLocks.
	MaxLocks int

	semOnce sync.Once
	sem     chan struct{} // one token per lock held

	mu   sync.Mutex           // guards held
	held map[string]*pgx.Conn // the connection holding each lock this process holds
}

// DefaultMaxLocks is the bound on locks held at once when
// [Storage.MaxLocks] is zero. An acmetls Manager holds at most 9: one per
// order in flight, and the account's.
const DefaultMaxLocks = 16

var (
	_ storage.Storage   = (*Storage)(nil)
	_ storage.Watcher   = (*Storage)(nil)
	_ certmagic.Storage = (*Storage)(nil)
)

// Open connects to the database at connString (a PostgreSQL URL or
// key=value string) and returns a Storage in its table DefaultTable,
// creating the table if it does not exist. Close releases the connections.
func Open(ctx context.Context, connString string) (*Storage, error) {
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return nil, fmt.Errorf("acmetls/postgres: %w", err)
	}
	s, err := New(ctx, pool, "")
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.owned = true
	return s, nil
}

// New returns a Storage in table ("" for DefaultTable) reached through
// pool, creating the table if it does not exist. A table that exists is
// used as it is, so a role without the privilege to create tables can use
// one its administrator made with the statement in [Schema]. The pool
// stays the caller's: Close does not close it. Locks do not take
// connections from the pool; each held lock opens one with the pool's
// configuration.
func New(ctx context.Context, pool *pgxpool.Pool, table string) (*Storage, error) {
	if table == "" {
		table = DefaultTable
	}
	s := &Storage{
		pool:   pool,
		table:  pgx.Identifier{table}.Sanitize(),
		lockNS: "acmetls/" + table + "/",
		held:   make(map[string]*pgx.Conn),
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.table).Scan(&exists); err != nil {
		return nil, fmt.Errorf("acmetls/postgres: looking for table %s: %w", s.table, err)
	}
	if exists {
		return s, nil
	}
	if _, err := pool.Exec(ctx, Schema(table)); err != nil {
		// Processes starting together race to create the table, and
		// CREATE TABLE IF NOT EXISTS is not safe against that: the
		// losers fail on the catalog's unique index. The table is there.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" && pgErr.Code != "42710" && pgErr.Code != "42P07" {
			return nil, fmt.Errorf("acmetls/postgres: creating table %s: %w", s.table, err)
		}
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.table).Scan(&exists); err != nil || !exists {
			return nil, fmt.Errorf("acmetls/postgres: creating table %s: another process was creating it: %v", s.table, err)
		}
	}
	return s, nil
}

// Schema returns the statement that creates table ("" for DefaultTable),
// for administrators who make it themselves.
func Schema(table string) string {
	if table == "" {
		table = DefaultTable
	}
	// COLLATE "C" orders keys bytewise, so that the keys under a prefix
	// are one range of the primary key's index.
	return `CREATE TABLE IF NOT EXISTS ` + pgx.Identifier{table}.Sanitize() + ` (
	key      text COLLATE "C" PRIMARY KEY,
	value    bytea NOT NULL,
	modified timestamptz NOT NULL DEFAULT now()
)`
}

// Close releases the locks this Storage holds and, if Open made its pool,
// closes the pool.
func (s *Storage) Close() {
	s.mu.Lock()
	held := s.held
	s.held = make(map[string]*pgx.Conn)
	s.mu.Unlock()
	for _, c := range held {
		_ = c.Close(context.Background())
	}
	if s.owned {
		s.pool.Close()
	}
}

// Store writes value at key, replacing what was there.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{} // a nil slice would be SQL NULL
	}
	// The write and its notice to the processes watching (see Watch)
	// are one statement: a notice is sent if and only if the write
	// commits.
	_, err := s.pool.Exec(ctx, `WITH w AS (
		INSERT INTO `+s.table+` (key, value, modified) VALUES ($1, $2, now())
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, modified = excluded.modified
		RETURNING key)
	SELECT pg_notify($3, key) FROM w`, key, value, s.channel())
	if err != nil {
		return fmt.Errorf("acmetls/postgres: storing %s: %w", key, err)
	}
	return nil
}

// channel is the NOTIFY channel of the table's writes: a name of at most
// 63 bytes, as PostgreSQL's identifiers are, whatever the table's.
func (s *Storage) channel() string {
	h := fnv.New64a()
	h.Write([]byte(s.table))
	return fmt.Sprintf("acmetls_%x", h.Sum64())
}

// Watch calls changed with the key of every value any process stores in
// the table, as PostgreSQL delivers the notices (LISTEN/NOTIFY, within
// milliseconds), until ctx ends or the connection it listens on fails:
// it returns nil in the first case and the error in the second. It holds
// one connection of its own, outside the pool. Notices sent while no
// connection listens are lost: a caller that watches again should treat
// anything as possibly changed meanwhile.
func (s *Storage) Watch(ctx context.Context, changed func(key string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return fmt.Errorf("acmetls/postgres: watch: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{s.channel()}.Sanitize()); err != nil {
		return fmt.Errorf("acmetls/postgres: watch: %w", err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("acmetls/postgres: watch: %w", err)
		}
		changed(n.Payload)
	}
}

// Load reads the value at key; a missing key is an error wrapping
// fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM `+s.table+` WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("acmetls/postgres: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("acmetls/postgres: loading %s: %w", key, err)
	}
	return v, nil
}

// Delete removes key and every key under it. Deleting a missing key is
// not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	lo, hi := under(key)
	_, err := s.pool.Exec(ctx, `DELETE FROM `+s.table+` WHERE key = $1 OR (key > $2 AND key < $3)`, key, lo, hi)
	if err != nil {
		return fmt.Errorf("acmetls/postgres: deleting %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key holds a value. A database error reports
// false.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM `+s.table+` WHERE key = $1`, key).Scan(&one)
	return err == nil
}

// List returns the keys directly under path, or all keys under it when
// recursive, sorted. A key with keys below it is listed as a prefix. A
// path with nothing under it is an error wrapping fs.ErrNotExist.
func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	path = strings.TrimSuffix(path, "/")
	lo, hi := under(path)
	q := `SELECT key FROM ` + s.table + ` WHERE key > $1 AND key < $2 ORDER BY key`
	if !recursive {
		// The first segment after the prefix: a key, or the prefix of
		// keys below.
		q = `SELECT DISTINCT $1::text || split_part(substr(key, length($1::text) + 1), '/', 1) AS k
			FROM ` + s.table + ` WHERE key > $1 AND key < $2 ORDER BY k`
	}
	rows, err := s.pool.Query(ctx, q, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("acmetls/postgres: listing %s: %w", path, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("acmetls/postgres: listing %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("acmetls/postgres: %s: %w", path, fs.ErrNotExist)
	}
	return keys, nil
}

// Stat describes key: a value, or a prefix of other keys.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	var size int64
	var modified time.Time
	err := s.pool.QueryRow(ctx, `SELECT length(value), modified FROM `+s.table+` WHERE key = $1`, key).Scan(&size, &modified)
	if err == nil {
		return certmagic.KeyInfo{Key: key, Modified: modified, Size: size, IsTerminal: true}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return certmagic.KeyInfo{}, fmt.Errorf("acmetls/postgres: stat %s: %w", key, err)
	}
	lo, hi := under(key)
	err = s.pool.QueryRow(ctx, `SELECT max(modified) FROM `+s.table+` WHERE key > $1 AND key < $2 HAVING count(*) > 0`, lo, hi).Scan(&modified)
	if errors.Is(err, pgx.ErrNoRows) {
		return certmagic.KeyInfo{}, fmt.Errorf("acmetls/postgres: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("acmetls/postgres: stat %s: %w", key, err)
	}
	return certmagic.KeyInfo{Key: key, Modified: modified}, nil
}

// under returns the bounds, both exclusive, of the keys under prefix in
// bytewise order: prefix+"/" and prefix+"0", '0' being the byte after '/'.
func under(prefix string) (lo, hi string) {
	return prefix + "/", prefix + "0"
}

// Lock takes the named lock, waiting until it is free or ctx ends. The
// lock is a session advisory lock on a connection opened for it, so it is
// released if this process dies or loses the connection. Locks of the
// same name taken twice in one process exclude each other, as across
// processes. At most MaxLocks are held at once; beyond, Lock waits.
func (s *Storage) Lock(ctx context.Context, name string) error {
	s.semOnce.Do(func() {
		n := s.MaxLocks
		if n <= 0 {
			n = DefaultMaxLocks
		}
		s.sem = make(chan struct{}, n)
	})
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("acmetls/postgres: lock %s: waiting for one of the %d lock connections (Storage.MaxLocks): %w",
			name, cap(s.sem), ctx.Err())
	}
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig) // Config returns a copy
	if err != nil {
		<-s.sem
		return fmt.Errorf("acmetls/postgres: lock %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, s.lockKey(name)); err != nil {
		// Closing the session releases the lock if it was granted as
		// ctx ended.
		_ = conn.Close(context.Background())
		<-s.sem
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("acmetls/postgres: lock %s: %w", name, err)
	}
	s.mu.Lock()
	s.held[name] = conn
	s.mu.Unlock()
	return nil
}

// Unlock releases a lock taken by Lock, closing its connection.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	conn, ok := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("acmetls/postgres: unlock %s: not locked by this process", name)
	}
	defer func() { <-s.sem }()
	lost := conn.IsClosed()
	// Ending the session releases its advisory lock; a failed unlock
	// query would leave it held, a closed connection cannot.
	if err := conn.Close(ctx); err != nil || lost {
		return fmt.Errorf("acmetls/postgres: unlock %s: %w (%v)", name, storage.ErrLockLost, err)
	}
	return nil
}

// VerifyLock reports whether this process still holds the named lock: the
// session holding it must still answer. It returns an error wrapping
// storage.ErrLockLost if the session is gone (cut by the network, a
// restarted server, or pg_terminate_backend), when another process may
// hold the lock.
func (s *Storage) VerifyLock(ctx context.Context, name string) error {
	s.mu.Lock()
	conn, ok := s.held[name]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("acmetls/postgres: %s: %w: not locked by this process", name, storage.ErrLockLost)
	}
	var held bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
		AND pid = pg_backend_pid() AND granted AND ((classid::bigint << 32) | objid::bigint) = $1)`, s.lockKey(name)).Scan(&held)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("acmetls/postgres: verifying lock %s: %w", name, ctx.Err())
	case err != nil:
		return fmt.Errorf("acmetls/postgres: %s: %w: %v", name, storage.ErrLockLost, err)
	case !held:
		return fmt.Errorf("acmetls/postgres: %s: %w: the session no longer holds it", name, storage.ErrLockLost)
	}
	return nil
}

var _ storage.LockVerifier = (*Storage)(nil)

// lockKey maps a lock name to the 64-bit key of an advisory lock. Two
// names that collide only wait for each other.
func (s *Storage) lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(s.lockNS))
	h.Write([]byte(name))
	return int64(h.Sum64())
}
