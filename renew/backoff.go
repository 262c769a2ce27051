package renew

import "time"

// Delays are the waits after the first, second, third and fourth failure
// in a row; after that, Delays' last, a day, applies to every failure.
var Delays = [...]time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour}

// Backoff returns the wait after the given number of failures in a row
// (1 for the first).
func Backoff(failures int) time.Duration {
	switch {
	case failures <= 0:
		return 0
	case failures > len(Delays):
		return Delays[len(Delays)-1]
	}
	return Delays[failures-1]
}

// State is a certificate's renewal state: what failed and when to try
// again. It is kept in storage, so a restarted process, or another process
// sharing the storage, keeps the schedule.
type State struct {
	Failures    int       `json:"failures"`
	LastAttempt time.Time `json:"last_attempt"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	// ProblemType is the CA's problem type for the last error, if any.
	ProblemType string `json:"problem_type,omitempty"`
}

// Failed returns the state after a failed attempt at now. The next
// attempt is the backoff after this failure, or the CA's Retry-After
// (zero if none) when that is later.
func (s State) Failed(now time.Time, errText, problemType string, retryAfter time.Time) State {
	s.Failures++
	s.LastAttempt = now
	s.NextAttempt = now.Add(Backoff(s.Failures))
	if retryAfter.After(s.NextAttempt) {
		s.NextAttempt = retryAfter
	}
	s.LastError, s.ProblemType = errText, problemType
	return s
}

// MayAttempt reports whether an attempt may start at now.
func (s State) MayAttempt(now time.Time) bool {
	return s.NextAttempt.IsZero() || !now.Before(s.NextAttempt)
}

// RetryNow returns the state an administrator's early retry leaves: the
// failures are remembered for the log, the wait is cleared.
func (s State) RetryNow() State {
	s.NextAttempt = time.Time{}
	return s
}
