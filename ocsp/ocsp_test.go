package ocsp

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// pki is a test CA with a leaf that names a responder.
type pki struct {
	ca, leaf, other *x509.Certificate
	caKey           crypto.Signer
	now             time.Time
}

func newPKI(t testing.TB, responder string) *pki {
	t.Helper()
	now := time.Now().Truncate(time.Second)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Issuer"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	ca := mustCert(t, caTmpl, caTmpl, caKey.Public(), caKey)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(4242), DNSNames: []string{"a.example.com"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		OCSPServer: []string{responder},
	}, ca, leafKey.Public(), caKey)
	other := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(777), DNSNames: []string{"b.example.com"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
	}, ca, leafKey.Public(), caKey)
	return &pki{ca: ca, leaf: leaf, other: other, caKey: caKey, now: now}
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// response signs an OCSP response for serial with key (and an embedded
// responder certificate, if any), valid [this, next).
func (p *pki) response(t testing.TB, serial *big.Int, status int, this, next time.Time, signer *x509.Certificate, key crypto.Signer) []byte {
	t.Helper()
	tmpl := ocsp.Response{Status: status, SerialNumber: serial, ThisUpdate: this, NextUpdate: next}
	if status == ocsp.Revoked {
		tmpl.RevokedAt, tmpl.RevocationReason = this, ocsp.KeyCompromise
	}
	if signer != p.ca {
		tmpl.Certificate = signer
	}
	der, err := ocsp.CreateResponse(p.ca, signer, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// otherIssuerResponse is a good response for serial, signed by p's issuer,
// whose CertID names another issuer: the serial is right, the issuer not.
func otherIssuerResponse(t *testing.T, p *pki, serial *big.Int) []byte {
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Another Issuer"},
		NotBefore: p.now.Add(-time.Hour), NotAfter: p.now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	other := mustCert(t, tmpl, tmpl, otherKey.Public(), otherKey)
	der, err := ocsp.CreateResponse(other, p.ca, ocsp.Response{Status: ocsp.Good, SerialNumber: serial,
		ThisUpdate: p.now.Add(-time.Hour), NextUpdate: p.now.Add(24 * time.Hour)}, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A response signed by an intermediate issuer that includes the issuer's
// own certificate, as OpenSSL's responder does by default, checks: the
// included certificate is the issuer, not a delegated responder.
func TestCheckIssuerCertificateIncluded(t *testing.T) {
	p := newPKI(t, "http://ocsp.example/")
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	inter := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(20), Subject: pkix.Name{CommonName: "Intermediate"},
		NotBefore: p.now.Add(-time.Hour), NotAfter: p.now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, p.ca, interKey.Public(), p.caKey)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(4343), DNSNames: []string{"c.example.com"},
		NotBefore: p.now.Add(-time.Hour), NotAfter: p.now.Add(90 * 24 * time.Hour),
	}, inter, leafKey.Public(), interKey)
	tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: leaf.SerialNumber,
		ThisUpdate: p.now.Add(-time.Hour), NextUpdate: p.now.Add(24 * time.Hour), Certificate: inter}
	der, err := ocsp.CreateResponse(inter, inter, tmpl, interKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ocsp.ParseResponseForCert(der, leaf, inter); err == nil {
		t.Log("x/crypto now accepts it too (golang/go#59641 fixed)")
	}
	r, err := Check(der, leaf, inter, p.now)
	if err != nil || r.Status != ocsp.Good {
		t.Fatalf("Check = %v, %v; want a good response", r, err)
	}
	// The same, signed by another key that claims to be the issuer.
	wrongKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, err := ocsp.CreateResponse(inter, inter, tmpl, wrongKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(forged, leaf, inter, p.now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a forged response with the issuer's certificate: %v", err)
	}
}

func TestCheck(t *testing.T) {
	p := newPKI(t, "http://ocsp.example/")
	hour := time.Hour
	wrongKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	delegateKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	delegate := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "OCSP responder"},
		NotBefore: p.now.Add(-hour), NotAfter: p.now.Add(30 * 24 * hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
	}, p.ca, delegateKey.Public(), p.caKey)
	notDelegate := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "not a responder"},
		NotBefore: p.now.Add(-hour), NotAfter: p.now.Add(30 * 24 * hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, p.ca, delegateKey.Public(), p.caKey)
	selfIssued := mustCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(11), Subject: pkix.Name{CommonName: "impostor"},
		NotBefore: p.now.Add(-hour), NotAfter: p.now.Add(30 * 24 * hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
	}, &x509.Certificate{Subject: pkix.Name{CommonName: "impostor"}, SerialNumber: big.NewInt(12)}, wrongKey.Public(), wrongKey)
	serial := p.leaf.SerialNumber
	for _, tc := range []struct {
		name       string
		der        []byte
		wantErr    string
		wantStatus int
	}{
		{"good, signed by the issuer", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), p.ca, p.caKey), "", ocsp.Good},
		{"good, delegated responder", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), delegate, delegateKey), "", ocsp.Good},
		{"revoked is returned, not an error", p.response(t, serial, ocsp.Revoked, p.now.Add(-hour), p.now.Add(3*24*hour), p.ca, p.caKey), "", ocsp.Revoked},
		{"another serial", p.response(t, p.other.SerialNumber, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), p.ca, p.caKey), "no response matching", 0},
		{"wrong key", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), p.ca, wrongKey), "not signed by the issuer", 0},
		{"responder without the OCSP usage", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), notDelegate, delegateKey), "lacks the OCSP signing usage", 0},
		{"responder not issued by the issuer", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.now.Add(3*24*hour), selfIssued, wrongKey), "not issued by the issuer", 0},
		{"CertID naming another issuer", otherIssuerResponse(t, p, serial), "names another issuer", 0},
		{"expired", p.response(t, serial, ocsp.Good, p.now.Add(-3*24*hour), p.now.Add(-hour), p.ca, p.caKey), "expired", 0},
		{"from the future", p.response(t, serial, ocsp.Good, p.now.Add(hour), p.now.Add(3*24*hour), p.ca, p.caKey), "in the future", 0},
		{"valid past the certificate", p.response(t, serial, ocsp.Good, p.now.Add(-hour), p.leaf.NotAfter.Add(hour), p.ca, p.caKey), "after the certificate expires", 0},
		{"no nextUpdate", p.response(t, serial, ocsp.Good, p.now.Add(-hour), time.Time{}, p.ca, p.caKey), "no nextUpdate", 0},
		{"garbage", []byte("<html>503</html>"), "invalid response", 0},
		{"empty", nil, "invalid response", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Check(tc.der, p.leaf, p.ca, p.now)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrInvalid with %q", err, tc.wantErr)
				}
				if r != nil {
					t.Fatal("a response came with the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tc.wantStatus {
				t.Fatalf("status %d, want %d", r.Status, tc.wantStatus)
			}
			if Stapleable(r, p.now) != (tc.wantStatus == ocsp.Good) {
				t.Fatalf("Stapleable = %v", Stapleable(r, p.now))
			}
		})
	}
}

