package renew

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

func TestRatioTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		life time.Duration
		want time.Duration // after notBefore
	}{
		{"90 days: a third remaining", 90 * day, 60 * day},
		{"45 days", 45 * day, 30 * day},
		{"10 days: still a third", 10 * day, 10 * day * 2 / 3},
		{"6 days: half", 6 * day, 3 * day},
		{"1 hour: half", time.Hour, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RatioTime(t0, t0.Add(tc.life)); !got.Equal(t0.Add(tc.want)) {
				t.Errorf("RatioTime = %v, want %v", got.Sub(t0), tc.want)
			}
		})
	}
}

func TestWindowPick(t *testing.T) {
	w := Window{Start: t0, End: t0.Add(2 * day)}
	for _, tc := range []struct {
		u    float64
		want time.Duration
	}{{0, 0}, {0.5, day}, {0.25, 12 * time.Hour}, {-1, 0}, {1, 0}} {
		if got := w.Pick(tc.u); !got.Equal(t0.Add(tc.want)) {
			t.Errorf("Pick(%v) = +%v, want +%v", tc.u, got.Sub(t0), tc.want)
		}
	}
	// Uniform: picks over many draws cover the window evenly.
	r := rand.New(rand.NewPCG(1, 2))
	var buckets [4]int
	for i := 0; i < 40_000; i++ {
		buckets[int(w.Pick(r.Float64()).Sub(t0)/(12*time.Hour))]++
	}
	for i, n := range buckets {
		if n < 9_000 || n > 11_000 {
			t.Errorf("quarter %d got %d of 40000 picks", i, n)
		}
	}
	if (Window{Start: t0, End: t0}).Valid() || (Window{}).Valid() || !w.Valid() {
		t.Error("Valid is wrong")
	}
}

func TestARIUpdateKeepsItsPickUntilTheWindowChanges(t *testing.T) {
	w1 := Window{Start: t0.Add(60 * day), End: t0.Add(62 * day)}
	a := ARI{}.Update(w1, "", time.Time{}, t0, 0.5)
	if want := t0.Add(61 * day); !a.Selected.Equal(want) {
		t.Fatalf("Selected = %v, want %v", a.Selected, want)
	}
	// Same window again, another draw: the pick stays.
	a = a.Update(w1, "", time.Time{}, t0.Add(time.Hour), 0.9)
	if want := t0.Add(61 * day); !a.Selected.Equal(want) {
		t.Fatalf("Selected moved to %v with an unchanged window", a.Selected)
	}
	// A new window: a new pick inside it.
	w2 := Window{Start: t0.Add(10 * day), End: t0.Add(11 * day)}
	a = a.Update(w2, "https://ca.example/incident", time.Time{}, t0.Add(2*time.Hour), 0)
	if !a.Selected.Equal(w2.Start) || a.ExplanationURL == "" {
		t.Fatalf("after a new window: %+v", a)
	}
	// An answer without a valid window keeps the last one.
	a = a.Update(Window{}, "", time.Time{}, t0.Add(3*time.Hour), 0.7)
	if a.Window != w2 {
		t.Fatalf("an invalid window replaced the last one: %+v", a.Window)
	}
}

func TestNextPoll(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter time.Time
		want       time.Time
	}{
		{"no Retry-After: twice a day", time.Time{}, t0.Add(12 * time.Hour)},
		{"Retry-After honoured", t0.Add(6 * time.Hour), t0.Add(6 * time.Hour)},
		{"Retry-After past twice a day", t0.Add(48 * time.Hour), t0.Add(12 * time.Hour)},
		{"Retry-After in the past", t0.Add(-time.Hour), t0.Add(time.Minute)},
	} {
		if got := NextPoll(tc.retryAfter, t0); !got.Equal(tc.want) {
			t.Errorf("%s: NextPoll = %v, want %v", tc.name, got.Sub(t0), tc.want.Sub(t0))
		}
	}
}

