package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strconv"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// This file holds the failure state of certificates, one concern shared
// by the handshake path, obtain and Run:
//
//   - a certificate's renewal state (failures in a row, next attempt) lives
//     in storage, so a restart or a sibling keeps the schedule; when storage
//     refuses the write, it is kept in memory (see unsaved.go), so a storage
//     that cannot be written never lets a name order again at once;
//   - a handshake that waits on a first issuance that backs off fails from
//     memory (failing), reading storage at most once per failingMemory;
//   - a configuration error (terms not agreed, the CA's certificate not
//     trusted, ...) is nobody's backoff: it is returned at once, reported,
//     remembered briefly so that the CA is not asked again per handshake,
//     and never stored;
//   - a shutdown is not a failure.

// errBackingOff is returned when an attempt is not allowed yet.
var errBackingOff = errors.New("acmetls: backing off after failures")

// backingOffError is errBackingOff for one name and key type, with the
// time of the next attempt.
type backingOffError struct {
	next time.Time
	msg  string
}

func (e *backingOffError) Error() string        { return e.msg }
func (e *backingOffError) Is(target error) bool { return target == errBackingOff }

// failingMemory is how long a frontend answers handshakes that wait on a
// first issuance that backs off without looking at storage: at most one
// storage read per name (and key type) and minute, and a certificate
// another frontend obtained meanwhile is served within a minute.
const failingMemory = time.Minute

// configErrorMemory is how long a configuration error is returned without
// asking the CA again: a restart with the configuration fixed retries at
// once.
const configErrorMemory = time.Minute

// failingKey is the key under which failing remembers a failed first
// issuance of kt for name, while p is cached for it: the name alone when
// nothing is, so that no handshake for it reads storage; the name and the
// key type otherwise, so that only the clients that need that type wait.
func failingKey(name string, p *certPair, kt KeyType) string {
	if p == nil {
		return name
	}
	return name + "/" + string(kt)
}

// forgetFailing forgets the failed first issuances of name, of every key
// type.
func (m *Manager) forgetFailing(name string) {
	m.failing.forget(name)
	for _, kt := range m.keyTypes() {
		m.failing.forget(name + "/" + string(kt))
	}
}

// mayAttempt returns the renewal state of name's certificate of type kt if
// an attempt may start now, or the error that says why not: a recent
// configuration error, or a backoff.
func (m *Manager) mayAttempt(ctx context.Context, name string, kt KeyType) (renew.State, error) {
	if err := m.configError(); err != nil {
		return renew.State{}, err
	}
	st, err := m.loadState(ctx, name, kt)
	if err != nil {
		return st, err
	}
	if !st.MayAttempt(m.now()) {
		return st, &backingOffError{next: st.NextAttempt, msg: fmt.Sprintf("%v: %q (%s) failed %d times, next attempt at %s: %s",
			errBackingOff, name, kt, st.Failures, st.NextAttempt.Format(time.RFC3339), st.LastError)}
	}
	return st, nil
}

// loadState reads the renewal state of a certificate: the one kept in
// memory if storage refused it, else the stored one. None, a corrupt one,
// or one recorded under another configuration (another CA, other
// challenge settings) is the zero state.
func (m *Manager) loadState(ctx context.Context, name string, kt KeyType) (renew.State, error) {
	b, err := m.read(ctx, storage.StateKey(name, string(kt)))
	if errors.Is(err, fs.ErrNotExist) {
		return renew.State{}, nil
	}
	if err != nil {
		return renew.State{}, fmt.Errorf("acmetls: loading renewal state of %q: %w", name, err)
	}
	st, err := renew.ParseState(b)
	if err != nil {
		m.logger().Named("renew").Error("corrupt renewal state; starting over", zapName(name), zapErr(err))
		return renew.State{}, nil
	}
	if st.Config != m.configID() {
		return renew.State{}, nil
	}
	return st, nil
}

