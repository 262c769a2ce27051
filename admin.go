package acmetls

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// AdminAuth says who may use [Manager.AdminHandler]. Its zero value
// admits nobody.
type AdminAuth struct {
	// Token, if set, admits requests that carry it: as a bearer token
	// (Authorization: Bearer <token>) from programs, or as the password
	// of HTTP basic authentication, with any user name, from browsers.
	Token string
	// Authorize, if set, admits the requests it returns true for: the
	// application's own authentication (a session, a client
	// certificate, a proxy's header it trusts).
	Authorize func(r *http.Request) bool
}

// admits reports whether r is admitted.
func (a AdminAuth) admits(r *http.Request) bool {
	if a.Token != "" {
		var got string
		if scheme, credentials, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			got = strings.TrimSpace(credentials)
		} else if _, password, ok := r.BasicAuth(); ok {
			got = password
		}
		if got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.Token)) == 1 {
			return true
		}
	}
	return a.Authorize != nil && a.Authorize(r)
}

// AdminHandler returns the administrators' handler: an HTML status page,
// and a JSON API. Mount it under a path prefix of its own, with
// [http.StripPrefix], on a listener administrators alone reach:
//
//   - GET / is the status page: the counts by state, what holds every
//     attempt back, failing certificates first with the CA's words and
//     their next attempt, then those expiring soonest; a Retry button on
//     each certificate that is not ok, and a Retry-all button while any
//     fail. It works without JavaScript and loads nothing else.
//     ?filter=failing|due|expiring, ?name= and ?offset=N select and page.
//   - GET /certificates lists as [Manager.Status] does, as JSON:
//     ?failing=1, ?due=1, ?expiring=168h, ?name=, ?offset=, ?limit=.
//   - GET /certificates/{name} lists one name's certificates.
//   - POST /retry with name=<name> (form or query) retries that name at
//     once, as [Manager.RetryNow], and answers when the attempt is done:
//     {"name", "ok", "error"}, 200 whether the attempt succeeded or not;
//     a form's POST is sent back to the page. A second retry of the same
//     name while one runs waits for it. A name whose certificates are
//     all ok is refused with 409 unless force=1: renewing it spends the
//     CA's limits for nothing.
//   - POST /retry-all retries every failing name, as [Manager.RetryAll],
//     in the background; one such run at a time.
//   - GET /metrics serves [Manager.Collector]'s metrics to Prometheus,
//     which sends the token as a bearer token (its scrape config's
//     authorization). To serve them with the application's own, register
//     the collector in its registry instead. Either way handshakes are
//     counted from then on (see [Manager.Collector]).
//
// Every request must be admitted by auth, or is answered 401. POSTs from
// another origin (cross-site request forgery, which a browser holding
// basic credentials would otherwise allow) are refused with 403. No
// answer holds key material.
func (m *Manager) AdminHandler(auth AdminAuth) http.Handler {
	a := &admin{m: m}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.page)
	mux.HandleFunc("GET /certificates", a.list)
	mux.HandleFunc("GET /certificates/{name}", a.one)
	mux.HandleFunc("POST /retry", a.retry)
	mux.HandleFunc("POST /retry-all", a.retryAll)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	csrf := http.NewCrossOriginProtection()
	protected := csrf.Handler(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !auth.admits(r) {
			// The connection closes: a client without credentials
			// holds no connection the server keeps for it.
			w.Header().Set("Connection", "close")
			w.Header().Set("WWW-Authenticate", `Basic realm="acmetls", charset="UTF-8"`)
			http.Error(w, "acmetls admin: credentials required", http.StatusUnauthorized)
			return
		}
		protected.ServeHTTP(w, r)
	})
}

type admin struct {
	m        *Manager
	retrying atomic.Bool // a RetryAll runs
}

// adminRetryTimeout bounds an administrator's retry of one name;
// retryAllTimeout a retry of every failing name.
const (
	adminRetryTimeout = obtainTimeout
	retryAllTimeout   = time.Hour
)

func (a *admin) list(w http.ResponseWriter, r *http.Request) {
	q, err := statusQuery(r.URL.Query())
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err)
		return
	}
	a.report(w, r, q)
}

