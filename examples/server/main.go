// Command server terminates TLS for a set of names, and for names allowed
// on demand, with certificates from an ACME CA: Let's Encrypt by default.
// It serves a directory of files, or proxies to an upstream HTTP server.
//
//	server -email ops@example.com -agree-tos -storage /var/lib/acmetls \
//	       -upstream http://127.0.0.1:8080 example.com www.example.com
//
// It listens on :80 (http-01 answers, redirects to HTTPS) and :443, logs
// JSON to standard error, and on SIGTERM or SIGINT stops accepting, lets
// requests in flight finish (30 s at most) and exits. Run it with -h for
// every flag; the README's "Running in production" section has a systemd
// unit.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/netutil"

	"github.com/acmetls/acmetls"
	"github.com/acmetls/acmetls/storage"
	"github.com/acmetls/acmetls/storage/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	ca, email, caRoot, storage  string
	agreeTOS                    bool
	names, onDemand, fallbackCA []string
	ask                         string
	httpAddr, httpsAddr         string
	httpsPort                   int
	root, upstream              string
	hsts                        time.Duration
	hstsSubdomains, hstsPreload bool
	noHTTPChallenge, noALPN     bool
	validator, fleetToken       string
	validationServer            bool
	bodyTimeout                 time.Duration
	defaultName                 string
	adminAddr, adminToken       string
	logLevel                    zapcore.Level
}

