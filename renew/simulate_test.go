package renew

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// A provider issued 100,000 certificates within one hour. Driven by the
// Queue, Spread and Limiter a Manager uses, with a concurrency of 8 and at
// most 1,500 starts an hour, renewals never exceed either bound, and every
// certificate is renewed before half of its last third has passed.
func TestSpreadSimulation(t *testing.T) {
	const (
		certs       = 100_000
		life        = 90 * day
		concurrency = 8
		perHour     = 1_500
		spread      = 12 * time.Hour
		orderTime   = 20 * time.Second
	)
	r := rand.New(rand.NewPCG(7, 8))
	var q Queue[*cert]
	for i := 0; i < certs; i++ {
		nb := t0.Add(time.Duration(r.Int64N(int64(time.Hour))))
		c := &cert{key: fmt.Sprintf("site%d.example.com/ecdsa-p256", i), notBefore: nb, notAfter: nb.Add(life)}
		q.Push(c, Spread(c.key, Due(c.notBefore, c.notAfter, nil, t0), c.notAfter, spread))
	}

	lim := &Limiter{PerHour: perHour}
	var (
		running   finishHeap
		now       = t0
		peakConc  int
		startsIn  = map[int64]int{} // per clock hour
		latest    time.Duration     // worst finish, measured from due
		renewed   int
		worstLeft = life
	)
	for renewed < certs {
		// Finish what is done by now.
		for running.Len() > 0 && !running[0].at.After(now) {
			f := heap.Pop(&running).(finish)
			c := f.cert
			due := RatioTime(c.notBefore, c.notAfter)
			latest = max(latest, f.at.Sub(due))
			worstLeft = min(worstLeft, c.notAfter.Sub(f.at))
			deadline := due.Add(c.notAfter.Sub(due) / 2)
			if f.at.After(deadline) {
				t.Fatalf("%s renewed at %v, after its deadline %v", c.key, f.at, deadline)
			}
			renewed++
		}
		for _, c := range q.PopDue(now, concurrency-running.Len()) {
			if !lim.Allow(now) {
				q.Push(c, lim.NextAllowed(now))
				continue
			}
			heap.Push(&running, finish{cert: c, at: now.Add(orderTime)})
			startsIn[now.Unix()/3600]++
		}
		peakConc = max(peakConc, running.Len())
		// Next event: a finish, a due start, or the limiter opening.
		next := now.Add(time.Hour)
		if running.Len() > 0 && running[0].at.Before(next) {
			next = running[0].at
		}
		if start, ok := q.Next(); ok && running.Len() < concurrency {
			next = minTime(next, maxTime(start, lim.NextAllowed(now)))
		}
		now = maxTime(next, now.Add(time.Second))
	}
	peakHour := 0
	for _, n := range startsIn {
		peakHour = max(peakHour, n)
	}
	t.Logf("100000 certificates issued within an hour: peak %d renewals in flight (bound %d), peak %d starts in an hour (bound %d), last renewal %v after its due time, at least %v before expiry",
		peakConc, concurrency, peakHour, perHour, latest.Round(time.Minute), worstLeft.Round(time.Hour))
	if peakConc > concurrency {
		t.Errorf("peak concurrency %d > %d", peakConc, concurrency)
	}
	if peakHour > perHour {
		t.Errorf("peak starts per hour %d > %d", peakHour, perHour)
	}
}

type cert struct {
	Entry
	key                 string
	notBefore, notAfter time.Time
}

type finish struct {
	cert *cert
	at   time.Time
}

type finishHeap []finish

func (h finishHeap) Len() int           { return len(h) }
func (h finishHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h finishHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *finishHeap) Push(x any)        { *h = append(*h, x.(finish)) }
func (h *finishHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