func TestDue(t *testing.T) {
	nb, na := t0, t0.Add(90*day)
	ratio := t0.Add(60 * day)
	now := t0.Add(30 * day)
	ari := func(start, end, selected time.Duration) *ARI {
		return &ARI{Window: Window{Start: t0.Add(start), End: t0.Add(end)}, Selected: t0.Add(selected)}
	}
	for _, tc := range []struct {
		name string
		ari  *ARI
		want time.Time
	}{
		{"no ARI: the ratio", nil, ratio},
		{"ARI earlier than the ratio", ari(40*day, 42*day, 41*day), t0.Add(41 * day)},
		{"ARI later than the ratio", ari(64*day, 66*day, 65*day), t0.Add(65 * day)},
		{"window already past: now", ari(-2*day, 29*day, 28*day), now},
		{"pick after expiry: the ratio", ari(89*day, 95*day, 94*day), ratio},
		{"pick 3s before expiry: the deadline", ari(85*day, 90*day, 90*day-3*time.Second), t0.Add(81 * day)},
		{"no pick yet: the ratio", &ARI{Window: Window{Start: t0, End: t0.Add(day)}}, ratio},
	} {
		if got := Due(nb, na, tc.ari, now); !got.Equal(tc.want) {
			t.Errorf("%s: Due = +%v, want +%v", tc.name, got.Sub(t0), tc.want.Sub(t0))
		}
	}
}

// The backoff instants after the first failure at t0, each attempt failing
// the moment it is allowed: 1m, 10m, 100m, 1d, then a day each time.
func TestBackoffInstants(t *testing.T) {
	var s State
	now := t0
	wantGaps := []time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, day, day, day}
	for i, gap := range wantGaps {
		if !s.MayAttempt(now) {
			t.Fatalf("attempt %d not allowed at its instant", i+1)
		}
		s = s.Failed(now, "boom", "urn:ietf:params:acme:error:serverInternal", time.Time{})
		if got := s.NextAttempt.Sub(now); got != gap {
			t.Fatalf("after failure %d: wait %v, want %v", i+1, got, gap)
		}
		if s.MayAttempt(s.NextAttempt.Add(-time.Nanosecond)) {
			t.Fatalf("after failure %d: an attempt is allowed before the wait ends", i+1)
		}
		now = s.NextAttempt
	}
	// The instants, from the first failure: 1m, 11m, 111m, 1d+111m, 2d+111m, 3d+111m.
	if want := t0.Add(3*day + 111*time.Minute); !now.Equal(want) {
		t.Errorf("sixth wait ends at +%v, want +%v", now.Sub(t0), want.Sub(t0))
	}
	if s.Failures != 6 || s.LastError != "boom" {
		t.Errorf("state = %+v", s)
	}
}

func TestRetryAfterIsAFloor(t *testing.T) {
	for _, tc := range []struct {
		name       string
		failures   int
		retryAfter time.Duration
		want       time.Duration
	}{
		{"Retry-After past the backoff", 0, 3 * time.Hour, 3 * time.Hour},
		{"Retry-After before the backoff", 2, time.Minute, 100 * time.Minute},
		{"no Retry-After", 3, 0, day},
	} {
		s := State{Failures: tc.failures}
		var ra time.Time
		if tc.retryAfter > 0 {
			ra = t0.Add(tc.retryAfter)
		}
		if got := s.Failed(t0, "", "", ra).NextAttempt.Sub(t0); got != tc.want {
			t.Errorf("%s: next attempt +%v, want +%v", tc.name, got, tc.want)
		}
	}
}

func TestRetryNowClearsTheWait(t *testing.T) {
	s := State{}.Failed(t0, "x", "", t0.Add(day))
	if s.MayAttempt(t0.Add(time.Hour)) {
		t.Fatal("allowed during the wait")
	}
	if s = s.RetryNow(); !s.MayAttempt(t0.Add(time.Hour)) || s.Failures != 1 {
		t.Fatalf("after RetryNow: %+v", s)
	}
}

func TestLimiter(t *testing.T) {
	l := Limiter{PerHour: 3}
	for i := 0; i < 3; i++ {
		if !l.Allow(t0.Add(time.Duration(i) * time.Minute)) {
			t.Fatalf("start %d refused", i)
		}
	}
	if l.Allow(t0.Add(59 * time.Minute)) {
		t.Fatal("a fourth start within the hour")
	}
	if got := l.NextAllowed(t0.Add(59 * time.Minute)); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("NextAllowed = +%v", got.Sub(t0))
	}
	if !l.Allow(t0.Add(time.Hour)) {
		t.Fatal("refused once the oldest start is an hour old")
	}
	var unlimited Limiter
	for i := 0; i < 1000; i++ {
		if !unlimited.Allow(t0) {
			t.Fatal("the zero Limiter refused")
		}
	}
}

