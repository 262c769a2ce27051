package bench

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/pgtest"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/postgres"
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

var (
	pgStoreOnce sync.Once
	pgStoreURL  string
)

// pgStore returns the connection string of a PostgreSQL database holding
// the ECDSA and RSA records of coldNames names, in the table
// postgres.Open uses, written once per process.
func pgStore(b *testing.B) string {
	c := getCorpus(b, coldNames)
	pgStoreOnce.Do(func() {
		url, err := pgtest.NewDB()
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		st, err := postgres.Open(ctx, url) // creates the table
		if err != nil {
			b.Fatal(err)
		}
		st.Close()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		start := time.Now()
		kts := []string{"ecdsa-p256", "rsa-2048"}
		rows := pgx.CopyFromSlice(2*coldNames, func(i int) ([]any, error) {
			n, kt := i/2, kts[i%2]
			return []any{storage.CertKey(c.names[n], kt), c.record(n, kt)}, nil
		})
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{postgres.DefaultTable}, []string{"key", "value"}, rows); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "VACUUM ANALYZE "+postgres.DefaultTable); err != nil {
			b.Fatal(err)
		}
		pgStoreURL = url
		b.Logf("wrote %d records to PostgreSQL in %v", 2*coldNames, time.Since(start).Round(time.Millisecond))
	})
	if pgStoreURL == "" {
		b.Fatal("the PostgreSQL store could not be made")
	}
	return pgStoreURL
}

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if fileStoreDir != "" {
		os.RemoveAll(fileStoreDir)
	}
	os.Exit(code)
}

// BenchmarkColdStart is B4, from storage holding 100,000 names with two
// certificates each: a directory of files, or a PostgreSQL table on a
// local server reached through a Unix socket. "start" is the time from
// constructing a Manager to its first served handshake (for PostgreSQL,
// opening the connection pool included); "first" is the latency of a
// handshake for a name not yet in memory, with p50 and p99 reported. Run
// "first" with -benchtime=Nx, N at most 100,000 (each op must be a new
// name).
func BenchmarkColdStart(b *testing.B) {
	hs := hellos(getCorpus(b, coldNames).names[:coldNames])
	fs := fileStore(b)
	b.Run("storage=file/phase=start", func(b *testing.B) {
		coldStart(b, hs, func() (storage.Storage, func()) { return fs, func() {} })
	})
	b.Run("storage=file/phase=first", func(b *testing.B) {
		firstHandshakes(b, hs, fs)
	})
	url := pgStore(b)
	open := func() (storage.Storage, func()) {
		st, err := postgres.Open(context.Background(), url)
		if err != nil {
			b.Fatal(err)
		}
		return st, st.Close
	}
	b.Run("storage=postgres/phase=start", func(b *testing.B) {
		coldStart(b, hs, open)
	})
	b.Run("storage=postgres/phase=first", func(b *testing.B) {
		st, closeStore := open()
		defer closeStore()
		firstHandshakes(b, hs, st)
	})
}

// coldStart measures a new Manager, on a storage open returns, serving its
// first handshake.
func coldStart(b *testing.B, hs []*tls.ClientHelloInfo, open func() (storage.Storage, func())) {
	r := rand.New(rand.NewPCG(1, 2))
	for b.Loop() {
		st, closeStore := open()
		m := &acmetls.Manager{Storage: st}
		if _, err := m.GetCertificate(hs[r.IntN(coldNames)]); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		closeStore()
		b.StartTimer()
	}
}

// firstHandshakes measures the first handshake of each of b.N names, in
// random order, from one Manager on st.
func firstHandshakes(b *testing.B, hs []*tls.ClientHelloInfo, st storage.Storage) {
	if b.N > coldNames {
		b.Skipf("b.N = %d: each op needs a name not yet in memory; use -benchtime=Nx with N <= %d", b.N, coldNames)
	}
	m := &acmetls.Manager{Storage: st}
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
}
