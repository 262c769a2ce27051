package acmetls

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// Validator makes a Manager a frontend of a fleet whose certificates a
// central validation server obtains, as Let's Encrypt's Integration Guide
// suggests for hosting providers: the frontend never talks to the CA and
// holds no account key. It serves what the shared storage holds; it
// redirects the CA's http-01 requests to the validation server; and for
// a name it may serve but storage lacks, it asks the validation server,
// whose answer comes once the certificate is in storage. Renewed
// certificates are read from storage once due.
//
// The validation server is a Manager with the same Storage, serving
// [Manager.HTTPHandler] and [Manager.IssuanceHandler] at URL, and
// [Manager.Run]. Its on-demand policy decides; the frontend's is asked
// first, so that refusals cost the validation server nothing.
type Validator struct {
	// URL is the validation server's base URL, reachable by the CA on
	// port 80 for http-01 (the frontends redirect there) and by the
	// frontends, e.g. "http://validation.internal".
	URL string
	// Token authenticates the frontend's requests; the validation
	// server's IssuanceHandler is given the same.
	Token string
	// HTTPClient talks to the validation server. Default: a client that
	// gives up after 40 seconds.
	HTTPClient *http.Client
}

// IssuePath is where frontends send issuance requests, under
// [Validator.URL]: mount [Manager.IssuanceHandler] there.
const IssuePath = "/.well-known/acmetls/issue"

// issueRequest is what a frontend asks of the validation server.
type issueRequest struct {
	Name    string  `json:"name"`
	KeyType KeyType `json:"key_type"`
}

