package acmetls

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// A record that does not decode, or whose key does not match its leaf, is
// reported and replaced, never served.
func TestCorruptRecordIsReplaced(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		corrupt func(b []byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"not json", func([]byte) []byte { return []byte("\x00\x01garbage") }},
		{"wrong version", func(b []byte) []byte { return []byte(strings.Replace(string(b), `"version":1`, `"version":99`, 1)) }},
		{"key from another certificate", nil}, // filled in below
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, acmetest.Options{})
			ctx := context.Background()
			kts := func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} }
			if err := e.manager(kts).ManageSync(ctx, "x.example.com", "y.example.com"); err != nil {
				t.Fatal(err)
			}
			key := storage.CertKey("x.example.com", string(ECDSAP256))
			b, err := e.storage.Load(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			var bad []byte
			if tc.corrupt != nil {
				bad = tc.corrupt(b)
			} else {
				// Swap in y's key: valid PEM, wrong key for x's leaf.
				yb, _ := e.storage.Load(ctx, storage.CertKey("y.example.com", string(ECDSAP256)))
				x, _ := storage.ParseCertRecord(b)
				y, _ := storage.ParseCertRecord(yb)
				x.KeyPEM = y.KeyPEM
				bad, _ = x.Marshal()
			}
			if err := e.storage.Store(ctx, key, bad); err != nil {
				t.Fatal(err)
			}
			m := e.manager(kts)
			if err := m.ManageSync(ctx, "x.example.com"); err != nil {
				t.Fatal(err)
			}
			if n := e.ca.FinalizationsFor("x.example.com", "ECDSA"); n != 2 {
				t.Errorf("finalizations = %d, want 2 (the corrupt record replaced)", n)
			}
			if _, err := e.handshake("x.example.com", nil); err != nil {
				t.Fatal(err)
			}
			fixed, _ := e.storage.Load(ctx, key)
			if _, err := storage.ParseCertRecord(fixed); err != nil {
				t.Errorf("record still corrupt: %v", err)
			}
		})
	}
}

// failingStorage fails Load, Store or Lock on demand, on top of a real
// storage.
type failingStorage struct {
	storage.Storage
	fail atomic.Bool
}

var errStorageDown = errors.New("storage is down")

func (s *failingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if s.fail.Load() {
		return nil, errStorageDown
	}
	return s.Storage.Load(ctx, key)
}

func (s *failingStorage) Store(ctx context.Context, key string, v []byte) error {
	if s.fail.Load() {
		return errStorageDown
	}
	return s.Storage.Store(ctx, key, v)
}

func (s *failingStorage) Lock(ctx context.Context, name string) error {
	if s.fail.Load() {
		return errStorageDown
	}
	return s.Storage.Lock(ctx, name)
}

// While storage fails, a handshake for a name not in memory fails with an
// error that says so and nothing is ordered; names in memory are still
// served; once storage is back, everything works.
func TestStorageFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	fs := &failingStorage{Storage: e.storage}
	m := e.manager(func(m *Manager) {
		m.Storage = fs
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
	})
	ctx := context.Background()
	if err := m.ManageSync(ctx, "cached.example.com"); err != nil {
		t.Fatal(err)
	}
	orders := len(e.ca.Orders())
	fs.fail.Store(true)
	if _, err := e.handshake("cached.example.com", nil); err != nil {
		t.Errorf("a cached name failed while storage is down: %v", err)
	}
	if _, err := e.handshake("new.example.com", nil); err == nil {
		t.Error("a new name was served while storage is down")
	}
	_, err := m.certFor(ctx, "new.example.com", ECDSAP256)
	if !errors.Is(err, errStorageDown) || !strings.Contains(err.Error(), "new.example.com") {
		t.Errorf("error = %v, want one naming the key and wrapping the storage's error", err)
	}
	if got := len(e.ca.Orders()); got != orders {
		t.Errorf("%d orders placed while storage was down", got-orders)
	}
	fs.fail.Store(false)
	if _, err := e.handshake("new.example.com", nil); err != nil {
		t.Errorf("after storage recovered: %v", err)
	}
}

