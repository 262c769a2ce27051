package acmetls

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/acmetls/acmetls/storage"
)

// goHello returns the ClientHelloInfo that Go's own TLS client sends with
// cfg, as a server sees it.
func goHello(t testing.TB, name string, cfg *tls.Config) *tls.ClientHelloInfo {
	t.Helper()
	cfg = cfg.Clone()
	cfg.ServerName = name
	hellos := make(chan *tls.ClientHelloInfo, 1)
	srvCfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hellos <- h
		return nil, fmt.Errorf("captured")
	}}
	c1, c2 := pipe()
	go tls.Client(c1, cfg).Handshake()
	_ = tls.Server(c2, srvCfg).Handshake()
	c1.Close()
	c2.Close()
	h := <-hellos
	// Keep what GetCertificate reads, not the connection.
	return &tls.ClientHelloInfo{
		ServerName: h.ServerName, CipherSuites: h.CipherSuites, SupportedCurves: h.SupportedCurves,
		SupportedPoints: h.SupportedPoints, SignatureSchemes: h.SignatureSchemes,
		SupportedProtos: h.SupportedProtos, SupportedVersions: h.SupportedVersions,
	}
}

// cachedManager is a Manager whose cache holds ECDSA and RSA certificates
// for names, with a staple attached, and a wildcard for *.wild.example.com.
func cachedManager(t testing.TB, capacity int, names ...string) *Manager {
	t.Helper()
	return cachedManagerStaple(t, capacity, []byte("a staple"), names...)
}

// cachedManagerStaple is cachedManager with staple attached (nil: none).
func cachedManagerStaple(t testing.TB, capacity int, staple []byte, names ...string) *Manager {
	t.Helper()
	m := &Manager{Storage: &storage.Memory{}, CacheCapacity: capacity}
	if err := m.init(); err != nil {
		t.Fatal(err)
	}
	certs := testCerts(t, ECDSAP256, RSA2048)
	for _, kt := range []KeyType{ECDSAP256, RSA2048} {
		cc, err := compact(certs[kt])
		if err != nil {
			t.Fatal(err)
		}
		c := *cc
		c.OCSPStaple = staple
		for _, n := range names {
			m.cache.put(n, kt, &c)
		}
		m.cache.put("*.wild.example.com", kt, &c)
	}
	return m
}

// A cache hit allocates nothing, for either key type, for a wildcard hit,
// and with a staple attached, searched with and without hashing.
func TestCacheHitAllocatesNothing(t *testing.T) {
	if testing.Short() || raceEnabled {
		// -race instruments allocations; the run without it checks.
		t.Log("allocation counts are checked without -race")
	}
	few := cachedManager(t, 0, "www.example.com")
	many := cachedManager(t, 0, "www.example.com")
	for i := 0; i < 2*fewMax; i++ {
		c := *many.cache.get("www.example.com")
		many.cache.put(fmt.Sprintf("n%d.example.com", i), ECDSAP256, c.ecdsa)
	}
	if few.cache.few.Load() == nil || many.cache.few.Load() != nil {
		t.Fatal("the two caches do not take the two lookup paths")
	}
	for _, m := range []*Manager{few, many} {
		testCacheHitAllocatesNothing(t, m)
	}
}

func testCacheHitAllocatesNothing(t *testing.T, m *Manager) {
	for _, tc := range []struct {
		name, sni string
		client    *tls.Config
		wantAlg   string
	}{
		{"ECDSA", "www.example.com", &tls.Config{}, "ECDSA"},
		{"RSA-only client", "www.example.com", rsaOnlyTLS12, "RSA"},
		{"wildcard", "shop.wild.example.com", &tls.Config{}, "ECDSA"},
		{"wildcard RSA", "shop.wild.example.com", rsaOnlyTLS12, "RSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hello := goHello(t, tc.sni, tc.client)
			c, err := m.GetCertificate(hello)
			if err != nil {
				t.Fatal(err)
			}
			if got := keyAlgorithm(c); got != tc.wantAlg {
				t.Fatalf("got %s, want %s", got, tc.wantAlg)
			}
			if string(c.OCSPStaple) != "a staple" {
				t.Fatal("staple missing")
			}
			if raceEnabled {
				return
			}
			if n := testing.AllocsPerRun(1000, func() { _, _ = m.GetCertificate(hello) }); n != 0 {
				t.Errorf("cache hit allocates %v times", n)
			}
		})
	}
}

