package acmetls

import (
	"sync"
	"time"
)

// fakeClock is a clock tests move by hand; its timers fire when Set
// reaches them.
type fakeClock struct {
	mu     sync.Mutex // guards now and timers
	now    time.Time
	timers map[*fakeTimer]struct{}
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
	f  func() // AfterFunc's, instead of c
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t and fires the timers due by then.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	for ft := range c.timers {
		if !ft.at.After(t) {
			if ft.f != nil {
				go ft.f()
			} else {
				ft.c <- t
			}
			delete(c.timers, ft)
		}
	}
}

// Add moves the clock forward by d.
func (c *fakeClock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ft := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		ft.c <- c.now
		return ft.c, func() bool { return false }
	}
	if c.timers == nil {
		c.timers = make(map[*fakeTimer]struct{})
	}
	c.timers[ft] = struct{}{}
	return ft.c, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.timers[ft]
		delete(c.timers, ft)
		return ok
	}
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d <= 0 {
		go f()
		return func() bool { return false }
	}
	ft := &fakeTimer{at: c.now.Add(d), f: f}
	if c.timers == nil {
		c.timers = make(map[*fakeTimer]struct{})
	}
	c.timers[ft] = struct{}{}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.timers[ft]
		delete(c.timers, ft)
		return ok
	}
}

// setFor moves the clock to t and nudges m's Run, which may not have
// armed its next timer yet when the clock moves.
func (c *fakeClock) setFor(m *Manager, t time.Time) {
	c.Set(t)
	select {
	case m.sched.wake <- struct{}{}:
	default:
	}
}