// A CA that answers 429 or is unreachable yields a clear error, later
// attempts back off, and the admin's RetryAll obtains the names once the CA
// is back.
func TestCAFailure(t *testing.T) {
	t.Parallel()
	var mode atomic.Int32 // 0 ok, 1 rate limited, 2 gone
	e := newEnv(t, acmetest.Options{Intercept: func(w http.ResponseWriter, r *http.Request) bool {
		switch mode.Load() {
		case 1:
			if r.URL.Path == "/order-plz" {
				w.Header().Set("Content-Type", "application/problem+json")
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(http.StatusTooManyRequests)
				w.Write([]byte(`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently"}`))
				return true
			}
		case 2:
			hj, ok := w.(http.Hijacker)
			if ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return true
				}
			}
		}
		return false
	}})
	m := e.manager(func(m *Manager) { m.KeyTypes = []KeyType{ECDSAP256} })
	ctx := context.Background()

	mode.Store(1)
	err := m.ManageSync(ctx, "limited.example.com")
	if err == nil || !strings.Contains(err.Error(), "rateLimited") || !strings.Contains(err.Error(), "limited.example.com") {
		t.Errorf("rate limited: err = %v, want the CA's problem and the name", err)
	}
	mode.Store(2)
	err = m.ManageSync(ctx, "gone.example.com")
	if err == nil || !strings.Contains(err.Error(), "gone.example.com") {
		t.Errorf("CA gone: err = %v", err)
	}
	// The failures back off: asking again does not reach the CA.
	mode.Store(0)
	orders := len(e.ca.Orders())
	if err := m.ManageSync(ctx, "limited.example.com", "gone.example.com"); !errors.Is(err, errBackingOff) {
		t.Fatalf("during the backoff: %v, want errBackingOff", err)
	}
	if n := len(e.ca.Orders()); n != orders {
		t.Fatalf("%d orders placed during the backoff", n-orders)
	}
	// The admin retries both at once.
	if err := m.RetryAll(ctx); err != nil {
		t.Fatalf("RetryAll after the CA recovered: %v", err)
	}
	if err := m.ManageSync(ctx, "limited.example.com", "gone.example.com"); err != nil {
		t.Fatalf("after the retry: %v", err)
	}
	if n := len(e.ca.Orders()) - orders; n != 2 {
		t.Errorf("%d orders for the two names, want 2", n)
	}
}

// Handshakes for a name whose first issuance backs off fail fast without
// reading storage, for at most a minute at a time: a name whose DNS points
// elsewhere costs one storage read a minute, not several per handshake.
func TestBackingOffNameSparesStorage(t *testing.T) {
	t.Parallel()
	var limited atomic.Bool
	e := newEnv(t, acmetest.Options{Intercept: refuseOrders(&limited, "3600")})
	st := &countingStorage{Storage: e.storage}
	clock := newFakeClock(time.Now())
	const name = "misdirected.example.com"
	m := e.manager(func(m *Manager) {
		m.Storage = st
		m.OnDemand = &OnDemand{Names: []string{name}}
		m.clock = clock
	})
	limited.Store(true)
	if _, err := e.handshake(name, nil); err == nil {
		t.Fatal("handshake succeeded while the CA refuses orders")
	}
	// The second handshake reads the backoff state, and remembers it.
	if _, err := e.handshake(name, nil); err == nil {
		t.Fatal("handshake succeeded during the backoff")
	}
	orders, reads := len(e.ca.Orders()), st.loads.Load()
	for range 10 {
		if _, err := e.handshake(name, nil); err == nil {
			t.Fatal("handshake succeeded during the backoff")
		}
	}
	if n := st.loads.Load() - reads; n != 0 {
		t.Errorf("10 handshakes during the backoff read storage %d times, want 0", n)
	}
	if n := len(e.ca.Orders()) - orders; n != 0 {
		t.Errorf("%d orders during the backoff", n)
	}
	// A minute later storage is read again: another frontend may have
	// obtained the certificate. (Here none has: still backing off.)
	clock.Add(failingMemory + time.Second)
	if _, err := e.handshake(name, nil); err == nil {
		t.Fatal("handshake succeeded during the backoff")
	}
	if st.loads.Load() == reads {
		t.Error("storage was not read again after failingMemory")
	}
	// The admin's retry forgets the failure at once.
	limited.Store(false)
	if err := m.RetryNow(context.Background(), name); err != nil {
		t.Fatalf("RetryNow: %v", err)
	}
	if _, err := e.handshake(name, nil); err != nil {
		t.Fatalf("after RetryNow: %v", err)
	}
}

