package acmetls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/acmetls/acmetls/renew"
)

// Fuzz targets for the parsers of outside bytes that the handshake and
// renewal paths read: a CA's Retry-After, the renewal information stored
// with a certificate, stored keys. (Server names, records, staples and
// renewal states have theirs next to their code.)

// A Retry-After never yields an instant before now or after a year, and
// never panics.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "0", "-1", "99999999999999999999", "9223372036854775807", "Wed, 21 Oct 2015 07:28:00 GMT", "", "1e3", " 5"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		at, ok := parseRetryAfter(v, now)
		if !ok {
			return
		}
		if strings.TrimLeft(v, "0123456789") == "" && (at.Before(now) || at.After(now.Add(366*24*time.Hour))) {
			t.Fatalf("Retry-After %q -> %v", v, at)
		}
		// Whatever the header says, a failure's next attempt stays
		// within a week.
		st := renew.State{}.Failed(now, "x", "", at)
		if st.NextAttempt.Before(now) || st.NextAttempt.After(now.Add(7*24*time.Hour)) {
			t.Fatalf("Retry-After %q: next attempt %v", v, st.NextAttempt)
		}
	})
}

// Stored renewal information yields a valid window or none, and the
// renewal it schedules starts with a tenth of the lifetime left (or now,
// if that has passed).
func FuzzStoredRenewalInfo(f *testing.F) {
	f.Add([]byte(`{"suggestedWindow":{"start":"2026-12-01T00:00:00Z","end":"2026-12-03T00:00:00Z"}}`))
	f.Add([]byte(`{"suggestedWindow":{"start":"2027-01-01T00:00:00Z","end":"2026-01-01T00:00:00Z"},"explanationURL":"x"}`))
	f.Add([]byte(`{"suggestedWindow":{"start":"0001-01-01T00:00:00Z","end":"9999-12-31T23:59:59Z"}}`))
	f.Add([]byte(`null`))
	nb := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(90 * 24 * time.Hour)
	f.Fuzz(func(t *testing.T, b []byte) {
		w, _, ok := storedWindow(b)
		if !ok {
			return
		}
		if !w.Valid() {
			t.Fatalf("an invalid window %+v accepted", w)
		}
		for _, now := range []time.Time{nb, nb.Add(45 * 24 * time.Hour), na.Add(-time.Hour)} {
			a := renew.ARI{}.Update(w, "", time.Time{}, now, 0.999)
			start := renew.Start("k", renew.Due(nb, na, &a, now), nb, na, 12*time.Hour)
			if latest := maxTime(renew.Deadline(nb, na), now); start.After(latest) {
				t.Fatalf("window %+v at %v: renewal at %v, after %v", w, now, start, latest)
			}
		}
	})
}

// decodeKey returns a signing key or an error, never panics, and reads
// what encodeKey writes.
func FuzzDecodeKey(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := encodeKey(k)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	f.Fuzz(func(t *testing.T, s string) {
		key, err := decodeKey(s)
		if err != nil {
			return
		}
		if key.Public() == nil {
			t.Fatal("a key without a public half")
		}
		again, err := encodeKey(key)
		if err != nil {
			t.Fatalf("a decoded key does not encode: %v", err)
		}
		if _, err := decodeKey(again); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}
