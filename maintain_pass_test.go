package acmetls

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// countingStorage counts the reads of a storage.
type countingStorage struct {
	storage.Storage
	loads atomic.Int64
}

func (s *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.loads.Add(1)
	return s.Storage.Load(ctx, key)
}

// trackedManager is a Manager tracking n certificates per key type, issued
// at now and valid 90 days, none in memory: what matters is the schedule.
func trackedManager(tb testing.TB, n int, now time.Time) (*Manager, *countingStorage) {
	tb.Helper()
	st := &countingStorage{Storage: &storage.Memory{}}
	m := &Manager{Storage: st, clock: newFakeClock(now)}
	if err := m.init(); err != nil {
		tb.Fatal(err)
	}
	aki := []byte("an authority key id")
	for i := 0; i < n; i++ {
		for _, kt := range m.keyTypes() {
			m.track(fmt.Sprintf("site%d.example.com", i), kt, &x509.Certificate{
				NotBefore: now, NotAfter: now.Add(90 * 24 * time.Hour),
				AuthorityKeyId: aki, SerialNumber: big.NewInt(int64(i + 1)),
			}, &storage.CertRecord{}, stapling{}, false)
		}
	}
	return m, st
}

// A maintenance pass over certificates none of which is due reads no
// record and starts nothing.
func TestMaintenancePassOverNothingDue(t *testing.T) {
	n := 100_000
	if raceEnabled {
		n = 10_000
	}
	now := time.Now()
	m, st := trackedManager(t, n, now)
	var wg sync.WaitGroup
	slots := make(chan struct{}, m.renewConcurrency())
	next := m.maintain(context.Background(), &wg, slots)
	wg.Wait()
	if reads := st.loads.Load(); reads != 0 {
		t.Errorf("a pass over %d certificates none due read %d records", 2*n, reads)
	}
	if !next.After(now) {
		t.Errorf("next wake %v is not after now", next)
	}
	if got := m.sched.queue.Len(); got != 2*n {
		t.Errorf("queue holds %d, want %d", got, 2*n)
	}
}

// BenchmarkMaintenancePass is B5: one maintenance pass over 100,000 names
// with two certificates each, none due.
func BenchmarkMaintenancePass(b *testing.B) {
	now := time.Now()
	m, st := trackedManager(b, 100_000, now)
	var wg sync.WaitGroup
	slots := make(chan struct{}, m.renewConcurrency())
	b.ReportAllocs()
	for b.Loop() {
		m.maintain(context.Background(), &wg, slots)
	}
	b.ReportMetric(float64(st.loads.Load())/float64(b.N), "reads/op")
}
