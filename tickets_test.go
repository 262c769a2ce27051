package acmetls

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmetls/acmetls/storage"
)

// ticketServer serves HTTPS with m on a listener of its own.
func ticketServer(t *testing.T, m *Manager) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), TLSConfig: m.TLSConfig(), ReadHeaderTimeout: 10 * time.Second}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// resumes makes one request to addr with a client holding cache, and
// reports whether the TLS session was resumed.
func resumes(t *testing.T, addr string, cache tls.ClientSessionCache, maxVersion uint16) bool {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			ServerName: "tickets.example.com", InsecureSkipVerify: true,
			ClientSessionCache: cache, MaxVersion: maxVersion,
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // the ticket of TLS 1.3 comes after the handshake
	resp.Body.Close()
	return resp.TLS.DidResume
}

// ticketManagers returns two Managers sharing storage and a fake clock,
// each serving tickets.example.com, with their keys read from storage.
func ticketManagers(t *testing.T) (a, b *Manager, clock *fakeClock) {
	t.Helper()
	clock = newFakeClock(time.Now())
	a = cachedManager(t, 10, "tickets.example.com")
	b = cachedManager(t, 10, "tickets.example.com")
	b.store = a.store
	for _, m := range []*Manager{a, b} {
		m.clock = clock
		m.sched.clock = clock
	}
	refreshTickets(t, a, b)
	return a, b, clock
}

// refreshTickets makes each Manager read the keys now, as it does every
// minute.
func refreshTickets(t *testing.T, ms ...*Manager) {
	t.Helper()
	for _, m := range ms {
		m.ticketKeys() // the local key, and a read started
		for m.tickets.reading.Load() {
			time.Sleep(time.Millisecond)
		}
		if err := m.refreshTicketKeys(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// Item 6 of the fleet issue: a ticket issued by one process resumes on
// another sharing the storage, over TLS 1.3 and 1.2; after a rotation,
// tickets under the previous key still resume; once a key is past its
// keeping, its tickets get a full handshake, not an error.
func TestSessionTicketsAcrossProcesses(t *testing.T) {
	a, b, clock := ticketManagers(t)
	addrA, addrB := ticketServer(t, a), ticketServer(t, b)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		if resumes(t, addrA, cache, v) {
			t.Fatalf("%s: the first handshake resumed", tls.VersionName(v))
		}
		if !resumes(t, addrB, cache, v) {
			t.Errorf("%s: a ticket from A did not resume on B", tls.VersionName(v))
		}
		if !resumes(t, addrA, cache, v) {
			t.Errorf("%s: a ticket from B did not resume on A", tls.VersionName(v))
		}
	}

	old := tls.NewLRUClientSessionCache(4) // holds a ticket under the first key
	resumes(t, addrA, old, tls.VersionTLS13)
	cache := tls.NewLRUClientSessionCache(4)
	resumes(t, addrA, cache, tls.VersionTLS13)

	clock.Add(ticketRotation)
	refreshTickets(t, a, b)
	var keys []ticketKey
	b0, _ := a.store.Load(context.Background(), storage.TicketKeysKey)
	if err := json.Unmarshal(b0, &keys); err != nil || len(keys) != 2 {
		t.Fatalf("after a rotation, %d keys stored (%v), want 2", len(keys), err)
	}
	if !resumes(t, addrB, cache, tls.VersionTLS13) {
		t.Error("a ticket under the previous key did not resume after a rotation")
	}
	clock.Add(ticketLead)
	if !resumes(t, addrA, cache, tls.VersionTLS13) || !resumes(t, addrB, cache, tls.VersionTLS13) {
		t.Error("tickets did not resume once the new key is in use")
	}

	for range ticketKeep - 1 {
		clock.Add(ticketRotation)
		refreshTickets(t, a, b)
	}
	if resumes(t, addrB, old, tls.VersionTLS13) {
		t.Error("a ticket under a key dropped from storage still resumed")
	}
	if !resumes(t, addrA, old, tls.VersionTLS13) {
		t.Error("no resumption after the full handshake that replaced the old ticket")
	}
}

// Session-ticket keys are never logged, and a corrupt record is reported
// and replaced; storage that refuses them leaves tickets working on this
// process alone.
func TestSessionTicketKeysFaults(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	m := cachedManager(t, 10, "tickets.example.com")
	m.Logger = zap.New(core)
	ctx := context.Background()
	for _, bad := range []string{"{not json", `[{"id":"AAAAAAAAAAA=","secret":"c2hvcnQ="}]`} {
		if err := m.store.Store(ctx, storage.TicketKeysKey, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		refreshTickets(t, m)
	}
	b, _ := m.store.Load(ctx, storage.TicketKeysKey)
	var keys []ticketKey
	if err := json.Unmarshal(b, &keys); err != nil || len(keys) != 1 {
		t.Errorf("the corrupt record was not replaced: %q", b)
	}
	if n := logs.FilterMessageSnippet("unusable session-ticket keys").Len(); n != 2 {
		t.Errorf("two corrupt records were reported %d times, want once each", n)
	}
	for _, e := range logs.All() {
		for _, k := range keys {
			for _, f := range e.Context {
				if f.String != "" && string(k.Secret) == f.String {
					t.Error("a ticket key was logged")
				}
			}
		}
	}

	ro := cachedManager(t, 10, "tickets.example.com")
	ro.store = failingStore{ro.store}
	ro.Logger = zap.New(core)
	addr := ticketServer(t, ro)
	cache := tls.NewLRUClientSessionCache(4)
	resumes(t, addr, cache, tls.VersionTLS13)
	if !resumes(t, addr, cache, tls.VersionTLS13) {
		t.Error("with storage failing, tickets did not resume on the process that issued them")
	}
	waitFor(t, "the warning", func() bool {
		return logs.FilterMessageSnippet("session-ticket keys; tickets resume on this process only").Len() > 0
	})
}

// failingStore fails every read and write.
type failingStore struct{ storage.Storage }

func (failingStore) Load(context.Context, string) ([]byte, error) { return nil, errFailing }
func (failingStore) Store(context.Context, string, []byte) error  { return errFailing }

var errFailing = io.ErrUnexpectedEOF

// anyNameCache offers its one session whatever server name the client
// dials, as a client that ignored RFC 6066 would.
type anyNameCache struct{ cs *tls.ClientSessionState }

func (c *anyNameCache) Get(string) (*tls.ClientSessionState, bool) { return c.cs, c.cs != nil }
func (c *anyNameCache) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.cs = cs
	}
}

// A session resumes only for the server name it was for (RFC 6066),
// whichever process the client reaches.
func TestSessionTicketsKeepTheirServerName(t *testing.T) {
	a := cachedManager(t, 10, "tickets.example.com", "other.example.com")
	refreshTickets(t, a)
	addr := ticketServer(t, a)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := &anyNameCache{}
		get := func(name string) bool {
			tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: name, InsecureSkipVerify: true,
				ClientSessionCache: cache, MaxVersion: v}, DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.TLS.DidResume
		}
		get("tickets.example.com")
		if !get("tickets.example.com") {
			t.Errorf("%s: no resumption for the same name", tls.VersionName(v))
		}
		if get("other.example.com") {
			t.Errorf("%s: a session for tickets.example.com resumed for other.example.com", tls.VersionName(v))
		}
	}
}
