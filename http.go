package acmetls

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

const httpChallengePath = "/.well-known/acme-challenge/"

// HTTPHandler serves plain HTTP, usually on port 80:
//
//   - the CA's http-01 requests are answered, whatever the Host;
//   - requests for a site this Manager serves (managed, stored, or allowed
//     on demand) are redirected to the same URL over HTTPS, path and query
//     kept: 301 for GET and HEAD, 308 for other methods, so that a POST
//     stays a POST; unless the site's [SitePolicy] says KeepHTTP;
//   - with [Manager.IssuanceToken] set, frontends' issuance requests at
//     [IssuePath] are answered;
//   - every other request goes to fallback: sites that keep plain HTTP,
//     and hosts this Manager does not serve. A nil fallback answers them
//     404, so that port 80 does not redirect arbitrary Host headers.
//
// The redirect goes to [Manager.HTTPSPort], else to the port of the
// listener given to [Manager.Serve], else to 443, and leaves the port
// out when it is 443.
//
// Answers come from this process's memory first, then from storage, so a
// frontend answers for an order another frontend placed; storage is read
// only for a well-formed token, and at most a few times a second for a
// Host this Manager would not serve.
func (m *Manager) HTTPHandler(fallback http.Handler) http.Handler {
	if fallback == nil {
		fallback = http.NotFoundHandler()
	}
	var issuance http.Handler
	if m.IssuanceToken != "" {
		issuance = m.issuance()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := m.init(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if issuance != nil && r.URL.Path == IssuePath {
			issuance.ServeHTTP(w, r)
			return
		}
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if strings.HasPrefix(r.URL.Path, httpChallengePath) {
			if m.Validator != nil {
				// The Guide's recipe: the validation server answers.
				http.Redirect(w, r, m.Validator.challengeURL(r.URL.Path), http.StatusFound)
				return
			}
			m.serveChallenge(w, r, host)
			return
		}
		name, err := normalizeName(host)
		if err == nil && m.wouldServe(r.Context(), name) && !m.site(name).KeepHTTP {
			m.redirectHTTPS(w, r, name)
			return
		}
		fallback.ServeHTTP(w, r)
	})
}

// serveChallenge answers an http-01 request.
func (m *Manager) serveChallenge(w http.ResponseWriter, r *http.Request, host string) {
	token := strings.TrimPrefix(r.URL.Path, httpChallengePath)
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
}

// wouldServe reports whether a handshake for name, normalized, could get
// a certificate: one in memory, a managed name, one storage may hold, or
// one the on-demand policy allows (whose refusals are remembered). A
// plain HTTP request costs its client far less than a handshake, so
// OnDemand.Decision is asked for such requests at most
// httpDecisionsBurst at once and httpDecisionsPerSecond after that, for
// the process: random Host headers do not fan out to the provider's
// policy service. Beyond that, a host only the Decision could allow gets
// no redirect.
func (m *Manager) wouldServe(ctx context.Context, name string) bool {
	if m.cache.get(name) != nil || m.isManaged(name) {
		return true
	}
	if m.denied.check(name, m.now()) != nil {
		return false
	}
	if m.mayBeStored(name) {
		return true
	}
	od := m.OnDemand
	switch {
	case od == nil:
		return false
	case od.listed(name):
		return true
	case od.Decision == nil || !m.httpDecisions.allow(m.now()):
		return false
	}
	return m.allowed(ctx, name) == nil
}

// The bounds on on-demand decisions asked for plain HTTP requests.
const (
	httpDecisionsBurst     = 20
	httpDecisionsPerSecond = 5
)

// redirectHTTPS redirects a plain HTTP request for name to HTTPS.
func (m *Manager) redirectHTTPS(w http.ResponseWriter, r *http.Request, name string) {
	host := name
	if port := m.httpsPort(); port != 443 {
		host = net.JoinHostPort(name, strconv.Itoa(port))
	}
	code := http.StatusMovedPermanently
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		code = http.StatusPermanentRedirect
	}
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), code)
}