// parse reads the flags; args are the command line without the program.
func parse(args []string, out io.Writer) (*config, error) {
	c := &config{logLevel: zapcore.InfoLevel}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.ca, "ca", "letsencrypt", `ACME directory URL, or "letsencrypt" (production) or "staging" (Let's Encrypt's staging CA: untrusted certificates, high limits; try a setup there first)`)
	fs.Func("fallback-ca", "ACME directory URL of a CA ordered from when -ca fails (down, refusing orders, rate limits); may repeat, tried in order, each with its own account", func(s string) error {
		c.fallbackCA = append(c.fallbackCA, s)
		return nil
	})
	fs.StringVar(&c.email, "email", "", "contact address of the ACME account: the CA writes about expiring certificates and changes")
	fs.BoolVar(&c.agreeTOS, "agree-tos", false, "agree to the CA's terms of service (Let's Encrypt requires it; the URL is in the CA's directory)")
	fs.StringVar(&c.caRoot, "ca-root", "", "PEM file of roots to trust for the CA's own HTTPS, added to the system's: for a private CA")
	fs.StringVar(&c.storage, "storage", "", "where accounts and certificates are kept: a directory, or a PostgreSQL connection string (postgres://... or host=... dbname=...) shared by a fleet (default: acmetls under the user's data directory)")
	fs.Func("on-demand", "comma-separated names that get a certificate on their first handshake (may repeat)", func(s string) error {
		c.onDemand = append(c.onDemand, splitNames(s)...)
		return nil
	})
	fs.StringVar(&c.ask, "ask", "", "URL asked before a certificate is obtained on demand for any other name: GET <url>?domain=<name>, a 2xx answer allows it (within 5 s)")
	fs.StringVar(&c.httpAddr, "http-addr", ":80", `address for plain HTTP: http-01 answers and redirects ("" for none; the CA then validates on HTTPS only)`)
	fs.StringVar(&c.httpsAddr, "https-addr", ":443", "address for HTTPS")
	fs.IntVar(&c.httpsPort, "https-port", 0, "port redirects go to, when clients reach HTTPS on another port than -https-addr's (behind a port forward)")
	fs.StringVar(&c.root, "root", "", "directory of files to serve")
	fs.StringVar(&c.upstream, "upstream", "", "HTTP server to proxy requests to, e.g. http://127.0.0.1:8080 (instead of -root)")
	fs.DurationVar(&c.hsts, "hsts", acmetls.DefaultHSTSMaxAge, "HSTS max-age sent over HTTPS; 0 or negative sends none. Browsers then refuse plain HTTP and certificate errors for that long")
	fs.BoolVar(&c.hstsSubdomains, "hsts-subdomains", false, "add includeSubDomains to HSTS: every name under the served ones must then work over HTTPS")
	fs.BoolVar(&c.hstsPreload, "hsts-preload", false, "add preload to HSTS (browsers' lists also want -hsts-subdomains and -hsts of a year or more; removal takes months)")
	fs.DurationVar(&c.bodyTimeout, "body-timeout", time.Minute, "longest a request's body may take to arrive over HTTPS, so that clients trickling bodies do not hold connections; 0 for none")
	fs.StringVar(&c.defaultName, "default-name", "", "name whose certificate is served to clients that send no server name (SNI)")
	fs.BoolVar(&c.noHTTPChallenge, "no-http-challenge", false, "do not use http-01 (port 80 does not reach this server)")
	fs.BoolVar(&c.noALPN, "no-tls-alpn-challenge", false, "do not use tls-alpn-01 (port 443 does not reach this server directly)")
	fs.StringVar(&c.validator, "validator", "", "frontend mode: the URL of the fleet's validation server (e.g. https://validation.internal), which alone talks to the CA; this server never does, and reads certificates from the shared -storage. The CA's http-01 requests are redirected to this URL's host on port 80")
	fs.BoolVar(&c.validationServer, "validation-server", false, "be the fleet's validation server: hold the account, order and renew for the fleet, and answer frontends' issuance requests at /.well-known/acmetls/issue on both addresses (prefer https:// for -validator: the token then does not travel in the clear)")
	fs.StringVar(&c.fleetToken, "fleet-token", os.Getenv("ACMETLS_FLEET_TOKEN"), "the fleet's shared secret, for -validator or -validation-server (default $ACMETLS_FLEET_TOKEN, which keeps it out of ps)")
	fs.StringVar(&c.adminAddr, "admin-addr", "", "loopback address (127.0.0.1:PORT) for administrators: the status page at /, its JSON API, retries, and Prometheus metrics at /metrics; every request needs -admin-token")
	fs.StringVar(&c.adminToken, "admin-token", os.Getenv("ACMETLS_ADMIN_TOKEN"), "the administrators' token, for -admin-addr: a bearer token, or the password of basic authentication in a browser (default $ACMETLS_ADMIN_TOKEN, which keeps it out of ps)")
	fs.TextVar(&c.logLevel, "log-level", c.logLevel, "least level logged: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: server [flags] name ...\n\n"+
			"Serves HTTPS for the names, with certificates it obtains and renews from an ACME CA.\n"+
			"Names given here are obtained at start; -on-demand and -ask allow more on their first handshake.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for _, a := range fs.Args() {
		c.names = append(c.names, splitNames(a)...)
	}
	switch c.ca {
	case "letsencrypt", "":
		c.ca = acmetls.LetsEncryptURL
	case "staging":
		c.ca = acmetls.LetsEncryptStagingURL
	}
	switch {
	case len(c.names) == 0 && len(c.onDemand) == 0 && c.ask == "":
		return nil, errors.New("no names: give names as arguments, or allow some with -on-demand or -ask")
	case c.root != "" && c.upstream != "":
		return nil, errors.New("-root and -upstream: give one")
	case c.root == "" && c.upstream == "" && !c.validationServer:
		return nil, errors.New("nothing to serve: give -root or -upstream")
	case c.validator != "" && c.validationServer:
		return nil, errors.New("-validator and -validation-server: a server is a frontend or the validation server, not both")
	case (c.validator != "" || c.validationServer) && c.fleetToken == "":
		return nil, errors.New("-validator and -validation-server need the fleet's token: -fleet-token or $ACMETLS_FLEET_TOKEN")
	case c.adminAddr != "" && c.adminToken == "":
		return nil, errors.New("-admin-addr needs a token: -admin-token or $ACMETLS_ADMIN_TOKEN")
	case c.adminAddr != "" && len(strings.TrimSpace(c.adminToken)) < minAdminToken:
		return nil, fmt.Errorf("-admin-token: %d characters; give at least %d (openssl rand -hex 16)", len(c.adminToken), minAdminToken)
	case c.adminAddr != "" && !isLoopback(c.adminAddr):
		return nil, fmt.Errorf("-admin-addr %q: give a loopback address such as 127.0.0.1:8081; reach it from elsewhere through a proxy with TLS", c.adminAddr)
	}
	return c, nil
}

// minAdminToken is the shortest admin token accepted: one a local user
// cannot guess.
const minAdminToken = 16

// adminConns bounds the admin address's connections, so that local
// clients cannot take the process's file descriptors through it.
const adminConns = 32

// isLoopback reports whether addr (host:port) listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func splitNames(s string) []string {
	var names []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

