package acmetls

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// statusNames is the number of names of the status tests: 100,000, as
// the cold-start benchmark's storage; fewer under the race detector.
func statusNames() int {
	if raceEnabled {
		return 10_000
	}
	return 100_000
}

// rateLimited is the CA's answer to an order past a rate limit.
var rateLimited = acme.Problem{
	Type:   acme.ProblemTypeRateLimited,
	Detail: "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s",
	Status: 429,
}

// failingManager is trackedManager with the renewals of failing names
// failed, once or more, and one name whose first issuance failed.
func failingManager(t testing.TB, n int, failing []int, now time.Time) *Manager {
	m, _ := trackedManager(t, n, now)
	m.Logger = zap.NewNop()
	ctx := context.Background()
	for i, site := range failing {
		name := fmt.Sprintf("site%d.example.com", site)
		var st renew.State
		for range i%3 + 1 { // 1 to 3 failures
			st.Failures++
			m.failed(ctx, EventRenewFailed, name, ECDSAP256, renew.State{Failures: st.Failures - 1}, rateLimited, time.Time{}, now.Add(90*24*time.Hour))
		}
	}
	m.failed(ctx, EventObtainFailed, "new.example.com", RSA2048, renew.State{}, rateLimited, time.Time{}, time.Time{})
	return m
}

// Issue 14, item 1: the status API over 100,000 names lists them all,
// with their fields, the failing first.
func TestStatusListsEveryCertificate(t *testing.T) {
	n := statusNames()
	now := time.Now()
	failing := []int{7, 70, 700, n - 1, n / 2}
	m := failingManager(t, n, failing, now)
	ctx := context.Background()
	total := 2*n + 1 // two key types, and the name never obtained
	seen := make(map[string]bool, total)
	var all []CertificateStatus
	for offset := 0; ; offset += MaxStatusLimit {
		rep, err := m.Status(ctx, StatusQuery{Offset: offset, Limit: MaxStatusLimit})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Total != total || rep.Counts.Certificates != total {
			t.Fatalf("total %d, counts %+v; want %d", rep.Total, rep.Counts, total)
		}
		if len(rep.Certificates) == 0 {
			break
		}
		for _, c := range rep.Certificates {
			key := c.Name + "/" + string(c.KeyType)
			if seen[key] {
				t.Fatalf("%s listed twice", key)
			}
			seen[key] = true
		}
		all = append(all, rep.Certificates...)
	}
	if len(all) != total {
		t.Fatalf("listed %d certificates, want %d", len(all), total)
	}
	// The failing first, most failures first.
	for i, c := range all[:len(failing)+1] {
		if c.State != StateFailing || c.Failures == 0 || c.ProblemType != acme.ProblemTypeRateLimited ||
			c.ProblemDetail != rateLimited.Detail || !c.NextAttempt.After(now) || c.LastError == "" {
			t.Errorf("row %d: %+v, want a failing certificate with the CA's problem and its next attempt", i, c)
		}
		if i > 0 && c.Failures > all[i-1].Failures {
			t.Errorf("row %d has %d failures, after a row with %d", i, c.Failures, all[i-1].Failures)
		}
	}
	var neverObtained bool
	for _, c := range all[:len(failing)+1] {
		if c.Name == "new.example.com" {
			neverObtained = c.Serial == "" && c.KeyType == RSA2048
		}
	}
	if !neverObtained {
		t.Error("the name whose first issuance failed is not among the failing, without a serial")
	}
	for i, c := range all[len(failing)+1:] {
		if c.State != StateOK || c.Failures != 0 {
			t.Fatalf("row %d after the failing: %+v", i, c)
		}
		if c.Serial == "" || c.NotAfter.IsZero() || c.RenewAt.IsZero() || c.RenewReason != "lifetime" || c.Staple != "none" {
			t.Fatalf("row %d lacks fields: %+v", i, c)
		}
	}
	rep, err := m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	want := StatusCounts{Certificates: total, Failing: len(failing) + 1, OK: total - len(failing) - 1}
	if rep.Counts != want {
		t.Errorf("counts %+v, want %+v", rep.Counts, want)
	}
	if len(rep.Certificates) != DefaultStatusLimit {
		t.Errorf("a page of %d, want %d", len(rep.Certificates), DefaultStatusLimit)
	}
}