// httpsPort is the port redirects to HTTPS go to.
func (m *Manager) httpsPort() int {
	if m.HTTPSPort > 0 {
		return m.HTTPSPort
	}
	if p := m.servedPort.Load(); p > 0 {
		return int(p)
	}
	return 443
}

// SitePolicy is one site's HTTPS policy, as [Manager.Sites] gives it. Its
// zero value is what Let's Encrypt's Integration Guide asks for a new
// site: plain HTTP redirected to HTTPS, and HSTS for
// [Manager.HSTSMaxAge] (60 days by default).
//
// The Guide's warning holds for the HSTS options: a browser that saw the
// header refuses plain HTTP, and any certificate error, for the site
// until max-age has passed, with no way for the site's owner to undo it.
// IncludeSubDomains extends this to every name under the site, including
// names served elsewhere or not over HTTPS at all. Preload asks browsers
// to build the site into their lists, from which removal takes months.
// Set them only for a site whose owner asked for them.
type SitePolicy struct {
	// KeepHTTP serves the site's plain HTTP requests with the handler
	// given to [Manager.HTTPHandler] instead of redirecting them: for an
	// existing site whose pages may load mixed content, which the Guide
	// says not to redirect without its owner's consent. Pair it with a
	// negative HSTSMaxAge, since HSTS makes browsers use HTTPS anyway.
	KeepHTTP bool
	// HSTSMaxAge overrides [Manager.HSTSMaxAge] for the site: zero keeps
	// it, a negative value sends no header.
	HSTSMaxAge time.Duration
	// IncludeSubDomains adds includeSubDomains to the header.
	IncludeSubDomains bool
	// Preload adds preload to the header. Browsers' preload lists also
	// ask for IncludeSubDomains and a max-age of a year or more.
	Preload bool
}

// site returns name's policy.
func (m *Manager) site(name string) SitePolicy {
	if m.Sites == nil {
		return SitePolicy{}
	}
	return m.Sites(name)
}

// hsts returns the Strict-Transport-Security value for a site's policy,
// or "" for none.
func (m *Manager) hsts(p SitePolicy) string {
	maxAge := p.HSTSMaxAge
	if maxAge == 0 {
		maxAge = m.HSTSMaxAge
	}
	if maxAge == 0 {
		maxAge = DefaultHSTSMaxAge
	}
	if maxAge < 0 {
		return ""
	}
	v := "max-age=" + strconv.FormatInt(int64(maxAge/time.Second), 10)
	if p.IncludeSubDomains {
		v += "; includeSubDomains"
	}
	if p.Preload {
		v += "; preload"
	}
	return v
}

// HTTPSHandler wraps the handler of the HTTPS server so that its answers
// carry the Strict-Transport-Security header of the site's
// [SitePolicy]: by default max-age of [Manager.HSTSMaxAge], no
// subdomains. A browser that once reached a name over HTTPS then refuses
// plain HTTP and certificate errors for it. The header goes only on
// requests that came over TLS, as RFC 6797 requires. A handler that sets
// the header itself overrides it.
func (m *Manager) HTTPSHandler(h http.Handler) http.Handler {
	if m.Sites == nil && m.HSTSMaxAge < 0 {
		return h
	}
	value := m.hsts(SitePolicy{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			v := value
			if m.Sites != nil {
				v = m.hsts(m.Sites(requestName(r)))
			}
			if v != "" {
				w.Header().Set("Strict-Transport-Security", v)
			}
		}
		h.ServeHTTP(w, r)
	})
}

// requestName is the site an HTTPS request is for: the server name the
// client sent, else the Host header, normalized when it can be.
func requestName(r *http.Request) string {
	host := r.TLS.ServerName
	if host == "" {
		host = r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	if name, err := normalizeName(host); err == nil {
		return name
	}
	return host
}
