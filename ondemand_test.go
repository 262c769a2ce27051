package acmetls

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

func TestOnDemandConcurrentFirstHandshakes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	e.manager(func(m *Manager) { m.OnDemand = &OnDemand{Names: []string{"Burst.Example.com."}} })
	const name, n = "burst.example.com", 200

	var wg sync.WaitGroup
	errs := make(chan error, n)
	algs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, err := e.handshake(name, ecdsaTLS13Client)
			if err != nil {
				errs <- err
				return
			}
			algs <- leafKeyAlgorithm(cs)
		}()
	}
	wg.Wait()
	close(errs)
	close(algs)
	for err := range errs {
		t.Errorf("handshake failed: %v", err)
	}
	for alg := range algs {
		if alg != "ECDSA" {
			t.Fatalf("an ECDSA-capable client got %s", alg)
		}
	}
	// The RSA certificate follows in the background, once.
	waitFor(t, "the background RSA order", func() bool { return e.ca.FinalizationsFor(name, "RSA") == 1 })
	if _, err := e.handshake(name, rsaOnlyTLS12); err != nil {
		t.Fatal(err)
	}
	if got := e.ca.FinalizationsFor(name, "ECDSA"); got != 1 {
		t.Errorf("ECDSA finalizations = %d, want 1", got)
	}
	if got := e.ca.FinalizationsFor(name, "RSA"); got != 1 {
		t.Errorf("RSA finalizations = %d, want 1", got)
	}
	if got := len(e.ca.Orders()); got != 2 {
		t.Errorf("orders = %d, want 2", got)
	}
}

// An RSA-only client's first handshake obtains the RSA certificate first.
func TestOnDemandObtainsTheClientsKeyTypeFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	e.manager(func(m *Manager) {
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
	})
	cs, err := e.handshake("rsa-first.example.com", rsaOnlyTLS12)
	if err != nil {
		t.Fatal(err)
	}
	if got := leafKeyAlgorithm(cs); got != "RSA" {
		t.Fatalf("got %s, want RSA", got)
	}
	if f := e.ca.Finalizations(); len(f) == 0 || f[0].KeyAlgorithm != "RSA" {
		t.Errorf("first finalization = %+v, want RSA", f)
	}
	waitFor(t, "the background ECDSA order", func() bool { return e.ca.FinalizationsFor("rsa-first.example.com", "ECDSA") == 1 })
}

func TestPolicyRefusesWithoutOrders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	denyErr := errors.New("not a customer")
	var decisions int
	var mu sync.Mutex
	for _, tc := range []struct {
		name     string
		onDemand *OnDemand
		wantErr  error
	}{
		{"no policy", nil, ErrNotManaged},
		{"decision denies", &OnDemand{Decision: func(_ context.Context, name string) error {
			mu.Lock()
			decisions++
			mu.Unlock()
			return denyErr
		}}, denyErr},
		{"allowlist without the name", &OnDemand{Names: []string{"other.example.com"}}, ErrNotManaged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := e.manager(func(m *Manager) { m.OnDemand = tc.onDemand })
			for i := 0; i < 3; i++ {
				_, err := e.handshake("unmanaged.example.com", nil)
				if err == nil {
					t.Fatal("handshake for an unmanaged name succeeded")
				}
				// The server's error, as GetCertificate returns it.
				_, gerr := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "unmanaged.example.com", SupportedVersions: []uint16{tls.VersionTLS13}})
				if !errors.Is(gerr, tc.wantErr) {
					t.Fatalf("GetCertificate error = %v, want %v", gerr, tc.wantErr)
				}
				if !strings.Contains(gerr.Error(), "unmanaged.example.com") {
					t.Errorf("error %q does not name the server name", gerr)
				}
			}
		})
	}
	if decisions != 1 {
		t.Errorf("Decision called %d times for one name, want 1 (denials are remembered)", decisions)
	}
	if n := len(e.ca.Orders()); n != 0 {
		t.Errorf("the CA saw %d orders, want 0", n)
	}
}

// A handshake waiting for an order gives up when its context ends; the
// order goes on and serves the next handshake.
func TestHandshakeWaiterHonoursContext(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/order-plz" {
			<-release
		}
		return false
	}})
	m := e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Names: []string{"slow.example.com"}}
	})
	serverConn, clientConn := net.Pipe()
	defer clientConn.Close()
	go tls.Client(clientConn, &tls.Config{ServerName: "slow.example.com", InsecureSkipVerify: true}).Handshake()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	srv := tls.Server(serverConn, m.TLSConfig())
	start := time.Now()
	err := srv.HandshakeContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("handshake error = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("handshake took %v to give up", d)
	}
	close(release)
	waitFor(t, "the order to finish", func() bool { return e.ca.FinalizationsFor("slow.example.com", "ECDSA") == 1 })
	if _, err := e.handshake("slow.example.com", nil); err != nil {
		t.Fatal(err)
	}
}

// A denial is remembered for DenialTTL on the Manager's clock, the one its
// backoff state runs on: the policy is asked again once it has passed.
func TestDenialExpiresOnTheManagersClock(t *testing.T) {
	var decisions atomic.Int32
	clock := newFakeClock(time.Now())
	m := &Manager{
		Storage: &storage.Memory{},
		OnDemand: &OnDemand{DenialTTL: time.Hour, Decision: func(context.Context, string) error {
			decisions.Add(1)
			return errors.New("not a customer")
		}},
		clock: clock,
	}
	hello := &tls.ClientHelloInfo{ServerName: "prospect.example.com", SupportedVersions: []uint16{tls.VersionTLS13}}
	for range 3 {
		if _, err := m.GetCertificate(hello); err == nil {
			t.Fatal("a denied name was served")
		}
	}
	if n := decisions.Load(); n != 1 {
		t.Fatalf("Decision called %d times within DenialTTL, want 1", n)
	}
	clock.Add(time.Hour + time.Second)
	if _, err := m.GetCertificate(hello); err == nil {
		t.Fatal("a denied name was served")
	}
	if n := decisions.Load(); n != 2 {
		t.Fatalf("Decision called %d times after DenialTTL, want 2", n)
	}
}
