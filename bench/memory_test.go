package bench

import (
	"runtime"
	"testing"
)

// heapNames is the number of names B3 holds in memory.
const heapNames = 100_000

// BenchmarkHeapPerName is B3: the heap each cached name costs, with
// acmetls holding an ECDSA and an RSA certificate per name, and CertMagic
// and autocert one (ECDSA). The measurement is made once per run,
// whatever b.N; ns/op means nothing here and reads 0.
func BenchmarkHeapPerName(b *testing.B) {
	c := getCorpus(b, heapNames)
	for _, impl := range []string{"acmetls", "certmagic", "autocert"} {
		b.Run("impl="+impl, func(b *testing.B) {
			perName := heapPerName(b, impl, c)
			for b.Loop() {
			}
			b.ReportMetric(perName, "B/name")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func heapPerName(b *testing.B, impl string, c *corpus) float64 {
	st := memStorage(c, 0)
	if impl == "acmetls" {
		st = memStorage(c, heapNames) // storage is not the cache: made before the baseline
	}
	before := heapInUse()
	var keep any
	switch impl {
	case "acmetls":
		keep = newAcmetls(b, c, heapNames, st)
	case "certmagic":
		cfg, stop := newCertMagic(b, c, heapNames, false)
		defer stop()
		keep = cfg
	case "autocert":
		keep = newAutocert(b, c, heapNames)
	}
	after := heapInUse()
	runtime.KeepAlive(keep)
	runtime.KeepAlive(st)
	return float64(after-before) / heapNames
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