func TestStapleableUntilNextUpdate(t *testing.T) {
	p := newPKI(t, "http://ocsp.example/")
	der := p.response(t, p.leaf.SerialNumber, ocsp.Good, p.now.Add(-time.Hour), p.now.Add(time.Hour), p.ca, p.caKey)
	r, err := Check(der, p.leaf, p.ca, p.now)
	if err != nil {
		t.Fatal(err)
	}
	if !Stapleable(r, p.now.Add(59*time.Minute)) || Stapleable(r, p.now.Add(time.Hour)) {
		t.Error("a response is stapleable exactly until its nextUpdate")
	}
}

func TestRefreshAt(t *testing.T) {
	this := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Response{ThisUpdate: this, NextUpdate: this.Add(100 * time.Hour)}
	for _, tc := range []struct {
		u    float64
		want time.Duration
	}{{0.5, 50 * time.Hour}, {0, 40 * time.Hour}, {0.999999, 60 * time.Hour}} {
		if got := RefreshAt(r, tc.u).Sub(this); got.Round(time.Minute) != tc.want {
			t.Errorf("RefreshAt(%v) = +%v, want +%v", tc.u, got, tc.want)
		}
	}
}

func TestFetch(t *testing.T) {
	var asked atomic.Int32
	var p *pki
	mode := "good"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		body, _ := io.ReadAll(r.Body)
		req, err := ocsp.ParseRequest(body)
		if err != nil || r.Header.Get("Content-Type") != "application/ocsp-request" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch mode {
		case "huge":
			w.Write(make([]byte, MaxResponseSize+10))
		case "down":
			http.Error(w, "down", http.StatusServiceUnavailable)
		default:
			w.Write(p.response(t, req.SerialNumber, ocsp.Good, p.now.Add(-time.Hour), p.now.Add(24*time.Hour), p.ca, p.caKey))
		}
	}))
	defer srv.Close()
	p = newPKI(t, srv.URL)
	der, err := Fetch(context.Background(), srv.Client(), p.leaf, p.ca)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(der, p.leaf, p.ca, p.now); err != nil {
		t.Fatalf("fetched response does not check: %v", err)
	}
	mode = "huge"
	if _, err := Fetch(context.Background(), srv.Client(), p.leaf, p.ca); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized response: %v", err)
	}
	mode = "down"
	if _, err := Fetch(context.Background(), srv.Client(), p.leaf, p.ca); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("responder down: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Fetch(ctx, srv.Client(), p.leaf, p.ca); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if _, err := Fetch(context.Background(), nil, p.other, p.ca); err == nil {
		t.Error("fetched for a certificate without a responder")
	}
	if Responder(p.other) != "" || Responder(p.leaf) != srv.URL {
		t.Error("Responder is wrong")
	}
}

// Check never panics and never accepts what it should not, whatever the
// bytes.
func FuzzCheck(f *testing.F) {
	p := newPKI(f, "http://ocsp.example/")
	good := p.response(f, p.leaf.SerialNumber, ocsp.Good, p.now.Add(-time.Hour), p.now.Add(24*time.Hour), p.ca, p.caKey)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x30, 0x03, 0x0a, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, der []byte) {
		r, err := Check(der, p.leaf, p.ca, p.now)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if r.SerialNumber.Cmp(p.leaf.SerialNumber) != 0 || !r.NextUpdate.After(p.now) || r.NextUpdate.After(p.leaf.NotAfter) {
			t.Fatalf("accepted %+v", r)
		}
		if err := r.CheckSignatureFrom(p.ca); err != nil && r.Certificate == nil {
			t.Fatalf("accepted a response the issuer did not sign: %v", err)
		}
	})
}
