package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/internal/pgtest"
)

// process is a server binary running as its own OS process.
type process struct {
	name string
	args []string
	cmd  *exec.Cmd
	out  syncBuffer
}

// syncBuffer is a bytes.Buffer that a process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fleet builds the server binary once per test and starts processes of it.
type fleet struct {
	t   *testing.T
	bin string
	ps  []*process
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "server")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := &fleet{t: t, bin: bin}
	t.Cleanup(func() {
		for _, p := range f.ps {
			p.stop()
			if t.Failed() {
				t.Logf("%s's output:\n%s", p.name, p.out.String())
			}
		}
	})
	return f
}

func (f *fleet) start(name string, args ...string) *process {
	f.t.Helper()
	p := &process{name: name, args: args}
	p.run(f)
	f.ps = append(f.ps, p)
	return p
}

func (p *process) run(f *fleet) {
	f.t.Helper()
	p.cmd = exec.Command(f.bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
}

func (p *process) stop() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening within a minute: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Items 1 and 4 of the fleet issue, with OS processes of this binary: a
// validation server and three frontends on one PostgreSQL database and
// Pebble. 50 concurrent first handshakes on each frontend for the same 10
// new names all succeed, with one order per name and key type, and the
// CA hears from the validation server only: the frontends are given a CA
// of their own that counts what reaches it. Then the validation server
// is killed (SIGKILL) with orders in flight: the frontends keep serving
// what they have, and once it is started again, the names it was
// ordering are served.
func TestFleetProcesses(t *testing.T) {
	dsn := pgtest.DB(t)
	// Built before the ports are picked: a port free a moment ago may be
	// taken by another test while the binary builds.
	f := newFleet(t)
	ports := make([]int, 8) // validation http, https; frontends' http, https
	for i := range ports {
		ports[i] = freePort(t)
	}
	addr := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	// The CA validates on the first frontend: http-01 there is redirected
	// to the validation server, tls-alpn-01 answered from storage.
	var held atomic.Bool
	var holding atomic.Int32
	gate := make(chan struct{})
	ca, err := acmetest.New(acmetest.Options{HTTPPort: ports[2], TLSPort: ports[3],
		Intercept: func(w http.ResponseWriter, r *http.Request) bool {
			if held.Load() && r.URL.Path == "/order-plz" {
				holding.Add(1)
				<-gate // an order the validation server dies waiting for
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			}
			return false
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	defer func() {
		if held.CompareAndSwap(true, false) {
			close(gate)
		}
	}()
	var frontendCA atomic.Int32
	sink := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		frontendCA.Add(1)
		http.NotFound(w, r)
	}))
	defer sink.Close()

	dir := t.TempDir()
	caRoot := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caRoot, ca.ServerRootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	www := filepath.Join(dir, "www")
	os.MkdirAll(www, 0o755)
	names := make([]string, 10)
	for i := range names {
		names[i] = fmt.Sprintf("fleet%d.example.com", i)
	}
	later := []string{"late0.example.com", "late1.example.com"}
	allowed := ""
	for _, n := range append(names, later...) {
		allowed += n + ","
	}
	const token = "fleet-secret"
	common := []string{"-storage", dsn, "-root", www, "-on-demand", allowed, "-log-level", "info", "-hsts", "0"}
	validationArgs := append([]string{"-ca", ca.DirectoryURL, "-ca-root", caRoot, "-agree-tos", "-email", "ops@example.com",
		"-validation-server", "-fleet-token", token, "-http-addr", addr(ports[0]), "-https-addr", addr(ports[1])}, common...)
	validation := f.start("validation server", validationArgs...)
	var fronts []string
	for i := range 3 {
		f.start(fmt.Sprintf("frontend %d", i), append([]string{"-ca", sink.URL + "/dir",
			"-validator", "http://" + addr(ports[0]), "-fleet-token", token,
			"-http-addr", addr(ports[2+2*i]), "-https-addr", addr(ports[3+2*i])}, common...)...)
		fronts = append(fronts, addr(ports[3+2*i]))
	}
	for _, a := range append([]string{addr(ports[0])}, fronts...) {
		waitListening(t, a)
	}
	for _, p := range f.ps {
		waitServing(t, p)
	}

	dial := func(front, name string, timeout time.Duration) (*tls.ConnectionState, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: &tls.Config{ServerName: name, RootCAs: ca.Roots()}}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", front)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		cs := c.(*tls.Conn).ConnectionState()
		return &cs, nil
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := time.Now()
	for _, front := range fronts {
		for i := range 50 {
			wg.Go(func() {
				if _, err := dial(front, names[i%len(names)], time.Minute); err != nil {
					failed.Add(1)
					t.Errorf("%s at %s: %v", names[i%len(names)], front, err)
				}
			})
		}
	}
	wg.Wait()
	t.Logf("3 frontends x 50 concurrent first handshakes for 10 new names: %d failed, all done in %v", failed.Load(), time.Since(start).Round(time.Millisecond))
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the RSA certificates obtained in the background", func() bool {
		for _, n := range names {
			if ca.FinalizationsFor(n, "RSA") == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(500 * time.Millisecond) // any extra order would show now
	for _, n := range names {
		for _, alg := range []string{"ECDSA", "RSA"} {
			if got := ca.FinalizationsFor(n, alg); got != 1 {
				t.Errorf("%s %s: %d certificates, want 1", n, alg, got)
			}
		}
	}
	if n := frontendCA.Load(); n != 0 {
		t.Errorf("the frontends sent %d requests to a CA", n)
	}
	t.Logf("the CA: %d orders, %d accounts, from the validation server; 0 requests from the frontends", len(ca.Orders()), ca.Accounts())

	// The validation server dies with an order in flight.
	held.Store(true)
	lateErr := make(chan error, 1)
	go func() {
		_, err := dial(fronts[1], later[0], 20*time.Second)
		lateErr <- err
	}()
	waitFor("the order to reach the CA", func() bool { return holding.Load() > 0 })
	validation.cmd.Process.Kill()
	validation.cmd.Wait()
	for _, front := range fronts {
		if _, err := dial(front, names[3], 10*time.Second); err != nil {
			t.Errorf("with the validation server dead, %s did not serve a name it had: %v", front, err)
		}
	}
	<-lateErr // failed or not: its validation server died
	held.Store(false)
	close(gate)
	validation.run(f)
	waitListening(t, addr(ports[0]))
	waitFor("the name ordered when it died, after the restart", func() bool {
		_, err := dial(fronts[2], later[0], 40*time.Second)
		return err == nil
	})
	if _, err := dial(fronts[0], later[1], 40*time.Second); err != nil {
		t.Errorf("a new name after the restart: %v", err)
	}
	for _, p := range f.ps {
		if strings.Contains(p.out.String(), "unusable") {
			t.Errorf("%s read an unusable record:\n%s", p.name, p.out.String())
		}
	}
}

// waitServing waits for p's log line saying it serves, so that an address
// another test took meanwhile fails here, by name, not as a stranger's
// certificate later.
func waitServing(t *testing.T, p *process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.out.String(), `"msg":"serving"`) {
		if time.Now().After(deadline) || strings.Contains(p.out.String(), "address already in use") {
			t.Fatalf("%s is not serving:\n%s", p.name, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
