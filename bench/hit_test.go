package bench

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

var hitSizes = []int{1, 10_000, 100_000}

// BenchmarkHit is B1: GetCertificate for a name in memory, one goroutine.
func BenchmarkHit(b *testing.B) {
	for _, n := range hitSizes {
		hs := hellos(getCorpus(b, n).names[:n])
		for _, impl := range impls {
			f := warmed(b, impl, n)
			b.Run(fmt.Sprintf("names=%d/impl=%s", n, impl), func(b *testing.B) {
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
	}
}

// BenchmarkHitParallel is B1 with every core asking at once.
func BenchmarkHitParallel(b *testing.B) {
	for _, n := range hitSizes {
		hs := hellos(getCorpus(b, n).names[:n])
		for _, impl := range impls {
			f := warmed(b, impl, n)
			b.Run(fmt.Sprintf("names=%d/impl=%s", n, impl), func(b *testing.B) {
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
	}
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