// The cache never holds more than its capacity, keeps the names in use,
// and its memory stays flat under a sweep of a million distinct names.
func TestCacheEvictionBound(t *testing.T) {
	const capacity, hot = 1000, 50
	m := cachedManager(t, capacity)
	c := m.cache
	cert := selfSigned(t, ECDSAP256, "x.example.com")
	sweep := 1_000_000
	if raceEnabled {
		sweep = 100_000
	}
	var before runtime.MemStats
	for i := 0; i < sweep; i++ {
		if i%100 == 0 {
			for h := 0; h < hot; h++ {
				if p := c.get(fmt.Sprintf("hot%d.example.com", h)); p == nil && i > 0 {
					t.Fatalf("hot name %d evicted after %d insertions", h, i)
				}
			}
		}
		if i == 0 {
			for h := 0; h < hot; h++ {
				c.put(fmt.Sprintf("hot%d.example.com", h), ECDSAP256, cert)
			}
		}
		c.put(fmt.Sprintf("n%d.example.com", i), ECDSAP256, cert)
		if n := c.len(); n > capacity {
			t.Fatalf("cache holds %d names, capacity %d", n, capacity)
		}
		if i == 10_000 {
			runtime.GC()
			runtime.ReadMemStats(&before)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap after 10k names: %d KiB; after %d: %d KiB", before.HeapAlloc>>10, sweep, after.HeapAlloc>>10)
	if growth > 4<<20 {
		t.Errorf("heap grew by %d KiB over the sweep", growth>>10)
	}
}

// A flood of handshakes for random unknown names costs bounded memory: no
// certificate, no cache entry, a bounded table of denials.
func TestUnknownNameFloodIsBounded(t *testing.T) {
	m := &Manager{Storage: &storage.Memory{}, OnDemand: &OnDemand{Names: []string{"only.example.com"}}}
	hello := &tls.ClientHelloInfo{SupportedVersions: []uint16{tls.VersionTLS13}}
	n := 3 * maxRecentErrors
	for i := 0; i < n; i++ {
		hello.ServerName = fmt.Sprintf("r%d.example.com", i)
		if _, err := m.GetCertificate(hello); err == nil {
			t.Fatal("served an unknown name")
		}
	}
	if got := m.cache.len(); got != 0 {
		t.Errorf("cache holds %d names", got)
	}
	m.denied.mu.Lock()
	d := len(m.denied.byKey)
	m.denied.mu.Unlock()
	if d > maxRecentErrors {
		t.Errorf("%d denials remembered, bound %d", d, maxRecentErrors)
	}
	_ = context.Background
}

// With more shards than names per shard, an insertion into an empty shard
// evicts from another, and the bound holds exactly.
func TestCacheBoundAcrossShards(t *testing.T) {
	c := newCache(128 * shardSize) // 128 shards of shardSize on average
	cert := selfSigned(t, ECDSAP256, "x.example.com")
	for i := 0; i < 50_000; i++ {
		c.put(fmt.Sprintf("n%d.example.com", i), ECDSAP256, cert)
	}
	if n, want := c.len(), 128*64; n != want {
		t.Fatalf("cache holds %d names, want exactly its capacity %d", n, want)
	}
	// A tiny cache: every shard but one ends up empty at times.
	c = newCache(1)
	for i := 0; i < 1000; i++ {
		c.put(fmt.Sprintf("n%d.example.com", i), ECDSAP256, cert)
		if n := c.len(); n != 1 {
			t.Fatalf("capacity-1 cache holds %d names", n)
		}
	}
}

// A shard never holds more than maxPerShard names, however the names hash:
// its table stays three quarters free at worst, and every name put last is
// found.
func TestCacheShardBound(t *testing.T) {
	c := newCache(1 << 20)
	cert := selfSigned(t, ECDSAP256, "x.example.com")
	var names []string
	for i := 0; len(names) < 3*maxPerShard; i++ {
		name := fmt.Sprintf("n%d.example.com", i)
		if sh, _ := c.locate(name); sh == 0 {
			names = append(names, name)
		}
	}
	for i, name := range names {
		c.put(name, ECDSAP256, cert)
		if c.get(name) == nil {
			t.Fatalf("%s not found right after its put", name)
		}
		if n := c.len(); n != min(i+1, maxPerShard) {
			t.Fatalf("after %d puts into one shard it holds %d names, want %d", i+1, n, min(i+1, maxPerShard))
		}
	}
	if got := c.count.Load(); got != maxPerShard {
		t.Errorf("count = %d, want %d", got, maxPerShard)
	}
}

// A full cache inserting into an empty shard evicts from another shard.
func TestCacheStealsFromAnotherShard(t *testing.T) {
	c := newCache(64 * 64)
	if len(c.shards) < 2 {
		t.Fatalf("%d shards", len(c.shards))
	}
	cert := selfSigned(t, ECDSAP256, "x.example.com")
	c.put("a.example.com", ECDSAP256, cert)
	first, _ := c.locate("a.example.com")
	c.count.Store(c.capacity) // as if every other slot were taken
	var other string
	for i := 0; ; i++ {
		other = fmt.Sprintf("b%d.example.com", i)
		if sh, _ := c.locate(other); sh != first {
			break
		}
	}
	c.put(other, ECDSAP256, cert)
	if c.get("a.example.com") != nil || c.get(other) == nil {
		t.Fatal("the insertion into an empty shard did not evict from the other")
	}
	if got := c.count.Load(); got != c.capacity {
		t.Errorf("count = %d, want %d", got, c.capacity)
	}
	c.put("c.example.com", ECDSAP256, cert) // the emptied shard works again
}

// A wildcard entry serves names whose first label is valid, IDNA labels
// included, and nothing else.
func TestWildcardHit(t *testing.T) {
	m := cachedManager(t, 0)
	tls13 := []uint16{tls.VersionTLS13}
	for _, tc := range []struct {
		sni  string
		want bool
	}{
		{"shop.wild.example.com", true},
		{"SHOP.wild.example.com", true},
		{"bücher.wild.example.com", true},
		{"xn--bcher-kva.wild.example.com", true},
		{"a.b.wild.example.com", false},
		{"a/b.wild.example.com", false},
		{"-a.wild.example.com", false},
		{".wild.example.com", false},
		{"xn--a.wild.example.com", false},
		{"wild.example.com", false},
	} {
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: tc.sni, SupportedVersions: tls13})
		if got := err == nil && c != nil; got != tc.want {
			t.Errorf("%q: served = %v (%v), want %v", tc.sni, got, err, tc.want)
		}
	}
}

