package acmetls

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

const httpChallengePath = "/.well-known/acme-challenge/"

// HTTPHandler answers the CA's http-01 requests and hands every other
// request to fallback. A nil fallback redirects GET and HEAD requests to
// the same URL over HTTPS and refuses other methods, so plain HTTP serves
// nothing but challenges.
//
// Answers come from this process's memory first, then from storage, so a
// frontend answers for an order another frontend placed; storage is read
// only for a well-formed token, and at most a few times a second for a
// Host this Manager would not serve.
func (m *Manager) HTTPHandler(fallback http.Handler) http.Handler {
	if fallback == nil {
		fallback = http.HandlerFunc(redirectHTTPS)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, httpChallengePath) {
			fallback.ServeHTTP(w, r)
			return
		}
		if err := m.init(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		token := strings.TrimPrefix(r.URL.Path, httpChallengePath)
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		ka, err := m.httpAnswer(r.Context(), host, token)
		switch {
		case errors.Is(err, errNoChallenge):
			http.NotFound(w, r)
		case err != nil:
			// The token is a valid one, of bounded length.
			m.logger().Named("challenge").Warn("answering http-01", zap.String("token", token), zap.Error(err))
			http.Error(w, "challenge answer unavailable", http.StatusServiceUnavailable)
		default:
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(ka))
		}
	})
}

// HTTPSHandler wraps the handler of the HTTPS server so that its answers
// carry a Strict-Transport-Security header of [Manager.HSTSMaxAge]: a
// browser that once reached a name over HTTPS then refuses plain HTTP and
// certificate errors for it. The header goes only on requests that came
// over TLS, as RFC 6797 requires, and names no subdomains, which may be
// served by others. A handler that sets the header itself overrides it.
func (m *Manager) HTTPSHandler(h http.Handler) http.Handler {
	if m.HSTSMaxAge < 0 {
		return h
	}
	maxAge := m.HSTSMaxAge
	if maxAge == 0 {
		maxAge = DefaultHSTSMaxAge
	}
	value := "max-age=" + strconv.FormatInt(int64(maxAge/time.Second), 10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			w.Header().Set("Strict-Transport-Security", value)
		}
		h.ServeHTTP(w, r)
	})
}

func redirectHTTPS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "use HTTPS", http.StatusBadRequest)
		return
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	name, err := normalizeName(host)
	if err != nil {
		http.Error(w, "use HTTPS", http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, "https://"+name+r.URL.RequestURI(), http.StatusFound)
}