// issueAnswer is the validation server's answer.
type issueAnswer struct {
	NotAfter time.Time `json:"not_after,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// challengeURL is where a frontend redirects the CA's http-01 request
// for path: the validation server's plain HTTP, on URL's port if URL is
// http://, else on port 80, where a validation server answers the CA.
func (v *Validator) challengeURL(path string) string {
	u, err := url.Parse(v.URL)
	if err != nil || u.Host == "" {
		return strings.TrimSuffix(v.URL, "/") + path
	}
	host := u.Host
	if u.Scheme != "http" {
		host = u.Hostname()
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
	}
	return "http://" + host + path
}

func (v *Validator) client() *http.Client {
	if v.HTTPClient != nil {
		return v.HTTPClient
	}
	return defaultValidatorClient
}

var defaultValidatorClient = &http.Client{Timeout: 40 * time.Second}

// fromValidator asks the validation server for the certificate of name
// for kt and reads it from storage once the server says it is there.
func (m *Manager) fromValidator(ctx context.Context, name string, kt KeyType) (*tls.Certificate, error) {
	v := m.Validator
	body, err := json.Marshal(issueRequest{Name: name, KeyType: kt})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(v.URL, "/")+IssuePath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("acmetls: validation server URL: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+v.Token)
	resp, err := v.client().Do(req)
	if err != nil {
		err = fmt.Errorf("acmetls: asking the validation server for %q: %w", name, err)
		m.logger().Named("validator").Warn("the validation server did not answer", zapName(name), zapErr(err))
		return nil, err
	}
	defer resp.Body.Close()
	var answer issueAnswer
	_ = json.NewDecoder(io.LimitReader(resp.Body, 4<<10)).Decode(&answer)
	why := fmt.Sprintf("acmetls: the validation server answered %s for %q: %s", resp.Status, name, answer.Error)
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusForbidden:
		err := errors.New(why)
		m.denied.remember(name, err, m.now().Add(m.OnDemand.denialTTL()))
		return nil, err
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
		next := m.now().Add(time.Minute)
		if at, ok := parseRetryAfter(resp.Header.Get("Retry-After"), m.now()); ok {
			next = at
		}
		return nil, &backingOffError{next: next, msg: why}
	default:
		// 401 (the token), 5xx, 400: the fleet's setup, not the name.
		m.logger().Named("validator").Error("the validation server refused an issuance request", zapName(name), zapString("status", resp.Status), zapString("error", answer.Error))
		return nil, errors.New(why)
	}
	c, err := m.loadCert(ctx, name, kt)
	if c == nil && err == nil {
		err = fmt.Errorf("acmetls: the validation server has obtained %q, but storage holds no usable %s certificate for it", name, kt)
	}
	return c, err
}

// pickUp is renewal on a frontend: the validation server renews, and the
// frontend reads the renewed certificate from storage, every
// pickupInterval from the moment it is due until it is there.
func (m *Manager) pickUp(ctx context.Context, t *tracked) error {
	kt := t.keyType()
	c, rec, err := m.readStored(ctx, t.name, kt)
	if err == nil && c != nil && string(c.Leaf.SerialNumber.Bytes()) != t.serial {
		_, err = m.cacheCert(ctx, t.name, kt, c, rec, true)
		if err == nil {
			m.emit(Event{Kind: EventRenewed, ServerName: t.name, KeyType: kt, NotAfter: c.Leaf.NotAfter})
			return nil
		}
	}
	m.requeue(t, m.now().Add(pickupInterval))
	return err
}

// pickupInterval is how often a frontend reads a due certificate again.
const pickupInterval = time.Minute

// Bounds of an IssuanceHandler.
const (
	issueBurst      = 50 // requests at once before the rate applies
	issuePerSecond  = 10
	issueConcurrent = 64 // requests waiting on issuances
)

// IssuanceHandler serves the issuance requests of frontends (Managers
// whose [Validator] names this one) at [IssuePath]. A request must carry
// token as a bearer token: without one, or with another, it is refused
// with 401 and places no order; an empty token refuses every request. A
// name is obtained only if this Manager manages it or its on-demand
// policy allows it (403 otherwise, remembered as a denial), and the
// answer comes once the certificate is in storage, within about 35
// seconds: 200, or 503 with Retry-After while the name or the CA backs
// off. Requests are limited to 50 at once and 10 a second after that,
// and 64 waiting (429 and 503 beyond).
func (m *Manager) IssuanceHandler(token string) http.Handler {
	want := []byte("Bearer " + token)
	limit := &tokenBucket{burst: issueBurst, perSecond: issuePerSecond}
	waiting := make(chan struct{}, issueConcurrent)
	answer := func(w http.ResponseWriter, code int, a issueAnswer) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(a)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			answer(w, http.StatusMethodNotAllowed, issueAnswer{Error: "POST only"})
			return
		}
		if token == "" || subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			answer(w, http.StatusUnauthorized, issueAnswer{Error: "a valid bearer token is required"})
			return
		}
		if err := m.init(); err != nil {
			answer(w, http.StatusInternalServerError, issueAnswer{Error: err.Error()})
			return
		}
		if !limit.allow(m.now()) {
			w.Header().Set("Retry-After", "1")
			answer(w, http.StatusTooManyRequests, issueAnswer{Error: "too many issuance requests"})
			return
		}
		select {
		case waiting <- struct{}{}:
			defer func() { <-waiting }()
		default:
			w.Header().Set("Retry-After", "5")
			answer(w, http.StatusServiceUnavailable, issueAnswer{Error: "too many issuances in flight"})
			return
		}
		var req issueRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
			answer(w, http.StatusBadRequest, issueAnswer{Error: "malformed request"})
			return
		}
		name, err := normalizeName(req.Name)
		if err != nil {
			answer(w, http.StatusBadRequest, issueAnswer{Error: err.Error()})
			return
		}
		if !m.hasKeyType(req.KeyType) {
			answer(w, http.StatusBadRequest, issueAnswer{Error: fmt.Sprintf("key type %q is not one this server obtains", req.KeyType)})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), m.handshakeWait()+5*time.Second)
		defer cancel()
		if !m.isManaged(name) {
			err := m.denied.check(name, m.now())
			if err == nil {
				err = m.allowed(ctx, name)
			}
			if err != nil {
				answer(w, http.StatusForbidden, issueAnswer{Error: err.Error()})
				return
			}
		}
		_, err = m.certFor(ctx, name, req.KeyType)
		var bo *backingOffError
		switch {
		case errors.As(err, &bo):
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(bo.next.Sub(m.now())/time.Second))))
			answer(w, http.StatusServiceUnavailable, issueAnswer{Error: err.Error()})
		case err != nil:
			answer(w, http.StatusBadGateway, issueAnswer{Error: err.Error()})
		default:
			var a issueAnswer
			if t := m.tracked(name, req.KeyType); t != nil {
				a.NotAfter = t.notAfter
			}
			answer(w, http.StatusOK, a)
		}
	})
}

// issuance is the IssuanceHandler of IssuanceToken, one per Manager, so
// that its bounds hold across the servers that route to it.
func (m *Manager) issuance() http.Handler {
	m.issuanceOnce.Do(func() { m.issuanceHandler = m.IssuanceHandler(m.IssuanceToken) })
	return m.issuanceHandler
}

// hasKeyType reports whether kt is one of the Manager's key types.
func (m *Manager) hasKeyType(kt KeyType) bool {
	for _, k := range m.keyTypes() {
		if k == kt {
			return true
		}
	}
	return false
}

// trackStored puts every certificate in storage into the schedule, for a
// validation server: it renews the fleet's certificates, which reach it
// through no handshake, and must know of those obtained before it
// started. Names are read a few at a time.
func (m *Manager) trackStored(ctx context.Context) {
	keys, err := m.store.List(ctx, storage.CertsDir, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.logger().Named("renew").Error("listing stored certificates to renew them; retried at the next start", zapErr(err))
		return
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		name := k[strings.LastIndexByte(k, '/')+1:]
		if n, err := normalizeIdentifier(strings.Replace(name, "wildcard_.", "*.", 1)); err == nil {
			names = append(names, n)
		}
	}
	_ = m.forEach(names, 8, func(name string) error {
		if ctx.Err() == nil && m.cache.get(name) == nil {
			if _, err := m.loadStored(ctx, name); err != nil {
				m.logger().Named("renew").Warn("loading a stored certificate to renew it", zapName(name), zapErr(err))
			}
		}
		return nil
	})
	m.logger().Named("renew").Info("tracking the stored certificates", zap.Int("names", len(names)))
}
