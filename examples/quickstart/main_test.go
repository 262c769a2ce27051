package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/internal/acmetest"
)

// The README's Quick start is this program, to the byte.
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	program, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Quick start\n")
	_, block, ok2 := strings.Cut(section, "```go\n")
	block, _, ok3 := strings.Cut(block, "```\n")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no Go block under \"## Quick start\"")
	}
	if block != string(program) {
		t.Errorf("the README's Quick start differs from examples/quickstart/main.go:\n%s", block)
	}
}

// The Quick start, built and run unchanged as its users run it, against
// Let's Encrypt's address: the test plays the internet. Pebble answers at
// that address, through an HTTPS proxy the program is told of the
// standard way (HTTPS_PROXY), under a certificate from a root the program
// trusts the standard way (SSL_CERT_FILE); Pebble's DNS sends example.com
// to 127.0.0.1, where the program listens on ports 80 and 443. The first
// run serves a verified certificate; with 30-second certificates, it
// renews without any further call; SIGTERM stops it cleanly.
func TestQuickStartRuns(t *testing.T) {
	for _, addr := range []string{":80", ":443"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the Quick start listens on ports 80 and 443, as root does (.ci/run runs as root): %v", err)
		}
		ln.Close()
	}
	ca, err := acmetest.New(acmetest.Options{HTTPPort: 80, TLSPort: 443, Validity: 30 * time.Second, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Close) // after the proxy's cleanup

	dir := t.TempDir()
	proxy, rootPEM := letsEncryptAt(t, ca)
	if err := os.WriteFile(filepath.Join(dir, "roots.pem"), rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from the quick start\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "quickstart")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	cmd := exec.Command(bin)
	cmd.Dir = www
	cmd.Env = append(os.Environ(),
		"HTTPS_PROXY="+proxy, "https_proxy="+proxy, "NO_PROXY=", "no_proxy=",
		"SSL_CERT_FILE="+filepath.Join(dir, "roots.pem"),
		"HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var logs strings.Builder
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
		}
	}()
	go func() {
		<-logsDone
		exited <- cmd.Wait()
	}()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("the program's output:\n%s", logs.String())
		}
	}()

	client := &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+port)
			},
			TLSClientConfig:   &tls.Config{RootCAs: ca.Roots()},
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}
	// get fetches url and returns the body and the leaf's serial.
	get := func(url string) (string, string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.TLS == nil {
			return string(b), "", nil
		}
		return string(b), resp.TLS.PeerCertificates[0].SerialNumber.String(), nil
	}
	var first string
	deadline := time.Now().Add(time.Minute)
	for {
		body, serial, err := get("https://example.com/")
		if err == nil && body == "hello from the quick start\n" {
			first = serial
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no page over a verified certificate within a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if body, _, err := get("http://www.example.com/"); err != nil || body != "hello from the quick start\n" {
		t.Errorf("http://www.example.com/ (redirected): %q, %v", body, err)
	}

	deadline = time.Now().Add(90 * time.Second)
	for {
		_, serial, err := get("https://example.com/")
		if err == nil && serial != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the certificate was not renewed within 90 s of the first (it lives 30 s): %v", err)
		}
		time.Sleep(time.Second)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after SIGTERM: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Error("the program did not stop within 40 s of SIGTERM")
	}
}

// letsEncryptAt answers at Let's Encrypt's directory address with ca: it
// returns the URL of an HTTPS proxy that tunnels to that address only,
// and the PEM of the root that signed the certificate served there.
func letsEncryptAt(t *testing.T, ca *acmetest.CA) (string, []byte) {
	t.Helper()
	le, err := url.Parse(acmetls.LetsEncryptURL)
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "quick start test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: []string{le.Hostname()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}

	pebble, err := url.Parse(ca.DirectoryURL)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "https", Host: pebble.Host})
			r.Out.Host = le.Host // Pebble's URLs name the host asked for
			if r.In.URL.Path == le.Path {
				r.Out.URL.Path = pebble.Path // the directory; every other URL is Pebble's own
			}
		},
		Transport: ca.HTTPClient().Transport,
	}
	front := &http.Server{Handler: rp}
	frontTLS := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}

	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tunnels := chanListener{conns: make(chan net.Conn), addr: proxyLn.Addr(), closed: make(chan struct{}), once: new(sync.Once)}
	go front.Serve(tls.NewListener(tunnels, frontTLS))
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != le.Hostname()+":443" {
			http.Error(w, "this proxy reaches "+le.Hostname()+" only", http.StatusForbidden)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		select {
		case tunnels.conns <- conn:
		case <-tunnels.closed:
			conn.Close()
		}
	})}
	go proxy.Serve(proxyLn)
	t.Cleanup(func() {
		proxy.Close()
		front.Close()
	})
	return "http://" + proxyLn.Addr().String(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
}

// chanListener accepts the connections sent on conns until closed.
type chanListener struct {
	conns  chan net.Conn
	addr   net.Addr
	closed chan struct{}
	once   *sync.Once
}

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l chanListener) Addr() net.Addr { return l.addr }
