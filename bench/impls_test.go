package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/acme/autocert"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/storage"
)

// getCertFunc is what a tls.Config's GetCertificate holds.
type getCertFunc func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// impls are the contenders of the cache-hit benchmark, in column order.
var impls = []string{"acmetls", "certmagic", "autocert", "map"}

var (
	warmMu sync.Mutex // guards warm
	warm   = map[string]getCertFunc{}
)

// warmed returns impl's GetCertificate with the first n names of the corpus
// in memory, made once per process.
func warmed(tb testing.TB, impl string, n int) getCertFunc {
	warmMu.Lock()
	defer warmMu.Unlock()
	key := fmt.Sprintf("%s/%d", impl, n)
	if f, ok := warm[key]; ok {
		return f
	}
	c := getCorpus(tb, n)
	var f getCertFunc
	switch impl {
	case "acmetls":
		f = newAcmetls(tb, c, n, nil).GetCertificate
	case "certmagic":
		cfg, _ := newCertMagic(tb, c, n, false)
		f = cfg.GetCertificate
	case "autocert":
		f = newAutocert(tb, c, n).GetCertificate
	case "map":
		m := make(map[string]*tls.Certificate, n)
		for i := 0; i < n; i++ {
			cert := c.tlsCert(i, false)
			m[c.names[i]] = &cert
		}
		f = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if cert, ok := m[h.ServerName]; ok {
				return cert, nil
			}
			return nil, errors.New("no certificate")
		}
	default:
		tb.Fatalf("unknown impl %q", impl)
	}
	warm[key] = f
	return f
}

// memStorage returns an in-memory storage holding the ECDSA and RSA
// records of the first n names.
func memStorage(c *corpus, n int) *storage.Memory {
	st := &storage.Memory{}
	ctx := context.Background()
	for i := 0; i < n; i++ {
		for _, kt := range []string{"ecdsa-p256", "rsa-2048"} {
			if err := st.Store(ctx, storage.CertKey(c.names[i], kt), c.record(i, kt)); err != nil {
				panic(err)
			}
		}
	}
	return st
}

// newAcmetls returns a Manager serving the first n names, ECDSA and RSA
// each, loaded from st (a fresh in-memory storage if nil).
func newAcmetls(tb testing.TB, c *corpus, n int, st storage.Storage) *acmetls.Manager {
	if st == nil {
		st = memStorage(c, n)
	}
	m := &acmetls.Manager{Storage: st, CacheCapacity: max(n, 1)}
	if err := m.ManageSync(context.Background(), c.names[:n]...); err != nil {
		tb.Fatal(err)
	}
	return m
}

// discardLogger is a production zap logger writing nowhere: the logging
// cost a deployment pays, without the output.
func discardLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
}

// newCertMagic returns a CertMagic config whose cache holds the first n
// names, one certificate each (ECDSA, or RSA if rsaKey), and a stop func.
func newCertMagic(tb testing.TB, c *corpus, n int, rsaKey bool) (*certmagic.Config, func()) {
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           discardLogger(),
	})
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: tb.TempDir()},
		OCSP:    certmagic.OCSPConfig{DisableStapling: true},
		Logger:  discardLogger(),
	})
	ctx := context.Background()
	for i := 0; i < n; i++ {
		chain, key := c.ecdsaChain[i], c.ecdsaKey[i]
		if rsaKey {
			chain, key = c.rsaChain[i], c.rsaKey[i]
		}
		if _, err := cfg.CacheUnmanagedCertificatePEMBytes(ctx, chain, key, nil); err != nil {
			tb.Fatal(err)
		}
	}
	return cfg, cache.Stop
}

// memCache is an autocert.Cache in memory.
type memCache struct {
	mu sync.Mutex // guards m
	m  map[string][]byte
}

func (c *memCache) Get(_ context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.m[key]; ok {
		return v, nil
	}
	return nil, autocert.ErrCacheMiss
}

func (c *memCache) Put(_ context.Context, key string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = data
	return nil
}

func (c *memCache) Delete(_ context.Context, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
	return nil
}

// newAutocert returns an autocert Manager whose memory holds the ECDSA
// certificates of the first n names, loaded by one handshake each.
func newAutocert(tb testing.TB, c *corpus, n int) *autocert.Manager {
	mc := &memCache{m: make(map[string][]byte, n)}
	for i := 0; i < n; i++ {
		mc.m[c.names[i]] = append(append([]byte(nil), c.ecdsaKey[i]...), c.ecdsaChain[i]...)
	}
	m := &autocert.Manager{Prompt: autocert.AcceptTOS, Cache: mc}
	for _, h := range hellos(c.names[:n]) {
		if _, err := m.GetCertificate(h); err != nil {
			tb.Fatalf("warming autocert: %v", err)
		}
	}
	return m
}