// failed records a failed attempt of kind (EventObtainFailed or
// EventRenewFailed) on top of st, and reports it. It returns when the next
// attempt may start. A configuration error is reported and remembered,
// but not recorded as the name's failure.
func (m *Manager) failed(ctx context.Context, kind EventKind, name string, kt KeyType, st renew.State, err error, retryAfter, notAfter time.Time) time.Time {
	now := m.now()
	if isConfigError(err) {
		until := now.Add(configErrorMemory)
		m.rememberConfigError(err, until)
		m.emit(Event{Kind: kind, ServerName: name, KeyType: kt, NotAfter: notAfter, NextAttempt: until, Err: err})
		return until
	}
	st = st.Failed(now, err.Error(), problemType(err), retryAfter)
	st.Config = m.configID()
	b, merr := json.Marshal(st)
	if merr == nil {
		merr = m.write(ctx, storage.StateKey(name, string(kt)), b, name, kt)
	}
	if merr != nil {
		m.logger().Named("renew").Warn("storing renewal state; keeping it in memory",
			zapName(name), zapKeyType(kt), zapErr(merr))
	}
	m.emit(Event{Kind: kind, ServerName: name, KeyType: kt, NotAfter: notAfter,
		Attempt: st.Failures, NextAttempt: st.NextAttempt, Err: err})
	return st.NextAttempt
}

// succeeded clears the failure state of a certificate just obtained.
func (m *Manager) succeeded(ctx context.Context, name string, kt KeyType, st renew.State) {
	m.forgetFailing(name)
	if st.Failures == 0 {
		return
	}
	if err := m.remove(ctx, storage.StateKey(name, string(kt)), name, kt); err != nil {
		m.logger().Named("renew").Warn("clearing renewal state", zapName(name), zapErr(err))
	}
}

// configID identifies the settings a stored failure depends on: a failure
// recorded under another CA, contact or challenge setting does not hold
// back an attempt under the new ones.
func (m *Manager) configID() string {
	h := fnv.New64a()
	for _, s := range []string{m.ca(), m.Email, strconv.FormatBool(m.DisableHTTPChallenge),
		strconv.FormatBool(m.DisableTLSALPNChallenge), strconv.FormatBool(m.MustStaple)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return strconv.FormatUint(h.Sum64(), 36)
}

// isConfigError reports whether err comes from the Manager's setup rather
// than from the name: terms not agreed, the CA's certificate not trusted,
// a contact or account binding the CA refuses. Such an error would fail
// every name alike, and is fixed by the operator, not by waiting.
func isConfigError(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		verification     *tls.CertificateVerificationError
		invalid          x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, ErrTermsNotAgreed), errors.As(err, &unknownAuthority), errors.As(err, &hostname),
		errors.As(err, &verification), errors.As(err, &invalid):
		return true
	}
	switch problemType(err) {
	case acme.ProblemTypeExternalAccountRequired, acme.ProblemTypeInvalidContact, acme.ProblemTypeUnsupportedContact:
		return true
	}
	return false
}

// configErr remembers the last configuration error until a time.
type configErr struct {
	mu    sync.Mutex // guards err and until
	err   error
	until time.Time
}

func (m *Manager) rememberConfigError(err error, until time.Time) {
	m.confErr.mu.Lock()
	defer m.confErr.mu.Unlock()
	m.confErr.err, m.confErr.until = err, until
}

// configError returns the configuration error of a recent attempt, if it
// is still remembered.
func (m *Manager) configError() error {
	c := &m.confErr
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil || !m.now().Before(c.until) {
		return nil
	}
	return c.err
}

// isShutdown reports whether an attempt ended because the work it belongs
// to was called off (Run returning, every waiting handshake gone), which
// is not a failure of the name.
func isShutdown(parent context.Context) bool { return parent.Err() != nil }

// problemType returns the CA's problem type in err, or "".
func problemType(err error) string {
	var p acme.Problem
	if errors.As(err, &p) {
		return p.Type
	}
	return ""
}

// recentErrors remembers errors by key, each until its expiry, in bounded
// memory: the on-demand policy's denials, and first issuances backing off.
type recentErrors struct {
	mu    sync.Mutex // guards byKey
	byKey map[string]recentError
}

type recentError struct {
	err   error
	until time.Time
}

// maxRecentErrors bounds the memory a flood of random names can take.
const maxRecentErrors = 10_000

// check returns the error remembered for key, if it is still current.
func (d *recentErrors) check(key string, now time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.byKey[key]; ok {
		if now.Before(e.until) {
			return e.err
		}
		delete(d.byKey, key)
	}
	return nil
}

// forget drops what is remembered of key.
func (d *recentErrors) forget(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.byKey, key)
}

// remember keeps err for key until until. When full, it starts over.
func (d *recentErrors) remember(key string, err error, until time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byKey == nil || len(d.byKey) >= maxRecentErrors {
		d.byKey = make(map[string]recentError)
	}
	d.byKey[key] = recentError{err: err, until: until}
}
