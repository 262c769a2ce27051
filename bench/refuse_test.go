package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/storage"
)

// refuseNames is the number of names each contender of B7 holds, in
// storage and in memory.
const refuseNames = 1000

// unreachableCA is the ACME directory every contender of B7 is given. None
// of them asks a CA about a name it refuses (TestRefusalReads checks their
// errors); if one did, it would fail at once instead of reaching a real CA.
const unreachableCA = "https://127.0.0.1:1/dir"

// refuseImpls are the contenders of B7, in column order.
var refuseImpls = []string{"acmetls", "certmagic", "autocert"}

// oversizedName is a 64 KiB server name: 8,192 labels of 7 letters and
// one of 8, each a valid label, the whole 259 times the longest DNS name.
var oversizedName = strings.Repeat("abcdefg.", 8191) + "example2"

// invalidName is a short name no contender accepts.
const invalidName = "bad_name!.example"

// refuser is a contender of B7: a GetCertificate holding the first
// refuseNames names of the corpus, the storage reads it has made so far,
// and a ClientHello to copy.
type refuser struct {
	get     getCertFunc
	reads   func() int64
	refused func(error) bool // whether err is the refusal of a name not held
	hello   tls.ClientHelloInfo
	stop    func()
}

// countingStorage counts the reads (Load, Exists, List, Stat) made through
// it. It is a storage.Storage, and a certmagic.Storage when it wraps one.
type countingStorage struct {
	storage.Storage
	reads atomic.Int64
}

func (s *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.reads.Add(1)
	return s.Storage.Load(ctx, key)
}

func (s *countingStorage) Exists(ctx context.Context, key string) bool {
	s.reads.Add(1)
	return s.Storage.Exists(ctx, key)
}

func (s *countingStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	s.reads.Add(1)
	return s.Storage.List(ctx, path, recursive)
}

func (s *countingStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	s.reads.Add(1)
	return s.Storage.(certmagic.Storage).Stat(ctx, key)
}

// countingCache counts the reads (Get) made through an autocert.Cache.
type countingCache struct {
	autocert.Cache
	reads atomic.Int64
}

func (c *countingCache) Get(ctx context.Context, key string) ([]byte, error) {
	c.reads.Add(1)
	return c.Cache.Get(ctx, key)
}

// helloConn stands for the connection a ClientHello came on: CertMagic
// reads its remote address when it refuses a name.
type helloConn struct{ net.Conn }

var helloAddr = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 50000}

func (helloConn) RemoteAddr() net.Addr { return helloAddr }
func (helloConn) LocalAddr() net.Addr  { return helloAddr }

// newRefuser returns impl holding the first refuseNames names of the
// corpus, built on a storage holding them, with nothing allowed on demand.
// acmetls is returned once its listing of stored names is in.
func newRefuser(tb testing.TB, impl string) *refuser {
	c := getCorpus(tb, refuseNames)
	names := c.names[:refuseNames]
	r := &refuser{hello: *hellos([]string{"x"})[0], stop: func() {}}
	r.hello.Conn = helloConn{}
	switch impl {
	case "acmetls":
		st := &countingStorage{Storage: memStorage(c, refuseNames)}
		m := &acmetls.Manager{Storage: st, OnDemand: nil, CA: unreachableCA, CacheCapacity: refuseNames}
		if err := m.ManageSync(context.Background(), names...); err != nil {
			tb.Fatal(err)
		}
		r.get, r.reads = m.GetCertificate, st.reads.Load
		r.refused = func(err error) bool { return errors.Is(err, acmetls.ErrNotManaged) }
		warmListing(tb, r)
	case "certmagic":
		st := &countingStorage{Storage: &certmagic.FileStorage{Path: tb.TempDir()}}
		var cfg *certmagic.Config
		cache := certmagic.NewCache(certmagic.CacheOptions{
			GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
			Logger:           discardLogger(),
		})
		cfg = certmagic.New(cache, certmagic.Config{
			Storage: st,
			OCSP:    certmagic.OCSPConfig{DisableStapling: true},
			Logger:  discardLogger(),
		})
		iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{CA: unreachableCA, Logger: discardLogger()})
		cfg.Issuers = []certmagic.Issuer{iss}
		ctx := context.Background()
		for i, name := range names {
			meta := must(json.Marshal(certmagic.CertificateResource{SANs: []string{name}}))
			for key, v := range map[string][]byte{
				certmagic.StorageKeys.SiteCert(iss.IssuerKey(), name):       c.ecdsaChain[i],
				certmagic.StorageKeys.SitePrivateKey(iss.IssuerKey(), name): c.ecdsaKey[i],
				certmagic.StorageKeys.SiteMeta(iss.IssuerKey(), name):       meta,
			} {
				if err := st.Store(ctx, key, v); err != nil {
					tb.Fatal(err)
				}
			}
			if _, err := cfg.CacheManagedCertificate(ctx, name); err != nil {
				tb.Fatal(err)
			}
		}
		r.get, r.reads, r.stop = cfg.GetCertificate, st.reads.Load, cache.Stop
		r.refused = func(err error) bool { return err != nil && strings.Contains(err.Error(), "no certificate available") }
	case "autocert":
		mc := &memCache{m: make(map[string][]byte, refuseNames)}
		for i, name := range names {
			mc.m[name] = append(append([]byte(nil), c.ecdsaKey[i]...), c.ecdsaChain[i]...)
		}
		cc := &countingCache{Cache: mc}
		m := &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			Cache:      cc,
			HostPolicy: autocert.HostWhitelist(names...),
			Client:     &acme.Client{DirectoryURL: unreachableCA},
		}
		for _, h := range hellos(names) {
			if _, err := m.GetCertificate(h); err != nil {
				tb.Fatalf("warming autocert: %v", err)
			}
		}
		r.get, r.reads = m.GetCertificate, cc.reads.Load
		r.refused = func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "not configured in HostWhitelist")
		}
	default:
		tb.Fatalf("unknown impl %q", impl)
	}
	return r
}

