package acmetls

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

// The fault suite, part three: what a hostile client sends. Each test
// prints its figures.

// syncBuffer is a bytes.Buffer safe for the server's logger.
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

// Item 4: a 64 KiB server name is refused before any other work: it costs
// no more than an ordinary bad name, reads nothing, and its error (the
// server's log line) quotes at most about 100 bytes of it.
func TestOversizedServerName(t *testing.T) {
	t.Parallel()
	st := &countingStorage{Storage: &storage.Memory{}}
	m := &Manager{Storage: st}
	huge := strings.Repeat("a", 64<<10)
	hugeHello := &tls.ClientHelloInfo{ServerName: huge, SupportedVersions: []uint16{tls.VersionTLS13}}
	badHello := &tls.ClientHelloInfo{ServerName: "bad_name!.example.com", SupportedVersions: []uint16{tls.VersionTLS13}}
	_, err := m.GetCertificate(hugeHello)
	var ne *NameError
	if !errors.As(err, &ne) || len(err.Error()) > 300 {
		t.Fatalf("a 64 KiB name: %d-byte error %.300v", len(err.Error()), err)
	}
	cost := func(h *tls.ClientHelloInfo) float64 {
		best := 0.0
		for range 3 {
			r := testing.Benchmark(func(b *testing.B) {
				for b.Loop() {
					_, _ = m.GetCertificate(h)
				}
			})
			if ns := float64(r.T.Nanoseconds()) / float64(r.N); best == 0 || ns < best {
				best = ns
			}
		}
		return best
	}
	bad, long := cost(badHello), cost(hugeHello)

	// Through a real server: the handshake error it logs.
	var logged syncBuffer
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = m.TLSConfig()
	srv.Config.ErrorLog = log.New(&logged, "", 0)
	srv.StartTLS()
	defer srv.Close()
	name := strings.Repeat("a", 60_000) // what fits in one ClientHello
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{ServerName: name})
	if err == nil {
		conn.Close()
		t.Fatal("handshake succeeded")
	}
	waitFor(t, "the server's log line", func() bool { return strings.Contains(logged.String(), "handshake error") })
	line := strings.TrimSpace(logged.String())
	t.Logf("64 KiB server name: %.0f ns to refuse (an ordinary bad name: %.0f ns, ratio %.2f), %d storage reads; 60 KB name over TLS: server log line of %d bytes",
		long, bad, long/bad, st.loads.Load(), len(line))
	if long > 10*bad {
		t.Errorf("a 64 KiB name costs %.1fx an ordinary bad name", long/bad)
	}
	if len(line) > 1024 || st.loads.Load() != 0 {
		t.Errorf("log line of %d bytes: %.200s; %d reads", len(line), line, st.loads.Load())
	}
}

// Item 5: http-01 tokens are checked before storage is read: an oversized
// or malformed token is a 404 that reads nothing and logs nothing; tokens
// that differ in case only are distinct answers.
func TestChallengeTokensAreChecked(t *testing.T) {
	t.Parallel()
	mem := &storage.Memory{}
	st := &countingStorage{Storage: mem}
	core, logs := observer.New(zapcore.DebugLevel)
	m := &Manager{Storage: st, Logger: zap.New(core)}
	srv := httptest.NewServer(m.HTTPHandler(nil))
	defer srv.Close()
	var statuses []int
	for _, tok := range []string{strings.Repeat("A", 5000), "..%2F..%2Fetc%2Fpasswd", "tok.en", "tok%00en", "x y"} {
		resp, err := http.Get(srv.URL + httpChallengePath + tok)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("token %.40q: status %d, want 404", tok, resp.StatusCode)
		}
	}
	// A megabyte token does not even reach the handler.
	rec := httptest.NewRecorder()
	m.HTTPHandler(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, httpChallengePath+strings.Repeat("b", 1<<20), nil))
	statuses = append(statuses, rec.Code)
	logBytes := 0
	for _, e := range logs.All() {
		logBytes += len(e.Message)
		for _, f := range e.Context {
			logBytes += len(f.String) + len(f.Key)
		}
	}
	t.Logf("hostile tokens (5 KB, path traversal, dots, NUL, space, 1 MB): statuses %v, %d storage reads, %d bytes logged", statuses, st.loads.Load(), logBytes)
	if st.loads.Load() != 0 || rec.Code != http.StatusNotFound || logBytes > 1024 {
		t.Errorf("%d reads, 1 MB token status %d, %d bytes logged", st.loads.Load(), rec.Code, logBytes)
	}

	// Tokens are case-sensitive: two that differ in case only are two
	// answers, each served by a sibling reading storage.
	ctx := context.Background()
	upper, lower := "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd", "abcdefghijklmnopqrstuvwxyz0123456789-_abcd"
	for tok, ka := range map[string]string{upper: "ka-upper", lower: "ka-lower"} {
		if err := (solver{m}).Present(ctx, acme.Challenge{Type: acme.ChallengeTypeHTTP01, Token: tok, KeyAuthorization: ka}); err != nil {
			t.Fatal(err)
		}
	}
	siblingStorage := &countingStorage{Storage: mem}
	sibling := &Manager{Storage: siblingStorage, OnDemand: &OnDemand{Names: []string{"served.example.com"}}, clock: newFakeClock(time.Now())}
	ask := func(host, tok string) string {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, httpChallengePath+tok, nil)
		req.Host = host
		sibling.HTTPHandler(nil).ServeHTTP(rec, req)
		return rec.Body.String()
	}
	for tok, want := range map[string]string{upper: "ka-upper", lower: "ka-lower"} {
		if got := ask("served.example.com:80", tok); got != want {
			t.Errorf("token %s from storage: %q, want %q", tok, got, want)
		}
	}
	// Well-formed random tokens for hosts the sibling would not serve:
	// a few reads a second at most, not one per request.
	waitFor(t, "the listing of stored names", func() bool { _, known := sibling.names.mayHold("x.example.com"); return known })
	reads := siblingStorage.loads.Load()
	for i := range 1000 {
		ask(fmt.Sprintf("r%d.example.net", i), fmt.Sprintf("tok%040d", i))
	}
	n := siblingStorage.loads.Load() - reads
	t.Logf("1,000 well-formed tokens for hosts not served, within an instant: %d storage reads (the bound: a burst of %d, then %d a second)", n, answerReadsBurst, answerReadsPerSecond)
	if n > answerReadsBurst {
		t.Errorf("%d storage reads", n)
	}
}

