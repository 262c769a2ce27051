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
	"strings"
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
//   - a failure that is not any one name's is nobody's backoff: a
//     configuration error (terms not agreed, the CA's certificate not
//     trusted, ...), the CA down or failing for everyone, storage that
//     cannot lock or take a challenge answer. It trips the Manager's
//     breaker: it is reported, every attempt fails at once with it for a
//     while (a minute, growing to ten for an outage), and nothing is
//     recorded against names, which go ahead at once when it clears;
//   - a shutdown is not a failure.

// errBackingOff is returned when an attempt is not allowed yet.
var errBackingOff = errors.New("acmetls: backing off after failures")

// backingOffError is errBackingOff for one name and key type, with the
// time of the next attempt.
type backingOffError struct {
	next  time.Time
	msg   string
	cause error // the breaker's error, if it is what holds back
}

func (e *backingOffError) Error() string        { return e.msg }
func (e *backingOffError) Is(target error) bool { return target == errBackingOff }
func (e *backingOffError) Unwrap() error        { return e.cause }

// failingMemory is how long a frontend answers handshakes that wait on a
// first issuance that backs off without looking at storage: at most one
// storage read per name (and key type) and minute, and a certificate
// another frontend obtained meanwhile is served within a minute.
const failingMemory = time.Minute

// configErrorMemory is how long a configuration error is returned without
// asking the CA again: a restart with the configuration fixed retries at
// once.
const configErrorMemory = time.Minute

