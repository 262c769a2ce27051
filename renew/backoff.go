package renew

import (
	"encoding/json"
	"fmt"
	"time"
)

// delays are the waits after the first, second, third and fourth failure
// in a row; after that, the last, a day, applies to every failure.
var delays = [...]time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour}

// Backoff returns the wait after the given number of failures in a row
// (1 for the first): 1 minute, 10 minutes, 100 minutes, then a day.
func Backoff(failures int) time.Duration {
	switch {
	case failures <= 0:
		return 0
	case failures > len(delays):
		return delays[len(delays)-1]
	}
	return delays[failures-1]
}

// State is a certificate's renewal state: what failed and when to try
// again. It is kept in storage, so a restarted process, or another process
// sharing the storage, keeps the schedule.
type State struct {
	// Name is the name the state is of: its storage key holds it in a
	// form that cannot always be read back (an IPv6 address, say).
	Name        string    `json:"name,omitempty"`
	Failures    int       `json:"failures"`
	LastAttempt time.Time `json:"last_attempt"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	// ProblemType is the CA's problem type for the last error, if any.
	ProblemType string `json:"problem_type,omitempty"`
	// ProblemDetail is the CA's detail of that problem.
	ProblemDetail string `json:"problem_detail,omitempty"`
	// Config identifies the configuration the failures happened under
	// (the CA, the challenge settings); the caller ignores a state
	// recorded under another one.
	Config string `json:"config,omitempty"`
}

// maxStateSize bounds a stored state: a few hundred bytes and an error
// message.
const maxStateSize = 64 << 10

// ParseState decodes a stored State. It refuses what no State encodes to:
// oversized input, negative failures, a next attempt before the last one.
func ParseState(b []byte) (State, error) {
	var s State
	if len(b) > maxStateSize {
		return s, fmt.Errorf("acmetls/renew: renewal state of %d bytes", len(b))
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("acmetls/renew: renewal state: %w", err)
	}
	if s.Failures < 0 || (!s.NextAttempt.IsZero() && s.NextAttempt.Before(s.LastAttempt)) {
		return State{}, fmt.Errorf("acmetls/renew: renewal state out of range: %d failures, next attempt %v before last %v",
			s.Failures, s.NextAttempt, s.LastAttempt)
	}
	return s, nil
}

// Failed returns the state after a failed attempt at now. The next
// attempt is the backoff after this failure, or the CA's Retry-After
// (zero if none) when that is later, but never more than a week away,
// whatever the CA says.
func (s State) Failed(now time.Time, errText, problemType string, retryAfter time.Time) State {
	s.Failures++
	s.LastAttempt = now
	s.NextAttempt = now.Add(Backoff(s.Failures))
	if retryAfter.After(s.NextAttempt) {
		s.NextAttempt = minTime(retryAfter, now.Add(maxRetryAfter))
	}
	s.LastError, s.ProblemType = errText, problemType
	return s
}

// maxRetryAfter bounds how far a CA's Retry-After can push an attempt.
const maxRetryAfter = 7 * 24 * time.Hour

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

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