// Replacing a name's certificate while handshakes read it: every read sees
// a whole pair, the old one or the new one. With few names, lookups go
// through the list of few names, which each write republishes.
func TestCacheHotSwapUnderReads(t *testing.T) {
	for _, others := range []int{fewMax - 2, 300} {
		t.Run(fmt.Sprintf("others=%d", others), func(t *testing.T) {
			c := newCache(1024)
			a := selfSigned(t, ECDSAP256, "swap.example.com")
			b := selfSigned(t, ECDSAP256, "swap.example.com")
			r := selfSigned(t, RSA2048, "swap.example.com")
			c.put("swap.example.com", ECDSAP256, a)
			c.put("swap.example.com", RSA2048, r)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < 20_000; i++ {
					cert := a
					if i%2 == 0 {
						cert = b
					}
					c.put("swap.example.com", ECDSAP256, cert)
					c.put(fmt.Sprintf("other%d.example.com", i%others), RSA2048, r)
				}
			}()
			for {
				select {
				case <-done:
					if few := c.few.Load() != nil; few != (others < fewMax) {
						t.Errorf("list of few names in use: %v, with %d names", few, others+1)
					}
					return
				default:
				}
				p := c.get("swap.example.com")
				if p == nil {
					t.Fatal("a cached name disappeared")
				}
				if (p.ecdsa != a && p.ecdsa != b) || p.rsa != r {
					t.Fatalf("a read saw a partial pair: %+v", p)
				}
			}
		})
	}
}