// run serves until ctx ends. ready, if not nil, is called with the
// listeners' addresses once they are open.
func run(ctx context.Context, args []string, out io.Writer, ready func(httpAddr, httpsAddr net.Addr)) error {
	c, err := parse(args, out)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(c.logLevel)
	logCfg.DisableStacktrace = true
	logger, err := logCfg.Build()
	if err != nil {
		return err
	}
	defer logger.Sync()

	m := &acmetls.Manager{
		CA:                      c.ca,
		Email:                   c.email,
		AgreeToTerms:            c.agreeTOS,
		HTTPSPort:               c.httpsPort,
		DisableHTTPChallenge:    c.noHTTPChallenge,
		DisableTLSALPNChallenge: c.noALPN,
		DefaultServerName:       c.defaultName,
		Logger:                  logger,
	}
	for _, u := range c.fallbackCA {
		m.FallbackCAs = append(m.FallbackCAs, acmetls.FallbackCA{URL: u})
	}
	switch {
	case c.validator != "":
		m.Validator = &acmetls.Validator{URL: c.validator, Token: c.fleetToken}
	case c.validationServer:
		m.IssuanceToken = c.fleetToken
	}
	if c.caRoot != "" {
		pem, err := os.ReadFile(c.caRoot)
		if err != nil {
			return fmt.Errorf("-ca-root: %w", err)
		}
		roots, err := x509.SystemCertPool()
		if err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-ca-root: no certificate in %s", c.caRoot)
		}
		m.RootCAs = roots
	}
	switch {
	case strings.HasPrefix(c.storage, "postgres://"), strings.HasPrefix(c.storage, "postgresql://"), strings.Contains(c.storage, "dbname="):
		pg, err := postgres.Open(ctx, c.storage)
		if err != nil {
			return fmt.Errorf("-storage: %w", err)
		}
		defer pg.Close()
		m.Storage = pg
	case c.storage != "":
		m.Storage = storage.Dir(c.storage)
	}
	if len(c.onDemand) > 0 || c.ask != "" {
		m.OnDemand = &acmetls.OnDemand{Names: c.onDemand}
		if c.ask != "" {
			decide, err := askDecision(c.ask)
			if err != nil {
				return err
			}
			m.OnDemand.Decision = decide
		}
	}
	m.HSTSMaxAge = c.hsts
	if c.hsts <= 0 {
		m.HSTSMaxAge = -1
	} else if c.hstsSubdomains || c.hstsPreload {
		site := acmetls.SitePolicy{IncludeSubDomains: c.hstsSubdomains, Preload: c.hstsPreload}
		m.Sites = func(string) acmetls.SitePolicy { return site }
	}

	var handler http.Handler
	if c.upstream != "" {
		u, err := url.Parse(c.upstream)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return fmt.Errorf("-upstream %q: not an http:// or https:// URL", c.upstream)
		}
		rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.SetXForwarded()
			r.Out.Host = r.In.Host
		}}
		rp.ErrorLog, _ = zap.NewStdLogAt(logger.Named("upstream"), zap.WarnLevel)
		handler = rp
	} else if c.root != "" {
		handler = http.FileServer(http.Dir(c.root))
	} else {
		handler = http.NotFoundHandler() // a validation server serving nothing else
	}

	if c.bodyTimeout > 0 {
		handler = bodyDeadline(handler, c.bodyTimeout)
	}

	if c.adminAddr != "" {
		adminLn, err := net.Listen("tcp", c.adminAddr)
		if err != nil {
			return fmt.Errorf("-admin-addr: %w", err)
		}
		admin := &http.Server{
			Handler:           m.AdminHandler(acmetls.AdminAuth{Token: c.adminToken}),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second, // a retry's answer may take minutes: no write timeout
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          zap.NewStdLog(logger.Named("admin")),
		}
		go admin.Serve(netutil.LimitListener(adminLn, adminConns))
		defer admin.Close()
		logger.Info("admin page", zap.Stringer("addr", adminLn.Addr()))
	}

	var httpLn net.Listener
	if c.httpAddr != "" {
		if httpLn, err = net.Listen("tcp", c.httpAddr); err != nil {
			return fmt.Errorf("-http-addr: %w", err)
		}
	}
	httpsLn, err := net.Listen("tcp", c.httpsAddr)
	if err != nil {
		if httpLn != nil {
			httpLn.Close()
		}
		return fmt.Errorf("-https-addr: %w", err)
	}
	var httpAddr net.Addr
	if httpLn != nil {
		httpAddr = httpLn.Addr()
	}
	mode := "standalone"
	switch {
	case m.Validator != nil:
		mode = "frontend of " + c.validator
	case m.IssuanceToken != "":
		mode = "validation server"
	}
	logger.Info("serving", zap.Stringer("https", httpsLn.Addr()), zap.Any("http", httpAddr),
		zap.String("ca", c.ca), zap.Strings("names", c.names), zap.String("mode", mode))
	if ready != nil {
		ready(httpAddr, httpsLn.Addr())
	}
	err = m.Serve(ctx, httpLn, httpsLn, handler, c.names...)
	logger.Info("stopped")
	return err
}

// askDecision allows the names for which GET ask?domain=name answers 2xx,
// as Caddy's on-demand "ask" endpoint does.
func askDecision(ask string) (func(context.Context, string) error, error) {
	u, err := url.Parse(ask)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-ask %q: not an http:// or https:// URL", ask)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	return func(ctx context.Context, name string) error {
		q := *u
		v := q.Query()
		v.Set("domain", name)
		q.RawQuery = v.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, q.String(), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("asking %s: %w", u.Redacted(), err)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s answered %s", u.Redacted(), resp.Status)
		}
		return nil
	}, nil
}

// bodyDeadline bounds the time a request's body may take to arrive: past
// it, reading the body fails and the connection closes.
func bodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		h.ServeHTTP(w, r)
	})
}
