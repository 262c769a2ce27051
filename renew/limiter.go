package renew

import "time"

// Limiter bounds how many renewals start per hour, over a sliding hour.
// The zero value allows everything; it is not safe for concurrent use.
type Limiter struct {
	// PerHour is the most starts in any hour; zero means no bound.
	PerHour int
	starts  []time.Time // ring of the last PerHour starts
	next    int
}

// Allow reports whether a renewal may start at now, and records it if so.
func (l *Limiter) Allow(now time.Time) bool {
	if l.PerHour <= 0 {
		return true
	}
	if len(l.starts) < l.PerHour {
		l.starts = append(l.starts, now)
		return true
	}
	oldest := l.starts[l.next]
	if now.Sub(oldest) < time.Hour {
		return false
	}
	l.starts[l.next] = now
	l.next = (l.next + 1) % l.PerHour
	return true
}

// NextAllowed returns the earliest instant at or after now when Allow
// would return true.
func (l *Limiter) NextAllowed(now time.Time) time.Time {
	if l.PerHour <= 0 || len(l.starts) < l.PerHour {
		return now
	}
	if t := l.starts[l.next].Add(time.Hour); t.After(now) {
		return t
	}
	return now
}
