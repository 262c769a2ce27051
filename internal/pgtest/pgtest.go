// Package pgtest runs a throwaway PostgreSQL server for tests: the real
// server, from the binaries of the machine's PostgreSQL installation, in a
// temporary directory, reachable only through a Unix socket there.
//
// A test package that uses it runs [Main] from its TestMain; each test then
// takes a fresh database of its own with [DB].
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/acmetls/acmetls/internal/testdeps"
)

// server is the package's running server, if Main started one.
var server struct {
	mu   sync.Mutex
	dir  string // data directory, also holding the socket
	err  error  // why the server could not start
	proc *os.Process
}

// Main makes sure PostgreSQL and the other tools are installed (see
// [testdeps.Ensure]), starts a PostgreSQL server, runs the tests, and
// stops the server. Call it from TestMain: os.Exit(pgtest.Main(m)).
//
// If the server cannot start, the tests still run and every [DB] call
// fails with the reason, not a skip.
func Main(m *testing.M, tools ...string) int {
	if err := testdeps.Ensure(append(tools, testdeps.Postgres)...); err != nil {
		fmt.Fprintln(os.Stderr, "acmetls tests:", err)
		return 1
	}
	server.err = start()
	code := m.Run()
	stop()
	return code
}

// DB creates a database for t alone and returns its connection string.
// The database is dropped when t ends.
func DB(t testing.TB) string {
	t.Helper()
	url, name, err := newDB()
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := execSQL(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping the test database: %v", err)
		}
	})
	return url
}

// NewDB creates a database that lasts as long as the server, for data
// shared by several tests or benchmarks, and returns its connection
// string.
func NewDB() (string, error) {
	url, _, err := newDB()
	return url, err
}

func newDB() (url, name string, err error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name = "t_" + hex.EncodeToString(b[:])
	if err := execSQL(context.Background(), "CREATE DATABASE "+name); err != nil {
		return "", "", err
	}
	server.mu.Lock()
	defer server.mu.Unlock()
	return connString(server.dir, name), name, nil
}

// execSQL runs one statement as the server's superuser.
func execSQL(ctx context.Context, sql string) error {
	server.mu.Lock()
	dir, err := server.dir, server.err
	server.mu.Unlock()
	if dir == "" && err == nil {
		err = errors.New("pgtest: Main was not run from TestMain")
	}
	if err != nil {
		return err
	}
	c, err := pgx.Connect(ctx, connString(dir, "postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql)
	return err
}

func connString(dir, db string) string {
	return fmt.Sprintf("host=%s user=postgres dbname=%s sslmode=disable", dir, db)
}

// start runs initdb and the server. The server refuses to run as root, so
// as root both run as the installation's postgres user.
func start() error {
	bin, err := binDir()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "acmetls-pg-")
	if err != nil {
		return err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root and there is no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return err
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	srv := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir,
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return err
	}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	server.mu.Lock()
	server.dir, server.proc = dir, srv.Process
	server.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(context.Background(), connString(dir, "postgres"))
		if err == nil {
			return c.Close(context.Background())
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			stop()
			return fmt.Errorf("postgres did not accept connections within 30s: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down fast and removes its directory.
func stop() {
	server.mu.Lock()
	defer server.mu.Unlock()
	if server.proc != nil {
		_ = server.proc.Signal(syscall.SIGINT) // fast shutdown
		_, _ = server.proc.Wait()
		server.proc = nil
	}
	if server.dir != "" {
		_ = os.RemoveAll(server.dir)
		server.dir = ""
	}
}

// binDir finds the directory of initdb and postgres: on PATH, or where
// Debian's packages put them.
func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "postgres")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- { // the newest version first
		if _, err := os.Stat(filepath.Join(dirs[i], "postgres")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("no PostgreSQL server found (initdb and postgres on PATH or in /usr/lib/postgresql/*/bin); " +
		"install it, e.g. apt-get install postgresql")
}