// Evictions while other goroutines read: run with -race. A cache of
// capacity 4 evicts while it is searched through the list of few names.
func TestCacheEvictionUnderReads(t *testing.T) {
	for _, capacity := range []int{4, 300} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			c := newCache(capacity)
			cert := selfSigned(t, ECDSAP256, "x.example.com")
			stop := make(chan struct{})
			var reads atomic.Int64
			var wg sync.WaitGroup
			for r := 0; r < 2; r++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						if p := c.get(fmt.Sprintf("n%d.example.com", i%2000)); p != nil && p.ecdsa != cert {
							panic("wrong certificate")
						}
						reads.Add(1)
					}
				}()
			}
			for i := 0; i < 20_000; i++ {
				c.put(fmt.Sprintf("n%d.example.com", i%2000), ECDSAP256, cert)
			}
			close(stop)
			wg.Wait()
			if n := c.len(); n > capacity {
				t.Fatalf("%d names, capacity %d", n, capacity)
			}
			t.Logf("%d concurrent reads", reads.Load())
		})
	}
}

// A small cache is searched without hashing, through a list of its names
// that every write keeps in step with the shards' tables: hits mark the
// slots eviction reads, so a name in use survives any number of
// insertions. Past fewMax names the list is dropped and lookups hash; every
// name is found either way, exact and wildcard.
func TestFewNames(t *testing.T) {
	cert := selfSigned(t, ECDSAP256, "x.example.com")
	t.Run("hot name survives", func(t *testing.T) {
		c := newCache(3)
		c.put("hot.example.com", ECDSAP256, cert)
		for i := 0; i < 1000; i++ {
			if c.get("hot.example.com") == nil {
				t.Fatalf("hot name evicted after %d insertions", i)
			}
			c.put(fmt.Sprintf("n%d.example.com", i), ECDSAP256, cert)
			if c.few.Load() == nil {
				t.Fatal("a cache of 3 names dropped its list of few names")
			}
			if n, want := c.len(), min(i+2, 3); n != want {
				t.Fatalf("cache holds %d names, want %d", n, want)
			}
		}
	})
	t.Run("switch to hashing", func(t *testing.T) {
		c := newCache(1000)
		c.put("*.wild.example.com", ECDSAP256, cert)
		var names []string
		for i := 0; len(names) < 2*fewMax; i++ {
			names = append(names, fmt.Sprintf("s%d.example.com", i))
			c.put(names[i], ECDSAP256, cert)
			if few, want := c.few.Load() != nil, len(names)+1 <= fewMax; few != want {
				t.Fatalf("with %d names, list of few names in use: %v", len(names)+1, few)
			}
			for _, n := range append(names, "shop.wild.example.com") {
				if p := c.get(n); p == nil || p.ecdsa != cert {
					t.Fatalf("with %d names, %s not found", len(names)+1, n)
				}
			}
			for _, n := range []string{"s.example.com", "wild.example.com", "a.b.wild.example.com"} {
				if c.get(n) != nil {
					t.Fatalf("with %d names, %s found", len(names)+1, n)
				}
			}
		}
	})
}
