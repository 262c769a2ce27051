package acmetls

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// retryAfterTransport notes the CA's Retry-After (on 429 and 503 answers)
// in the request's context, where the Manager reads it after a failure:
// acmez reports the problem but not the header, and the header is a floor
// on the next attempt.
type retryAfterTransport struct{ base http.RoundTripper }

type retryAfterKey struct{}

// retryAfterNote collects the latest Retry-After seen during one issuance.
type retryAfterNote struct {
	mu sync.Mutex // guards at
	at time.Time
}

func withRetryAfterNote(ctx context.Context) (context.Context, *retryAfterNote) {
	n := new(retryAfterNote)
	return context.WithValue(ctx, retryAfterKey{}, n), n
}

func (n *retryAfterNote) get() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.at
}

func (t retryAfterTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil || (resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable) {
		return resp, err
	}
	n, _ := r.Context().Value(retryAfterKey{}).(*retryAfterNote)
	if n == nil {
		return resp, err
	}
	if at, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		n.mu.Lock()
		if at.After(n.at) {
			n.at = at
		}
		n.mu.Unlock()
	}
	return resp, err
}

// CloseIdleConnections closes the idle connections of the transport
// underneath, so that http.Client.CloseIdleConnections reaches it.
func (t retryAfterTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// maxRetryAfterSeconds bounds a Retry-After in seconds: a year.
const maxRetryAfterSeconds = 365 * 24 * 3600

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Time, bool) {
	if v == "" {
		return time.Time{}, false
	}
	if secs, err := strconv.ParseUint(v, 10, 63); err == nil {
		// A number of seconds that would overflow a Duration is
		// "much later", which the caller bounds anyway.
		return now.Add(time.Duration(min(secs, maxRetryAfterSeconds)) * time.Second), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return t, true
	}
	return time.Time{}, false
}
