package acmetls

import "time"

// clock is the Manager's time: the real one, or one a test moves. Every
// time the Manager reads and every timer it waits on go through it, so
// that tests of renewal, backoff and staple expiry run in microseconds.
type clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
	// AfterFunc calls f in its own goroutine once d has passed, and
	// returns a function that stops the timer.
	AfterFunc(d time.Duration, f func()) func() bool
}

// realClock is the wall clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// now is the Manager's current time.
func (m *Manager) now() time.Time {
	if m.clock != nil {
		return m.clock.Now()
	}
	return time.Now()
}

// newTimer starts a timer of d on the Manager's clock.
func (m *Manager) newTimer(d time.Duration) (<-chan time.Time, func() bool) {
	if m.clock != nil {
		return m.clock.NewTimer(d)
	}
	return realClock{}.NewTimer(d)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