// one lists one name's certificates; 404 if it has none.
func (a *admin) one(w http.ResponseWriter, r *http.Request) {
	a.report(w, r, StatusQuery{Name: r.PathValue("name"), Limit: MaxStatusLimit})
}

func (a *admin) report(w http.ResponseWriter, r *http.Request, q StatusQuery) {
	rep, err := a.m.Status(r.Context(), q)
	if err != nil {
		var ne *NameError
		code := http.StatusInternalServerError
		if errors.As(err, &ne) {
			code = http.StatusBadRequest
		}
		writeJSONError(w, code, err)
		return
	}
	code := http.StatusOK
	if q.Name != "" && rep.Total == 0 {
		code = http.StatusNotFound
	}
	writeJSON(w, code, rep)
}

// statusQuery reads a StatusQuery from the API's query parameters.
func statusQuery(v url.Values) (StatusQuery, error) {
	q := StatusQuery{Name: v.Get("name")}
	for _, p := range []struct {
		key string
		to  *bool
	}{{"failing", &q.Failing}, {"due", &q.Due}} {
		if s := v.Get(p.key); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return q, errors.New(p.key + ": 1, true, 0 or false")
			}
			*p.to = b
		}
	}
	if s := v.Get("expiring"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return q, errors.New("expiring: a positive duration, such as 168h")
		}
		q.ExpiringWithin = d
	}
	for _, p := range []struct {
		key string
		to  *int
	}{{"offset", &q.Offset}, {"limit", &q.Limit}} {
		if s := v.Get(p.key); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return q, errors.New(p.key + ": a number, 0 or more")
			}
			*p.to = n
		}
	}
	return q, nil
}

// retry retries one name, and answers once the attempt is done: JSON, or
// for a browser's form a redirect to the page, which then shows the
// outcome.
func (a *admin) retry(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	name := r.FormValue("name")
	if name == "" {
		writeJSONError(w, http.StatusBadRequest, errors.New("name: the name to retry, as a form or query value"))
		return
	}
	normalized, err := normalizeIdentifier(name)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err)
		return
	}
	if force, _ := strconv.ParseBool(r.FormValue("force")); !force {
		// A name whose certificates are all ok has nothing to retry:
		// renewing it anyway spends the CA's limits.
		if rep, err := a.m.Status(r.Context(), StatusQuery{Name: normalized}); err == nil && rep.Total > 0 && allOK(rep) {
			writeJSONError(w, http.StatusConflict, errors.New(normalized+": its certificates are ok, nothing to retry; force=1 renews them anyway"))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), adminRetryTimeout)
	defer cancel()
	// A second click while the first runs waits for it: one attempt.
	_, err = a.m.adminRetries.Do(ctx, normalized, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, a.m.RetryNow(ctx, normalized)
	})
	a.m.logger().Named("admin").Info("retry", zapName(normalized), zap.Bool("ok", err == nil), zapErr(err))
	if fromForm(r) {
		// The page says what happened from these values alone: a link
		// cannot put words of its own on it.
		result := "done"
		if err != nil {
			result = "failed"
		}
		redirectToPage(w, url.Values{"retried": {normalized}, "result": {result}})
		return
	}
	res := struct {
		Name  string `json:"name"`
		OK    bool   `json:"ok"`
		Error string `json:"error,omitempty"`
	}{Name: normalized, OK: err == nil}
	if err != nil {
		res.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, res)
}

// allOK reports whether every certificate in rep is ok.
func allOK(rep *StatusReport) bool {
	for _, c := range rep.Certificates {
		if c.State != StateOK {
			return false
		}
	}
	return true
}

// retryAll starts RetryAll in the background, unless one runs.
func (a *admin) retryAll(w http.ResponseWriter, r *http.Request) {
	started := a.retrying.CompareAndSwap(false, true)
	if started {
		go func() {
			defer a.retrying.Store(false)
			// Bounded, so that a storage that hangs does not leave the
			// button disabled until a restart.
			ctx, cancel := context.WithTimeout(context.Background(), retryAllTimeout)
			defer cancel()
			err := a.m.RetryAll(ctx)
			a.m.logger().Named("admin").Info("retry of every failing name done", zapErr(err))
		}()
	}
	msg := "retrying every failing name"
	if !started {
		msg = "a retry of every failing name is running already"
	}
	if fromForm(r) {
		redirectToPage(w, url.Values{"retried-all": {strconv.FormatBool(started)}})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"started": started, "message": msg})
}

