package bench

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/storage"
)

// coldNames is the number of certificates in storage for B4.
const coldNames = 100_000

var (
	fileStoreOnce sync.Once
	fileStoreDir  string
)

// fileStore returns a file storage holding the ECDSA and RSA records of
// coldNames names, written once per process and removed by TestMain.
func fileStore(b *testing.B) *certmagic.FileStorage {
	c := getCorpus(b, coldNames)
	fileStoreOnce.Do(func() {
		dir, err := os.MkdirTemp("", "acmetls-bench-")
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := 0; i < coldNames; i++ {
			for _, kt := range []string{"ecdsa-p256", "rsa-2048"} {
				path := filepath.Join(dir, filepath.FromSlash(storage.CertKey(c.names[i], kt)))
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(path, c.record(i, kt), 0o600); err != nil {
					b.Fatal(err)
				}
			}
		}
		fileStoreDir = dir
		b.Logf("wrote %d records in %v", 2*coldNames, time.Since(start).Round(time.Millisecond))
	})
	return &certmagic.FileStorage{Path: fileStoreDir}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fileStoreDir != "" {
		os.RemoveAll(fileStoreDir)
	}
	os.Exit(code)
}

// BenchmarkColdStart is B4, from file storage holding 100,000 names with
// two certificates each. "start" is the time from constructing a Manager
// to its first served handshake; "first" is the latency of a handshake
// for a name not yet in memory, with p50 and p99 reported. Run "first"
// with -benchtime=Nx, N at most 100,000 (each op must be a new name).
func BenchmarkColdStart(b *testing.B) {
	fs := fileStore(b)
	hs := hellos(getCorpus(b, coldNames).names[:coldNames])
	b.Run("storage=file/phase=start", func(b *testing.B) {
		r := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			m := &acmetls.Manager{Storage: fs}
			if _, err := m.GetCertificate(hs[r.IntN(coldNames)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("storage=file/phase=first", func(b *testing.B) {
		if b.N > coldNames {
			b.Skipf("b.N = %d: each op needs a name not yet in memory; use -benchtime=Nx with N <= %d", b.N, coldNames)
		}
		m := &acmetls.Manager{Storage: fs}
		order := rand.New(rand.NewPCG(3, 4)).Perm(coldNames)
		lat := make([]time.Duration, 0, b.N)
		i := 0
		for b.Loop() {
			start := time.Now()
			if _, err := m.GetCertificate(hs[order[i]]); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
			i++
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
}