// A name served with an ECDSA certificate whose RSA issuance backs off (a
// CA counts each certificate against its limits): RSA-only handshakes
// fail without reading storage, ECDSA ones are served from memory, and the
// admin's retry obtains the RSA certificate.
func TestBackingOffKeyTypeSparesStorage(t *testing.T) {
	t.Parallel()
	var limited atomic.Bool
	e := newEnv(t, acmetest.Options{Intercept: refuseOrders(&limited, "3600")})
	const name = "dual.example.com"
	e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Names: []string{name}}
	})
	if _, err := e.handshake(name, nil); err != nil {
		t.Fatalf("ECDSA issuance: %v", err)
	}
	limited.Store(true)

	st := &countingStorage{Storage: e.storage}
	clock := newFakeClock(time.Now())
	m := e.manager(func(m *Manager) {
		m.Storage = st
		m.OnDemand = &OnDemand{Names: []string{name}}
		m.clock = clock
	})
	for range 2 { // the first places the order, the second reads the backoff
		if _, err := e.handshake(name, rsaOnlyTLS12); err == nil {
			t.Fatal("RSA-only handshake succeeded while the CA refuses orders")
		}
	}
	orders, reads := len(e.ca.Orders()), st.loads.Load()
	for range 10 {
		if _, err := e.handshake(name, rsaOnlyTLS12); err == nil {
			t.Fatal("RSA-only handshake succeeded during the backoff")
		}
		cs, err := e.handshake(name, nil)
		if err != nil {
			t.Fatalf("ECDSA handshake during the RSA backoff: %v", err)
		}
		if got := cs.PeerCertificates[0].PublicKeyAlgorithm; got != x509.ECDSA {
			t.Fatalf("served %v", got)
		}
	}
	if n := st.loads.Load() - reads; n != 0 {
		t.Errorf("20 handshakes during the RSA backoff read storage %d times, want 0", n)
	}
	if n := len(e.ca.Orders()) - orders; n != 0 {
		t.Errorf("%d orders during the backoff", n)
	}
	clock.Add(failingMemory + time.Second)
	if _, err := e.handshake(name, rsaOnlyTLS12); err == nil {
		t.Fatal("RSA-only handshake succeeded during the backoff")
	}
	if st.loads.Load() == reads {
		t.Error("storage was not read again after failingMemory")
	}
	limited.Store(false)
	if err := m.RetryNow(context.Background(), name); err != nil {
		t.Fatalf("RetryNow: %v", err)
	}
	cs, err := e.handshake(name, rsaOnlyTLS12)
	if err != nil {
		t.Fatalf("RSA-only handshake after RetryNow: %v", err)
	}
	if got := cs.PeerCertificates[0].PublicKeyAlgorithm; got != x509.RSA {
		t.Fatalf("served %v", got)
	}
}

// refuseOrders answers new orders with a rate-limit problem and
// retryAfter (seconds) while limited holds; a nil limited always holds.
func refuseOrders(limited *atomic.Bool, retryAfter string) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if limited != nil && !limited.Load() || r.URL.Path != "/order-plz" {
			return false
		}
		w.Header().Set("Content-Type", "application/problem+json")
		w.Header().Set("Retry-After", retryAfter)
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently"}`))
		return true
	}
}
