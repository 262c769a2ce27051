package bench

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// corpus is a local CA and, for each name, an ECDSA P-256 and an RSA 2048
// certificate issued by its intermediate, as PEM.
type corpus struct {
	names      []string
	ecdsaChain [][]byte
	ecdsaKey   [][]byte
	rsaChain   [][]byte
	rsaKey     [][]byte
	roots      *x509.CertPool

	inter    *x509.Certificate
	interKey *ecdsa.PrivateKey
	interPEM []byte
	rsaKeys  []*rsa.PrivateKey
}

var (
	corpusMu  sync.Mutex // guards theCorpus
	theCorpus *corpus
)

// rsaKeyPool is how many distinct RSA keys the corpus uses: generating
// 100,000 RSA keys would take hours. Each record still holds its own copy,
// parsed separately, so memory and parse costs are those of distinct keys.
const rsaKeyPool = 32

// getCorpus returns a corpus of at least n names, extending it as needed:
// 100,000 names take about 40 seconds on two cores.
func getCorpus(tb testing.TB, n int) *corpus {
	corpusMu.Lock()
	defer corpusMu.Unlock()
	if theCorpus == nil {
		theCorpus = newCorpus()
	}
	if have := len(theCorpus.names); have < n {
		start := time.Now()
		theCorpus.extend(n)
		tb.Logf("made names %d to %d, 2 certificates each, in %v", have, n, time.Since(start).Round(time.Millisecond))
	}
	return theCorpus
}

func nameOf(i int) string { return fmt.Sprintf("site%d.example.com", i) }

func newCorpus() *corpus {
	rootKey := must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER := must(x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey))
	root := must(x509.ParseCertificate(rootDER))
	interKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Bench Intermediate E1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	interDER := must(x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey))
	c := &corpus{
		roots:    x509.NewCertPool(),
		inter:    must(x509.ParseCertificate(interDER)),
		interKey: interKey,
		interPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}),
		rsaKeys:  make([]*rsa.PrivateKey, rsaKeyPool),
	}
	c.roots.AddCert(root)
	var wg sync.WaitGroup
	for i := range c.rsaKeys {
		wg.Add(1)
		go func() { defer wg.Done(); c.rsaKeys[i] = must(rsa.GenerateKey(rand.Reader, 2048)) }()
	}
	wg.Wait()
	return c
}

// extend issues certificates for names up to n.
func (c *corpus) extend(n int) {
	from := len(c.names)
	grow := func(s [][]byte) [][]byte { return append(s, make([][]byte, n-from)...) }
	c.names = append(c.names, make([]string, n-from)...)
	c.ecdsaChain, c.ecdsaKey = grow(c.ecdsaChain), grow(c.ecdsaKey)
	c.rsaChain, c.rsaKey = grow(c.rsaChain), grow(c.rsaKey)
	leaf := func(i int, key crypto.Signer) ([]byte, []byte) {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(1000 + i)), Subject: pkix.Name{CommonName: c.names[i]},
			DNSNames:  []string{c.names[i]},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der := must(x509.CreateCertificate(rand.Reader, tmpl, c.inter, key.Public(), c.interKey))
		chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c.interPEM...)
		keyDER := must(x509.MarshalPKCS8PrivateKey(key))
		return chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	}
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := from + w; i < n; i += workers {
				c.names[i] = nameOf(i)
				c.ecdsaChain[i], c.ecdsaKey[i] = leaf(i, must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)))
				c.rsaChain[i], c.rsaKey[i] = leaf(i, c.rsaKeys[i%rsaKeyPool])
			}
		}()
	}
	wg.Wait()
}

// record returns the acmetls storage record of name i for a key type.
func (c *corpus) record(i int, keyType string) []byte {
	// The CA is none the benchmarks' Managers are configured with: they
	// ask no CA about these certificates in the background.
	r := storage.CertRecord{Names: []string{c.names[i]}, KeyType: keyType, CA: "https://ca.test/directory", Obtained: time.Now()}
	if keyType == "ecdsa-p256" {
		r.ChainPEM, r.KeyPEM = string(c.ecdsaChain[i]), string(c.ecdsaKey[i])
	} else {
		r.ChainPEM, r.KeyPEM = string(c.rsaChain[i]), string(c.rsaKey[i])
	}
	return must(r.Marshal())
}

// tlsCert returns name i's certificate of one type as a tls.Certificate.
func (c *corpus) tlsCert(i int, rsaKey bool) tls.Certificate {
	if rsaKey {
		return must(tls.X509KeyPair(c.rsaChain[i], c.rsaKey[i]))
	}
	return must(tls.X509KeyPair(c.ecdsaChain[i], c.ecdsaKey[i]))
}

// clientHello returns the ClientHelloInfo Go's TLS client sends with cfg,
// as a server sees it, without its connection.
func clientHello(cfg *tls.Config) *tls.ClientHelloInfo {
	hellos := make(chan *tls.ClientHelloInfo, 1)
	srv := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hellos <- h
		return nil, fmt.Errorf("captured")
	}}
	c1, c2 := net.Pipe()
	cfg = cfg.Clone()
	cfg.ServerName = "captured.example.com"
	go tls.Client(c1, cfg).Handshake()
	_ = tls.Server(c2, srv).Handshake()
	c1.Close()
	c2.Close()
	h := <-hellos
	return &tls.ClientHelloInfo{
		CipherSuites: h.CipherSuites, SupportedCurves: h.SupportedCurves,
		SupportedPoints: h.SupportedPoints, SignatureSchemes: h.SignatureSchemes,
		SupportedProtos: h.SupportedProtos, SupportedVersions: h.SupportedVersions,
	}
}

// hellos returns one ClientHelloInfo per name, from Go's default client.
// Each carries its own copy of the name, as a parsed ClientHello does: a
// server's stored key and the name a client sent never share memory, and
// a string comparison that found them at one address would skip reading
// the bytes.
func hellos(names []string) []*tls.ClientHelloInfo {
	tmpl := clientHello(&tls.Config{})
	out := make([]*tls.ClientHelloInfo, len(names))
	for i, n := range names {
		h := *tmpl
		h.ServerName = strings.Clone(n)
		out[i] = &h
	}
	return out
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
