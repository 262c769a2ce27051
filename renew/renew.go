// Package renew decides when certificates are renewed, following Let's
// Encrypt's Integration Guide: at a third of the lifetime remaining (half,
// for lifetimes under ten days), earlier or later when the CA's ACME
// Renewal Information (RFC 9773) says so, spread over time rather than all
// at once, and after a failure backing off 1 minute, 10 minutes, 100
// minutes, then a day.
//
// Everything here is a pure function of its inputs and an instant: the
// caller brings the clock, so every rule is testable in microseconds.
package renew

import (
	"hash/fnv"
	"time"
)

// shortLifetime is the lifetime under which certificates renew at half
// their lifetime rather than a third remaining.
const shortLifetime = 10 * 24 * time.Hour

// RatioTime returns when a certificate valid from notBefore to notAfter is
// due by its lifetime alone: when a third of its lifetime remains, or half
// for a lifetime under ten days. It is the backstop when the CA offers no
// renewal information.
func RatioTime(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	remaining := life / 3
	if life < shortLifetime {
		remaining = life / 2
	}
	return notAfter.Add(-remaining)
}

// Window is a renewal window suggested by the CA (RFC 9773 §4.2).
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Valid reports whether w is a window: a start before its end.
func (w Window) Valid() bool { return !w.Start.IsZero() && w.Start.Before(w.End) }

// Pick returns the instant at fraction u (in [0, 1)) of w: with u uniformly
// random, a uniformly random instant in the window, as RFC 9773 §4.2 asks.
func (w Window) Pick(u float64) time.Time {
	if u < 0 || u >= 1 {
		u = 0
	}
	return w.Start.Add(time.Duration(u * float64(w.End.Sub(w.Start))))
}

// ARI is what a client keeps of a certificate's renewal information.
type ARI struct {
	Window Window `json:"window"`
	// Selected is the instant picked in Window; it is kept until the CA
	// changes the window.
	Selected time.Time `json:"selected"`
	// NextPoll is when to ask the CA again: its Retry-After, capped so
	// that renewal information is read at least twice a day.
	NextPoll       time.Time `json:"next_poll"`
	ExplanationURL string    `json:"explanation_url,omitempty"`
}

// MaxPollInterval is the longest wait between two reads of a certificate's
// renewal information.
const MaxPollInterval = 12 * time.Hour

// Update returns a with the CA's new answer: window w, Retry-After
// retryAfter (zero if none), read at now; u picks the instant when the
// window is new. An answer without a valid window keeps the old one.
func (a ARI) Update(w Window, explanation string, retryAfter, now time.Time, u float64) ARI {
	if w.Valid() && (w != a.Window || a.Selected.IsZero()) {
		a.Window, a.Selected = w, w.Pick(u)
	}
	a.ExplanationURL = explanation
	a.NextPoll = NextPoll(retryAfter, now)
	return a
}

// NextPoll returns when to read renewal information again, given the CA's
// Retry-After (zero if none): never later than MaxPollInterval from now,
// never earlier than a minute.
func NextPoll(retryAfter, now time.Time) time.Time {
	latest := now.Add(MaxPollInterval)
	switch {
	case retryAfter.IsZero() || retryAfter.After(latest):
		return latest
	case retryAfter.Before(now.Add(time.Minute)):
		return now.Add(time.Minute)
	}
	return retryAfter
}

// Deadline returns the latest instant a certificate valid from notBefore
// to notAfter starts renewing, whatever the CA's window says: a tenth of
// its lifetime before it expires, so that a renewal that fails, or a
// handshake that fetches the renewed certificate, still has time.
func Deadline(notBefore, notAfter time.Time) time.Time {
	return notAfter.Add(-notAfter.Sub(notBefore) / 10)
}

// Due returns when a certificate is due for renewal: the instant picked in
// the CA's window when there is one (a window already past means now, as
// when the CA wants the certificate replaced at once), else the lifetime
// ratio. An instant picked after the certificate expires is ignored; one
// picked past the Deadline is the Deadline.
func Due(notBefore, notAfter time.Time, ari *ARI, now time.Time) time.Time {
	ratio := RatioTime(notBefore, notAfter)
	if ari == nil || !ari.Window.Valid() || ari.Selected.IsZero() {
		return ratio
	}
	if !now.Before(ari.Window.End) {
		return now
	}
	if !ari.Selected.Before(notAfter) {
		return ratio
	}
	return minTime(ari.Selected, Deadline(notBefore, notAfter))
}

// Start returns when a certificate due at due starts renewing: due spread
// over window by key (see Spread), but never past its Deadline unless due
// already is.
func Start(key string, due, notBefore, notAfter time.Time, window time.Duration) time.Time {
	latest := Deadline(notBefore, notAfter)
	if due.After(latest) {
		latest = due
	}
	return minTime(Spread(key, due, notAfter, window), latest)
}

// Spread returns when a certificate due at due should start renewing: due
// plus an offset in [0, window) fixed by key (the name and key type), so
// that certificates falling due together start over the window instead of
// at once, and every process sharing storage computes the same instant.
// The offset never takes the start past the first quarter of what remains
// before notAfter.
func Spread(key string, due, notAfter time.Time, window time.Duration) time.Time {
	if window <= 0 {
		return due
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	offset := time.Duration(h.Sum64() % uint64(window))
	if limit := notAfter.Sub(due) / 4; offset > limit {
		offset = max(limit, 0)
	}
	return due.Add(offset)
}