func TestSpread(t *testing.T) {
	due, na := t0, t0.Add(30*day)
	a := Spread("a.example.com/ecdsa-p256", due, na, 12*time.Hour)
	if a.Before(due) || !a.Before(due.Add(12*time.Hour)) {
		t.Fatalf("Spread = +%v, outside [0, 12h)", a.Sub(due))
	}
	if b := Spread("a.example.com/ecdsa-p256", due, na, 12*time.Hour); !a.Equal(b) {
		t.Fatal("Spread is not the same for the same key")
	}
	// Near expiry the offset shrinks to a quarter of what remains.
	if got := Spread("a.example.com/ecdsa-p256", due, due.Add(time.Hour), 12*time.Hour); got.After(due.Add(15 * time.Minute)) {
		t.Fatalf("Spread near expiry = +%v", got.Sub(due))
	}
}

type job struct {
	Entry
	name string
}

func TestQueue(t *testing.T) {
	var q Queue[*job]
	a, b, c := &job{name: "a"}, &job{name: "b"}, &job{name: "c"}
	q.Push(c, t0.Add(3*time.Hour))
	q.Push(a, t0.Add(time.Hour))
	q.Push(b, t0.Add(2*time.Hour))
	q.Push(c, t0.Add(30*time.Minute)) // moved earlier
	if got := q.PopDue(t0, 10); len(got) != 0 {
		t.Fatalf("nothing due at t0, got %d", len(got))
	}
	var names []string
	for _, j := range q.PopDue(t0.Add(90*time.Minute), 10) {
		names = append(names, j.name)
	}
	if got := fmt.Sprint(names); got != "[c a]" {
		t.Fatalf("PopDue = %s", got)
	}
	if a.Queued() || !b.Queued() {
		t.Fatal("Queued is wrong")
	}
	q.Remove(b)
	q.Remove(b) // not queued: no effect
	if q.Len() != 0 || b.Queued() {
		t.Fatalf("Len = %d", q.Len())
	}
	if _, ok := q.Next(); ok {
		t.Fatal("Next on an empty queue")
	}
}

// Whatever the CA's window and the spreading, a renewal starts with at
// least a tenth of the lifetime left, unless it is already later.
func TestStartLeavesATenthOfTheLifetime(t *testing.T) {
	nb := t0
	for _, life := range []time.Duration{90 * day, 6 * day, time.Hour, 90 * time.Second} {
		na := nb.Add(life)
		r := rand.New(rand.NewPCG(1, uint64(life)))
		for i := 0; i < 2000; i++ {
			now := nb.Add(time.Duration(r.Int64N(int64(life / 2))))
			w := Window{Start: nb.Add(life / 2), End: na} // a window reaching notAfter
			a := ARI{}.Update(w, "", time.Time{}, now, r.Float64())
			key := fmt.Sprintf("n%d.example.com/ecdsa-p256", i)
			start := Start(key, Due(nb, na, &a, now), nb, na, 12*time.Hour)
			if left := na.Sub(start); left < life/10 {
				t.Fatalf("lifetime %v: starts with %v left (window pick %v), want at least %v", life, left, na.Sub(a.Selected), life/10)
			}
		}
	}
	// Already past the deadline: now, not earlier.
	now := nb.Add(95 * time.Minute)
	if got := Start("k", now, nb, nb.Add(100*time.Minute), time.Hour); !got.Equal(now) {
		t.Fatalf("past the deadline: start at +%v, want now", got.Sub(nb))
	}
}

func FuzzParseState(f *testing.F) {
	good, _ := json.Marshal(State{}.Failed(t0, "boom", "urn:x", t0.Add(time.Hour)))
	f.Add(good)
	f.Add([]byte(`{"failures":-1}`))
	f.Add([]byte(`{"next_attempt":"0001-01-01T00:00:00Z","last_attempt":"9999-01-01T00:00:00Z"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			return
		}
		if s.Failures < 0 {
			t.Fatalf("accepted %d failures", s.Failures)
		}
		// What parses, re-encodes and parses to the same.
		again, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := ParseState(again)
		if err != nil || s2.Failures != s.Failures || !s2.NextAttempt.Equal(s.NextAttempt) || s2.LastError != s.LastError {
			t.Fatalf("round trip: %+v -> %+v, %v", s, s2, err)
		}
		// The next state never waits more than the backoff or a week.
		now := s.NextAttempt
		n := s.Failed(now, "x", "", now.Add(365*day))
		if n.NextAttempt.Sub(now) > 7*day || n.NextAttempt.Before(now) {
			t.Fatalf("next attempt %v after %v", n.NextAttempt.Sub(now), now)
		}
	})
}
