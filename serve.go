package acmetls

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Timeouts of the servers [Manager.Serve] runs.
const (
	// ServeHandshakeTimeout bounds, on the HTTPS server, the TLS
	// handshake and the reading of a request's headers: net/http applies
	// one deadline to both. It is longer than the 30 seconds a handshake
	// may wait for a first on-demand certificate, so that issuance is
	// not cut short; an http.Server of your own with a shorter
	// ReadHeaderTimeout cuts it.
	ServeHandshakeTimeout = handshakeWait + 10*time.Second
	// ServeIdleTimeout closes keep-alive connections idle this long.
	ServeIdleTimeout = 2 * time.Minute
	// ServeShutdownTimeout is how long Serve lets requests in flight
	// finish once its context ends, before it closes their connections.
	ServeShutdownTimeout = 30 * time.Second
)

// ListenAndServe is [Manager.Serve] on ":80" and ":443", the ports the CA
// validates on.
func (m *Manager) ListenAndServe(ctx context.Context, handler http.Handler, names ...string) error {
	httpLn, err := net.Listen("tcp", ":80")
	if err != nil {
		return fmt.Errorf("acmetls: port 80, where the CA validates http-01: %w", err)
	}
	httpsLn, err := net.Listen("tcp", ":443")
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("acmetls: port 443: %w", err)
	}
	return m.Serve(ctx, httpLn, httpsLn, handler, names...)
}

// Serve serves handler over HTTPS on httpsLn, with certificates for names
// and for whatever [Manager.OnDemand] allows, until ctx ends. It does in
// the right order what a server with automatic certificates needs:
//
//  1. It starts serving on both listeners: [Manager.HTTPHandler] on
//     httpLn (http-01 answers, and redirects to HTTPS as
//     [Manager.Sites] says) and handler behind [Manager.HTTPSHandler]
//     (HSTS) on httpsLn, with [Manager.TLSConfig] (tls-alpn-01 answers).
//     The CA can validate from this moment on.
//  2. It brings names up in the background, as [Manager.ManageSync]
//     does: from storage, else from the CA. Failures are logged and sent
//     to OnEvent; the names are retried as the backoff allows, by
//     handshakes and by renewal.
//  3. It runs [Manager.Run], which renews and staples.
//
// When ctx ends, it stops accepting connections, lets requests in flight
// finish for up to [ServeShutdownTimeout], stops Run and the bringing up
// of names, and returns nil once all of it has stopped. It returns
// earlier, with the error, if a listener fails. It closes both listeners.
// A nil httpLn serves no plain HTTP, and the Manager then asks the CA for
// tls-alpn-01 validation only.
//
// The HTTPS server allows [ServeHandshakeTimeout] for a handshake and a
// request's headers, enough for a first on-demand issuance, and closes
// idle connections after [ServeIdleTimeout]; it sets no timeout on
// reading bodies or writing answers, which depend on the application: a
// handler that reads bodies should bound them, with
// [http.ResponseController.SetReadDeadline] or [http.TimeoutHandler], or
// clients that trickle a body hold their connections. The port-80 server has
// short timeouts, since it serves only challenges and redirects.
func (m *Manager) Serve(ctx context.Context, httpLn, httpsLn net.Listener, handler http.Handler, names ...string) error {
	closeAll := func() {
		if httpLn != nil {
			httpLn.Close()
		}
		httpsLn.Close()
	}
	if httpLn == nil {
		if m.DisableTLSALPNChallenge {
			closeAll()
			return errors.New("acmetls: Serve without a port-80 listener and with tls-alpn-01 disabled: the CA could validate nothing")
		}
		m.noPort80.Store(true) // before setup, which fingerprints the challenge types
	}
	if err := m.init(); err != nil {
		closeAll()
		return err
	}
	if _, port, err := net.SplitHostPort(httpsLn.Addr().String()); err == nil {
		if p, err := strconv.Atoi(port); err == nil {
			m.servedPort.Store(int32(p))
		}
	}
	// Handshake errors of clients (refused names, scanners) are noise:
	// logged at Debug.
	errorLog, _ := zap.NewStdLogAt(m.logger().Named("http"), zap.DebugLevel)
	httpsHandler := m.HTTPSHandler(handler)
	if m.IssuanceToken != "" {
		// Frontends may reach a validation server over HTTPS too, where
		// the token does not travel in the clear.
		issuance, app := m.issuance(), httpsHandler
		httpsHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == IssuePath {
				issuance.ServeHTTP(w, r)
				return
			}
			app.ServeHTTP(w, r)
		})
	}
	httpsSrv := &http.Server{
		Handler:           httpsHandler,
		TLSConfig:         m.TLSConfig(),
		ReadHeaderTimeout: ServeHandshakeTimeout,
		IdleTimeout:       ServeIdleTimeout,
		ErrorLog:          errorLog,
	}
	var httpSrv *http.Server
	if httpLn != nil {
		httpSrv = &http.Server{
			Handler:           m.HTTPHandler(nil),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      15 * time.Second,
			IdleTimeout:       30 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          errorLog,
		}
	}

	var servers sync.WaitGroup
	errc := make(chan error, 2)
	serve := func(serve func() error) {
		servers.Go(func() {
			if err := serve(); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
	}
	serve(func() error { return httpsSrv.ServeTLS(httpsLn, "", "") })
	if httpSrv != nil {
		serve(func() error { return httpSrv.Serve(httpLn) })
	}

	// The listeners are open: the CA's validations queue in their
	// backlogs until the servers accept them.
	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var background sync.WaitGroup
	background.Go(func() { _ = m.Run(work) })
	if m.names.due(m.now()) {
		// Which names storage holds, so that port 80 tells them from
		// Host headers it must not redirect.
		background.Go(func() { m.listNames(work) })
	}
	if len(names) > 0 {
		background.Go(func() {
			if err := m.ManageSync(work, names...); err != nil && work.Err() == nil {
				m.logger().Error("bringing up managed names; they are retried as their backoff allows", zapErr(err))
			}
		})
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("acmetls: serving: %w", err)
	}
	drain, cancel := context.WithTimeout(context.WithoutCancel(ctx), ServeShutdownTimeout)
	defer cancel()
	var shutdown sync.WaitGroup
	for _, srv := range []*http.Server{httpsSrv, httpSrv} {
		if srv == nil {
			continue
		}
		shutdown.Go(func() {
			if srv.Shutdown(drain) != nil {
				srv.Close() // requests still running: cut them
			}
		})
	}
	shutdown.Wait()
	closeAll()
	servers.Wait()
	stopWork()
	background.Wait()
	m.closeIdleConnections()
	return err
}