// fromForm reports whether r is a browser's form submission, answered
// with a redirect to the page rather than JSON.
func fromForm(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") &&
		strings.Contains(r.Header.Get("Accept"), "text/html")
}

// redirectToPage sends the browser back to the page (relative to where
// the handler is mounted: the POSTs are its siblings), with v saying what
// happened.
func redirectToPage(w http.ResponseWriter, v url.Values) {
	w.Header().Set("Location", "./?"+v.Encode())
	w.WriteHeader(http.StatusSeeOther)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeJSONError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

//go:embed admin.html
var adminPageSource string

var adminPage = template.Must(template.New("admin").Funcs(template.FuncMap{
	"when": func(t time.Time, now time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := t.Sub(now)
		rel := "in " + roughly(d)
		if d < 0 {
			rel = roughly(-d) + " ago"
		}
		return t.UTC().Format("2006-01-02 15:04Z") + " (" + rel + ")"
	},
}).Parse(adminPageSource))

// roughly says d as people do: days past two days, hours and minutes
// below, seconds under a minute.
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	case d >= time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + " h " + strconv.Itoa(int(d%time.Hour/time.Minute)) + " min"
	case d >= time.Minute:
		return strconv.Itoa(int(d/time.Minute)) + " min"
	}
	return strconv.Itoa(int(d/time.Second)) + " s"
}

// pageFilters are the page's filters, by their ?filter= value.
var pageFilters = []struct{ Value, Label string }{
	{"", "all"}, {"failing", "failing"}, {"due", "due"}, {"expiring", "expiring within 7 days"},
}

// pageSize is the number of certificates on one page.
const pageSize = 200

func (a *admin) page(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	filter := v.Get("filter")
	q := StatusQuery{Limit: pageSize}
	switch filter {
	case "failing":
		q.Failing = true
	case "due":
		q.Due = true
	case "expiring":
		q.ExpiringWithin = 7 * 24 * time.Hour
	default:
		filter = ""
	}
	q.Offset, _ = strconv.Atoi(v.Get("offset"))
	q.Offset = max(q.Offset, 0)
	search := strings.TrimSpace(v.Get("name"))
	var searchErr error
	if search != "" {
		if q.Name, searchErr = normalizeIdentifier(search); searchErr != nil {
			q.Name = "" // say so, and show everything
		}
	}
	rep, err := a.m.Status(r.Context(), q)
	if err != nil {
		http.Error(w, "acmetls admin: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var message string
	switch {
	case searchErr != nil:
		message = searchErr.Error()
	case v.Get("retried") != "":
		// The message says what the Manager knows of the name now,
		// not what the link says: a link cannot put words on the page.
		if name, err := normalizeIdentifier(v.Get("retried")); err == nil {
			if one, err := a.m.Status(r.Context(), StatusQuery{Name: name}); err == nil && one.Total > 0 {
				message = "Retried " + name + ": its certificates are ok now."
				if !allOK(one) {
					message = "Retried " + name + ": not every certificate is ok; its rows say why."
				}
			}
		}
	case v.Get("retried-all") == "true":
		message = "Retrying every failing name in the background; reload to follow."
	case v.Get("retried-all") == "false":
		message = "A retry of every failing name is running already."
	}
	data := struct {
		*StatusReport
		Filter   string
		Search   string
		Filters  []struct{ Value, Label string }
		Message  string
		Prev     int
		Next     int
		HasPrev  bool
		HasNext  bool
		First    int
		Last     int
		Retrying bool
	}{
		StatusReport: rep, Filter: filter, Search: q.Name, Filters: pageFilters, Message: message,
		Prev: max(q.Offset-pageSize, 0), Next: q.Offset + pageSize,
		HasPrev: q.Offset > 0, HasNext: q.Offset+pageSize < rep.Total,
		First: q.Offset + 1, Last: q.Offset + len(rep.Certificates), Retrying: a.retrying.Load(),
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if err := adminPage.Execute(w, data); err != nil {
		a.m.logger().Named("admin").Warn("rendering the status page", zapErr(err))
	}
}
