package bench

import (
	"crypto/tls"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

var hitSizes = []int{1, 10_000, 100_000}

// rounds repeats B1's contenders in turn, so that the drift of a shared
// machine falls on all of them alike; -count would run each one's
// repetitions back to back. benchstat -ignore /round merges the rounds.
var rounds = flag.Int("rounds", 1, "B1: run every contender this many times, in turn")

// hitCases runs bench for every round, size and contender of B1, in that
// nesting, as a sub-benchmark, with the contender's GetCertificate and the
// hellos of the size. What -bench filters out is not set up.
func hitCases(b *testing.B, bench func(b *testing.B, n int, f getCertFunc, hs []*tls.ClientHelloInfo)) {
	hs := make([][]*tls.ClientHelloInfo, len(hitSizes)) // by size, made on first use
	for r := 1; r <= *rounds; r++ {
		for i, n := range hitSizes {
			for _, impl := range impls {
				b.Run(fmt.Sprintf("round=%d/names=%d/impl=%s", r, n, impl), func(b *testing.B) {
					if hs[i] == nil {
						hs[i] = hellos(getCorpus(b, n).names[:n])
					}
					f := warmed(b, impl, n)
					b.ResetTimer()
					bench(b, n, f, hs[i])
				})
			}
		}
	}
}

// BenchmarkHit is B1: GetCertificate for a name in memory, one goroutine.
func BenchmarkHit(b *testing.B) {
	hitCases(b, func(b *testing.B, n int, f getCertFunc, hs []*tls.ClientHelloInfo) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := f(hs[i]); err != nil {
				b.Fatal(err)
			}
			if i++; i == n {
				i = 0
			}
		}
	})
}

// BenchmarkHitParallel is B1 with every core asking at once.
func BenchmarkHitParallel(b *testing.B) {
	hitCases(b, func(b *testing.B, n int, f getCertFunc, hs []*tls.ClientHelloInfo) {
		b.ReportAllocs()
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			i := rand.New(rand.NewPCG(seed.Add(1), 0)).IntN(n)
			for pb.Next() {
				if _, err := f(hs[i]); err != nil {
					b.Error(err)
					return
				}
				if i++; i == n {
					i = 0
				}
			}
		})
	})
}

// The contenders serve the same certificate for the same name, so B1
// compares like with like.
func TestContendersAgree(t *testing.T) {
	const n = 50
	c := getCorpus(t, n)
	hs := hellos(c.names[:n])
	for _, impl := range impls {
		f := warmed(t, impl, n)
		for i, h := range hs {
			cert, err := f(h)
			if err != nil {
				t.Fatalf("%s: %s: %v", impl, h.ServerName, err)
			}
			want := c.tlsCert(i, false)
			if string(cert.Certificate[0]) != string(want.Certificate[0]) {
				t.Fatalf("%s serves another certificate for %s", impl, h.ServerName)
			}
		}
	}
}
