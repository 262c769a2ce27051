package acmetls

import (
	"sync"
	"time"
)

// tokenBucket allows burst events at once, then perSecond: it starts
// full, and refills as time passes.
type tokenBucket struct {
	mu               sync.Mutex // guards tokens and at
	tokens           float64
	at               time.Time
	burst, perSecond float64
}

func (b *tokenBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.at.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.perSecond)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