func TestStatusFilters(t *testing.T) {
	now := time.Now()
	m := failingManager(t, 100, []int{3, 5}, now)
	clock := m.clock.(*fakeClock)
	ctx := context.Background()
	count := func(q StatusQuery) int {
		t.Helper()
		rep, err := m.Status(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return rep.Total
	}
	if n := count(StatusQuery{Failing: true}); n != 3 {
		t.Errorf("failing: %d, want 3", n)
	}
	if n := count(StatusQuery{Name: "SITE3.example.com."}); n != 2 {
		t.Errorf("one name: %d, want its 2 key types", n)
	}
	if n := count(StatusQuery{Name: "site3.example.com", Failing: true}); n != 1 {
		t.Errorf("one name, failing: %d, want 1", n)
	}
	if n := count(StatusQuery{ExpiringWithin: 7 * 24 * time.Hour}); n != 0 {
		t.Errorf("expiring within a week of 90-day certificates just issued: %d", n)
	}
	if n := count(StatusQuery{Due: true}); n != 0 {
		t.Errorf("due: %d", n)
	}
	clock.Add(85 * 24 * time.Hour)
	if n := count(StatusQuery{ExpiringWithin: 7 * 24 * time.Hour}); n != 200 {
		t.Errorf("expiring within a week, 5 days before expiry: %d, want 200", n)
	}
	if n := count(StatusQuery{Due: true}); n != 200 {
		t.Errorf("due 5 days before expiry: %d, want 200", n)
	}
	rep, err := m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Expiring != 198 || rep.Counts.Failing != 3 {
		t.Errorf("counts 5 days before expiry: %+v", rep.Counts)
	}
	if _, err := m.Status(ctx, StatusQuery{Name: "not a name"}); err == nil || !strings.Contains(err.Error(), "not a name") {
		t.Errorf("a bad name: %v", err)
	}
}

// BenchmarkStatus is B10: the status API over 100,000 names with two
// certificates each, 1,000 of them failing: the first page of all, and
// the failing ones.
func BenchmarkStatus(b *testing.B) {
	n := 100_000
	failing := make([]int, 1000)
	for i := range failing {
		failing[i] = i * 100
	}
	m := failingManager(b, n, failing, time.Now())
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		q    StatusQuery
	}{{"query=all", StatusQuery{}}, {"query=failing", StatusQuery{Failing: true}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rep, err := m.Status(ctx, bc.q)
				if err != nil || rep.Counts.Certificates != 2*n+1 {
					b.Fatal(rep.Counts, err)
				}
			}
		})
	}
}

// listFailing is a storage whose listings fail while fail is set.
type listFailing struct {
	storage.Storage
	fail atomic.Bool
}

func (s *listFailing) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if s.fail.Load() {
		return nil, errors.New("connection refused")
	}
	return s.Storage.List(ctx, prefix, recursive)
}

// With storage down, the status still lists the schedule, with the
// failures last read, and says so.
func TestStatusWithStorageDown(t *testing.T) {
	now := time.Now()
	m := failingManager(t, 50, []int{4}, now)
	st := &listFailing{Storage: m.store}
	m.store = st
	ctx := context.Background()
	if _, err := m.Status(ctx, StatusQuery{}); err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	m.clock.(*fakeClock).Add(time.Minute) // past the states' reuse
	rep, err := m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatalf("with storage down: %v", err)
	}
	if rep.Counts.Certificates != 101 || rep.Counts.Failing != 2 {
		t.Errorf("counts with storage down: %+v", rep.Counts)
	}
	if !strings.Contains(rep.Warning, "connection refused") || !strings.Contains(rep.Warning, "read at") {
		t.Errorf("warning %q", rep.Warning)
	}
}

// hangingList is a storage whose listings hang until released.
type hangingList struct {
	storage.Storage
	hang    atomic.Bool
	release chan struct{}
}

func (s *hangingList) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if s.hang.Load() {
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Storage.List(ctx, prefix, recursive)
}

// A storage that hangs holds a status call no longer than its context,
// and the others' not at all beyond theirs.
func TestStatusWithStorageHanging(t *testing.T) {
	now := time.Now()
	m := failingManager(t, 20, []int{2}, now)
	st := &hangingList{Storage: m.store, release: make(chan struct{})}
	defer close(st.release)
	m.store = st
	if _, err := m.Status(context.Background(), StatusQuery{}); err != nil {
		t.Fatal(err)
	}
	st.hang.Store(true)
	m.clock.(*fakeClock).Add(time.Minute)
	// One caller waits without a deadline (an admin page whose client
	// stays); another with one must not wait behind it.
	go m.Status(context.Background(), StatusQuery{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	rep, err := m.Status(ctx, StatusQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Failing != 2 || !strings.Contains(rep.Warning, "deadline") {
		t.Errorf("with storage hanging: counts %+v, warning %q", rep.Counts, rep.Warning)
	}
}
