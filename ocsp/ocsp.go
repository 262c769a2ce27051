// Package ocsp fetches and checks OCSP responses for stapling: it never
// hands back a response that is not signed for the certificate by its
// issuer (or by a responder the issuer delegated to), not current, or
// valid past the certificate's own expiry. The caller staples what Check
// accepts and nothing else, and asks again at RefreshAt.
//
// Let's Encrypt stopped running OCSP in 2025; other CAs, private ones
// included, still do. A certificate without a responder (Responder returns
// "") costs nothing.
package ocsp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Status values of a checked Response.
const (
	Good    = ocsp.Good
	Revoked = ocsp.Revoked
	Unknown = ocsp.Unknown
)

// KeyCompromise is the revocation reason that calls for a new key.
const KeyCompromise = ocsp.KeyCompromise

// Response is a checked OCSP response.
type Response = ocsp.Response

// ErrInvalid is wrapped by every error of Check: the response must not be
// stapled.
var ErrInvalid = errors.New("acmetls/ocsp: invalid response")

// clockSkew is how far in the future a thisUpdate may be.
const clockSkew = 5 * time.Minute

// Responder returns the first OCSP responder URL of leaf, or "".
func Responder(leaf *x509.Certificate) string {
	for _, u := range leaf.OCSPServer {
		if u != "" {
			return u
		}
	}
	return ""
}

// Check parses der and verifies it may be stapled to leaf at now: signed
// by issuer (whether or not the response includes issuer's certificate),
// or by a responder certificate issued by issuer for OCSP signing; for
// leaf's serial number under issuer (the CertID's issuer name and key
// hashes are checked, not the serial alone); thisUpdate not in the future
// (within a few minutes); nextUpdate present, after now and not after
// leaf expires. A revoked or unknown status is returned, not an error: the
// caller must not staple it, and acts on it. Errors wrap ErrInvalid.
func Check(der []byte, leaf, issuer *x509.Certificate, now time.Time) (*Response, error) {
	bad := func(format string, args ...any) (*Response, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	if len(der) > MaxResponseSize {
		return bad("%d bytes", len(der))
	}
	// Parsed without the issuer: x/crypto would check an included copy
	// of the issuer's own certificate as if it were a delegated
	// responder's, and refuse every such response (golang/go#59641).
	r, err := ocsp.ParseResponseForCert(der, leaf, nil)
	if err != nil {
		return bad("%v", err)
	}
	switch d := r.Certificate; {
	case d == nil:
		if err := r.CheckSignatureFrom(issuer); err != nil {
			return bad("not signed by the issuer: %v", err)
		}
	case bytes.Equal(d.Raw, issuer.Raw):
		// Signed by the issuer, whose certificate came along;
		// ParseResponse checked the signature with it.
	default:
		if err := d.CheckSignatureFrom(issuer); err != nil {
			return bad("delegated responder certificate not issued by the issuer: %v", err)
		}
		if !slices.Contains(d.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
			return bad("delegated responder certificate lacks the OCSP signing usage")
		}
		if now.Before(d.NotBefore) || now.After(d.NotAfter) {
			return bad("delegated responder certificate not valid now")
		}
	}
	if r.SerialNumber == nil || r.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		return bad("for serial %v, not %v", r.SerialNumber, leaf.SerialNumber)
	}
	if err := checkCertID(der, leaf, issuer); err != nil {
		return bad("%v", err)
	}
	switch {
	case r.ThisUpdate.After(now.Add(clockSkew)):
		return bad("thisUpdate %v is in the future", r.ThisUpdate)
	case r.NextUpdate.IsZero():
		return bad("no nextUpdate")
	case !r.NextUpdate.After(now):
		return bad("expired at %v", r.NextUpdate)
	case r.NextUpdate.After(leaf.NotAfter):
		return bad("nextUpdate %v after the certificate expires", r.NextUpdate)
	}
	return r, nil
}

// Stapleable reports whether r, from Check, may be stapled at now.
func Stapleable(r *Response, now time.Time) bool {
	return r != nil && r.Status == Good && now.Before(r.NextUpdate)
}

// RefreshAt returns when to fetch a new response: the middle of r's
// validity, moved by up to a tenth of it either way with u in [0, 1), so
// that a fleet of certificates does not refresh at once.
func RefreshAt(r *Response, u float64) time.Time {
	validity := r.NextUpdate.Sub(r.ThisUpdate)
	jitter := time.Duration((u*2 - 1) * float64(validity/10))
	return r.ThisUpdate.Add(validity/2 + jitter)
}

// MaxResponseSize bounds what Fetch reads from a responder.
const MaxResponseSize = 64 << 10

// Fetch asks leaf's responder for a response, with ctx, and returns it
// unchecked (pass it to Check). client should have a timeout; nil means
// one with a ten-second timeout.
func Fetch(ctx context.Context, client *http.Client, leaf, issuer *x509.Certificate) ([]byte, error) {
	url := Responder(leaf)
	if url == "" {
		return nil, errors.New("acmetls/ocsp: certificate names no responder")
	}
	req, err := ocsp.CreateRequest(leaf, issuer, &ocsp.RequestOptions{Hash: crypto.SHA256})
	if err != nil {
		return nil, fmt.Errorf("acmetls/ocsp: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, fmt.Errorf("acmetls/ocsp: %w", err)
	}
	hr.Header.Set("Content-Type", "application/ocsp-request")
	hr.Header.Set("Accept", "application/ocsp-response")
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("acmetls/ocsp: asking %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("acmetls/ocsp: %s answered %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return nil, fmt.Errorf("acmetls/ocsp: reading %s: %w", url, err)
	}
	if len(body) > MaxResponseSize {
		return nil, fmt.Errorf("acmetls/ocsp: %s sent more than %d bytes", url, MaxResponseSize)
	}
	return body, nil
}