// tls-alpn-01 validation hellos for names this Manager would not serve
// read storage a few times a second at most: such a hello costs a client
// nothing.
func TestALPNChallengeHellosForUnservedNamesReadNothing(t *testing.T) {
	t.Parallel()
	st := &countingStorage{Storage: &storage.Memory{}}
	m := &Manager{Storage: st, clock: newFakeClock(time.Now())}
	m.GetCertificate(&tls.ClientHelloInfo{ServerName: "first.example.com", SupportedVersions: []uint16{tls.VersionTLS13}})
	waitFor(t, "the listing of stored names", func() bool { _, known := m.names.mayHold("x.example.com"); return known })
	before := st.loads.Load()
	for i := range 200 {
		hello := &tls.ClientHelloInfo{ServerName: fmt.Sprintf("a%d.example.com", i), SupportedProtos: []string{acmeTLS1Protocol},
			SupportedVersions: []uint16{tls.VersionTLS13}}
		if _, err := m.GetCertificate(hello); err == nil {
			t.Fatal("a challenge certificate for a name with no challenge")
		}
	}
	n := st.loads.Load() - before
	t.Logf("200 acme-tls/1 hellos for names not served, within an instant: %d storage reads (a burst of %d, then %d a second)", n, answerReadsBurst, answerReadsPerSecond)
	if n > answerReadsBurst {
		t.Errorf("%d storage reads", n)
	}
}

// Event.String says what an admin needs, and no backoff where there is
// none.
func TestEventString(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	boom := errors.New("boom")
	for _, tc := range []struct {
		e    Event
		want string
	}{
		{Event{Kind: EventObtained, ServerName: "a.example.com", KeyType: ECDSAP256}, "obtained a.example.com (ecdsa-p256)"},
		{Event{Kind: EventObtainFailed, ServerName: "a.example.com", KeyType: RSA2048, Attempt: 2, NextAttempt: at, Err: boom},
			"obtain_failed a.example.com (rsa-2048): attempt 2, next at 2026-12-01T10:00:00Z: boom"},
		{Event{Kind: EventObtainFailed, ServerName: "a.example.com", KeyType: RSA2048, NextAttempt: at, Err: boom},
			"obtain_failed a.example.com (rsa-2048): not counted against the name, next at 2026-12-01T10:00:00Z: boom"},
		{Event{Kind: EventAccountReplaced, ServerName: "a.example.com", Err: boom}, "account_replaced a.example.com: boom"},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// The longest host names are stored like any other: their storage keys
// and lock files fit a file system, so a client asking for one (where the
// policy allows it) cannot make storage fail for every name.
func TestLongestNamesAreStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	var evs events
	e.manager(func(m *Manager) {
		m.KeyTypes = []KeyType{ECDSAP256}
		m.OnDemand = &OnDemand{Decision: func(context.Context, string) error { return nil }}
		m.OnEvent = evs.add
	})
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 49) + ".example.com"
	if len(long) != maxNameLen {
		t.Fatalf("name of %d bytes", len(long))
	}
	_, err := e.handshakeWithin(long, nil, time.Minute)
	if _, err2 := e.handshakeWithin("short.example.com", nil, time.Minute); err2 != nil {
		t.Fatalf("a short name after a 253-byte one: %v", err2)
	}
	t.Logf("a 253-byte name: %v; failures %v", err, evs.of(EventObtainFailed))
	for _, ev := range evs.of(EventObtainFailed) {
		if ev.Attempt == 0 {
			t.Errorf("a long name tripped the breaker: %v", ev)
		}
	}
}