// maxOutageWait bounds the breaker's wait after an outage: one attempt per
// process every ten minutes costs the CA nothing, and names go ahead soon
// after it is back.
const maxOutageWait = 10 * time.Minute

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
// an attempt may start now, or the error that says why not: the breaker
// (a failure that is no name's), or the name's backoff.
func (m *Manager) mayAttempt(ctx context.Context, name string, kt KeyType) (renew.State, error) {
	if err := m.breaker.open(m.now()); err != nil && !isAdminRetry(ctx) {
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
	return m.loadStateKey(ctx, storage.StateKey(name, string(kt)), name)
}

// loadStateKey is loadState for the state stored at key, of name.
func (m *Manager) loadStateKey(ctx context.Context, key, name string) (renew.State, error) {
	b, err := m.read(ctx, key)
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
	if st.Config != m.config {
		return renew.State{}, nil
	}
	return st, nil
}

// failed records a failed attempt of kind (EventObtainFailed or
// EventRenewFailed) on top of st, and reports it. It returns when the next
// attempt may start. A failure that is not the name's trips the breaker
// instead, and is reported with Attempt 0.
func (m *Manager) failed(ctx context.Context, kind EventKind, name string, kt KeyType, st renew.State, err error, retryAfter, notAfter time.Time) time.Time {
	now := m.now()
	m.stats.failures[problemIndex(err)].Add(1)
	if scope := scopeOf(err); scope != scopeName {
		until := m.breaker.trip(err, scope, now, retryAfter)
		m.emit(Event{Kind: kind, ServerName: name, KeyType: kt, NotAfter: notAfter, NextAttempt: until, Err: err})
		return until
	}
	if isAdminRetry(ctx) && st.Failures > 0 {
		// An administrator's retry that fails again does not lengthen
		// the wait: once the cause is fixed, the next attempt comes as
		// soon as it would have.
		st.Failures--
	}
	st = st.Failed(now, err.Error(), problemType(err), retryAfter)
	st.Name, st.ProblemDetail = name, problemDetail(err)
	st.Config = m.config
	defer m.failureStatus.changed.Add(1)
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

// succeeded clears the failure state of a certificate just obtained, and
// the breaker: the CA and storage work.
func (m *Manager) succeeded(ctx context.Context, name string, kt KeyType, st renew.State) {
	m.breaker.reset()
	m.forgetFailing(name)
	if st.Failures == 0 {
		return
	}
	defer m.failureStatus.changed.Add(1)
	if err := m.remove(ctx, storage.StateKey(name, string(kt)), name, kt); err != nil {
		m.logger().Named("renew").Warn("clearing renewal state", zapName(name), zapErr(err))
	}
}

// configID identifies the settings a stored failure depends on: a failure
// recorded under another CA, contact or challenge setting does not hold
// back an attempt under the new ones. setup keeps it in m.config.
func (m *Manager) configID() string {
	h := fnv.New64a()
	cas := make([]string, 0, len(m.FallbackCAs))
	for _, f := range m.FallbackCAs {
		cas = append(cas, f.URL)
	}
	for _, s := range []string{m.ca(), strings.Join(cas, " "), m.Email, strconv.FormatBool(!m.httpChallenge()),
		strconv.FormatBool(m.DisableTLSALPNChallenge), strconv.FormatBool(m.MustStaple), m.Profile,
		strconv.FormatBool(m.DNS01 != nil), strconv.FormatBool(m.DNSPersist != nil)} {
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
	case errors.Is(err, ErrTermsNotAgreed), errors.Is(err, ErrExternalAccount), errors.Is(err, ErrUnknownProfile),
		errors.As(err, &unknownAuthority), errors.As(err, &hostname),
		errors.As(err, &verification), errors.As(err, &invalid):
		return true
	}
	switch problemType(err) {
	case acme.ProblemTypeExternalAccountRequired, acme.ProblemTypeInvalidContact, acme.ProblemTypeUnsupportedContact:
		return true
	}
	return false
}

// scope says whose failure an error is.
type scope int

const (
	scopeName   scope = iota // the name's: its backoff
	scopeConfig              // the Manager's setup
	scopeOutage              // the CA or storage, failing for every name
)

// scopeOf classifies a failed attempt's error.
func scopeOf(err error) scope {
	if isConfigError(err) {
		return scopeConfig
	}
	var se *storageError
	var p acme.Problem
	switch {
	case errors.As(err, &se):
		return scopeOutage
	case errors.Is(err, ErrPersistRecord):
		// The name's DNS, which its owner fixes: the name's backoff.
		return scopeName
	case errors.As(err, &p):
		// The CA answered: about the name (validation, CAA, rate
		// limits, ...), or about itself (5xx).
		if p.Status >= 500 || p.Type == acme.ProblemTypeServerInternal {
			return scopeOutage
		}
		return scopeName
	}
	// No answer from the CA: unreachable, a broken connection, a bare
	// 5xx, or no answer in time.
	return scopeOutage
}

// storageError is a failure of storage itself, met while obtaining or
// renewing: it is no name's failure.
type storageError struct {
	op  string
	err error
}

func (e *storageError) Error() string {
	return "acmetls: storage failed " + e.op + ": " + e.err.Error()
}
func (e *storageError) Unwrap() error { return e.err }

// breaker holds back every attempt while a failure that is not any one
// name's lasts.
type breaker struct {
	mu       sync.Mutex // guards the fields below
	err      error      // nil: closed
	until    time.Time
	failures int // outages in a row
}

// trip opens the breaker after err, of scope, at now; it returns until
// when. Failures met while it is open (attempts that started before it
// opened) do not lengthen the wait.
func (b *breaker) trip(err error, sc scope, now, retryAfter time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil && now.Before(b.until) {
		return b.until
	}
	wait := configErrorMemory
	if sc == scopeOutage {
		b.failures++
		wait = min(renew.Backoff(b.failures), maxOutageWait)
	}
	b.err, b.until = err, now.Add(wait)
	if retryAfter.After(b.until) {
		b.until = minTime(retryAfter, now.Add(time.Hour))
	}
	return b.until
}

// open returns the error that holds attempts back at now, if any.
func (b *breaker) open(now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil || !now.Before(b.until) {
		return nil
	}
	return &backingOffError{next: b.until, msg: fmt.Sprintf("acmetls: every name waits until %s after: %v",
		b.until.Format(time.RFC3339), b.err), cause: b.err}
}

// reset closes the breaker.
func (b *breaker) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.err, b.failures = nil, 0
}

// adminRetryKey marks the context of an administrator's retry
// ([Manager.RetryNow]): its attempt goes ahead whatever holds every name
// back, and asks every CA, skipped or not, without clearing what holds
// the others back. A success clears it for all.
type adminRetryKey struct{}

func isAdminRetry(ctx context.Context) bool { return ctx.Value(adminRetryKey{}) != nil }

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

// problemDetail returns the CA's problem detail in err, or "".
func problemDetail(err error) string {
	var p acme.Problem
	if errors.As(err, &p) {
		return p.Detail
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