// warmListing waits until acmetls refuses an unknown name without a
// storage read: its first miss starts a listing of the stored names in the
// background, and until that is in, a refusal reads storage.
func warmListing(tb testing.TB, r *refuser) {
	h := r.hello
	start, deadline := r.reads(), time.Now().Add(5*time.Second)
	for i := 0; ; i++ {
		before := r.reads()
		h.ServerName = fmt.Sprintf("warm%d.unknown.example", i)
		if _, err := r.get(&h); !r.refused(err) {
			tb.Fatalf("acmetls: %s: %v, want a refusal", h.ServerName, err)
		}
		if i > 0 && r.reads() == before {
			tb.Logf("acmetls: listing of stored names in after %d refusals and %d storage reads (the listing included)", i, before-start)
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("acmetls still reads storage to refuse a name after %d tries in 5 s", i+1)
		}
		time.Sleep(time.Millisecond)
	}
}

// unknownSeq numbers the unknown names of B7 within the process, so that
// no run sees a name an earlier one did.
var unknownSeq atomic.Int64

// unknownNames returns n names no contender holds, never returned before.
func unknownNames(n int) []string {
	start := unknownSeq.Add(int64(n)) - int64(n)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("r%d.unknown.example", start+int64(i))
	}
	return names
}

// BenchmarkRefuse is B7: GetCertificate for a server name the contender
// refuses, and the storage reads each refusal makes (reads/op). Each
// contender holds 1,000 names in storage and in memory and allows nothing
// on demand. names=distinct asks for a new unknown name every op (made
// before the timer starts; past 2^20 ops, they repeat); names=same for one
// unknown name every op; names=oversized for a 64 KiB name; names=invalid
// for a short name with characters no DNS name has. CertMagic takes about
// half a second per oversized name: run names=oversized with a -benchtime
// of tens of ops (bench/run.sh uses 20x).
func BenchmarkRefuse(b *testing.B) {
	for _, impl := range refuseImpls {
		b.Run("impl="+impl, func(b *testing.B) {
			r := newRefuser(b, impl)
			defer r.stop()
			for _, kind := range []string{"distinct", "same", "oversized", "invalid"} {
				b.Run("names="+kind, func(b *testing.B) {
					var names []string
					switch kind {
					case "distinct":
						names = unknownNames(min(b.N, 1<<20))
					case "same":
						names = []string{"same.unknown.example"}
					case "oversized":
						names = []string{oversizedName}
					case "invalid":
						names = []string{invalidName}
					}
					h := r.hello
					b.ReportAllocs()
					b.ResetTimer()
					reads := r.reads()
					for i, j := 0, 0; i < b.N; i++ {
						h.ServerName = names[j]
						if _, err := r.get(&h); err == nil {
							b.Fatalf("%s served %.40q", impl, names[j])
						}
						if j++; j == len(names) {
							j = 0
						}
					}
					b.StopTimer()
					b.ReportMetric(float64(r.reads()-reads)/float64(b.N), "reads/op")
				})
			}
		})
	}
}

// TestRefusalReads checks B7's premises and acmetls's figure: every
// contender serves the names it holds and refuses unknown ones with its
// own policy's error, before asking any CA; and acmetls, once its listing
// of stored names is in, refuses distinct unknown names without reading
// storage.
func TestRefusalReads(t *testing.T) {
	c := getCorpus(t, refuseNames)
	for _, impl := range refuseImpls {
		t.Run(impl, func(t *testing.T) {
			r := newRefuser(t, impl)
			defer r.stop()
			h := r.hello
			for _, i := range []int{0, refuseNames / 2, refuseNames - 1} {
				h.ServerName = c.names[i]
				if _, err := r.get(&h); err != nil {
					t.Fatalf("%s: %v", c.names[i], err)
				}
			}
			const n = 1000
			before := r.reads()
			for _, name := range unknownNames(n) {
				h.ServerName = name
				if _, err := r.get(&h); !r.refused(err) {
					t.Fatalf("%s: %v, want its policy's refusal", name, err)
				}
			}
			reads := r.reads() - before
			t.Logf("%d distinct unknown names: %d storage reads", n, reads)
			if impl == "acmetls" && reads != 0 {
				t.Errorf("acmetls made %d storage reads for %d refusals once its listing was in; want 0", reads, n)
			}
		})
	}
}
