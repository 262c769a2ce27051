package acmetls

import (
	"context"
	"sync"
)

// unattended is what a handshake does for a Manager whose Run is not
// running: if something in the schedule is due (a renewal, a renewal
// information read, a staple to refresh or drop), it starts one
// maintenance pass in the background, unless one is running. The pass is
// Run's, with its bounds: RenewConcurrency renewals at once, RenewPerHour,
// the backoff. A Warn line says, once, that Run is not running.
//
//go:noinline
func (m *Manager) unattended() {
	if !m.passing.CompareAndSwap(false, true) {
		return
	}
	s := &m.sched
	s.due.Store(false)
	m.noRunOnce.Do(func() {
		m.logger().Named("renew").Warn("Run is not running: certificates are renewed, and staples refreshed, only when a handshake finds them due; " +
			"call Run, or serve with Serve, to maintain them on time")
	})
	go func() {
		defer m.passing.Store(false)
		ctx := context.Background()
		var wg sync.WaitGroup // not waited for: the work ends on its own
		m.maintain(ctx, &wg, m.unattendedSlots)
		s.mu.Lock()
		s.armed = 0 // arm again, even for the same first entry
		s.noteNext()
		s.mu.Unlock()
		if now := m.now(); m.unsaved.len() > 0 {
			if at := m.flushAt.Load(); now.UnixNano() >= at {
				m.flushAt.Store(now.Add(flushInterval).UnixNano())
				m.flushUnsaved(ctx)
			}
		}
	}()
}
