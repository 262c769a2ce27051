package acmetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Responder is an OCSP responder for a CA's certificates, signing with the
// CA's real intermediate key. Start it before the CA, pass its URL in
// Options.OCSPResponderURL, then Attach the CA.
type Responder struct {
	URL string

	srv      *httptest.Server
	requests atomic.Int32
	mu       sync.Mutex    // guards ca, mode, validity, revoked and gate
	gate     chan struct{} // while not nil, requests wait for it to close
	ca       *CA
	mode     string
	validity time.Duration
	revoked  map[string]bool // serials answered revoked
}

// The answers a Responder can give.
const (
	OCSPGood        = "good"
	OCSPDown        = "down"        // 503
	OCSPOtherSerial = "otherserial" // a good response for another certificate
	OCSPWrongKey    = "wrongkey"    // signed by a key that is not the issuer's
	OCSPExpired     = "expired"     // nextUpdate in the past
	// OCSPOtherIssuer is a good response for the right serial, signed by
	// the issuer, whose CertID names another issuer (the root).
	OCSPOtherIssuer = "otherissuer"
	// OCSPIssuerIncluded is a good response signed by the issuer that
	// includes the issuer's certificate, as OpenSSL's responder sends.
	OCSPIssuerIncluded = "issuerincluded"
)

// NewResponder starts a responder answering good, valid for validity.
func NewResponder(validity time.Duration) *Responder {
	r := &Responder{mode: OCSPGood, validity: validity}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	r.URL = r.srv.URL
	return r
}

// Attach gives the responder the CA whose certificates it answers for.
func (r *Responder) Attach(c *CA) {
	r.mu.Lock()
	r.ca = c
	r.mu.Unlock()
}

// Set changes the answer.
func (r *Responder) Set(mode string) {
	r.mu.Lock()
	r.mode = mode
	r.mu.Unlock()
}

// Revoke makes the responder answer revoked (keyCompromise) for serial.
func (r *Responder) Revoke(serial *big.Int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.revoked == nil {
		r.revoked = make(map[string]bool)
	}
	r.revoked[serial.String()] = true
}

// Hold makes requests wait, unanswered, until Release: a responder that
// hangs.
func (r *Responder) Hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gate == nil {
		r.gate = make(chan struct{})
	}
}

// Release answers the requests Hold kept waiting, and the next ones at once.
func (r *Responder) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gate != nil {
		close(r.gate)
		r.gate = nil
	}
}

// Requests counts the requests received so far, answered or held.
func (r *Responder) Requests() int { return int(r.requests.Load()) }

// Close stops the responder, answering the requests held first.
func (r *Responder) Close() {
	r.Release()
	r.srv.Close()
}

func (r *Responder) serve(w http.ResponseWriter, req *http.Request) {
	r.requests.Add(1)
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-req.Context().Done():
			return
		}
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<16))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q, err := ocsp.ParseRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	c, mode, validity := r.ca, r.mode, r.validity
	revoked := r.revoked[q.SerialNumber.String()]
	r.mu.Unlock()
	if c == nil || mode == OCSPDown {
		http.Error(w, "responder down", http.StatusServiceUnavailable)
		return
	}
	authority := c.pebble.Load().ca
	issuer := authority.GetIntermediateCert(0).Cert
	var key crypto.Signer = authority.GetIntermediateKey(0)
	certIDIssuer := issuer
	now := time.Now().Truncate(time.Second)
	tmpl := ocsp.Response{
		Status: ocsp.Good, SerialNumber: q.SerialNumber,
		ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(validity),
	}
	if revoked {
		tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, now.Add(-time.Minute), ocsp.KeyCompromise
	}
	switch mode {
	case OCSPOtherSerial:
		tmpl.SerialNumber = new(big.Int).Add(q.SerialNumber, big.NewInt(1))
	case OCSPWrongKey:
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case OCSPExpired:
		tmpl.ThisUpdate, tmpl.NextUpdate = now.Add(-2*validity), now.Add(-time.Minute)
	case OCSPOtherIssuer:
		certIDIssuer = authority.GetRootCert(0).Cert
	case OCSPIssuerIncluded:
		tmpl.Certificate = issuer
	}
	der, err := ocsp.CreateResponse(certIDIssuer, issuer, tmpl, key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(der)
}
