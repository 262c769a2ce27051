package acmetls

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

const (
	// maintainInterval is the longest a maintenance loop sleeps; each
	// sleep is jittered by up to a fifth, so processes never align.
	maintainInterval = 10 * time.Minute
	// renewSpread is the window over which certificates falling due
	// together start their renewals.
	renewSpread = 12 * time.Hour
	// defaultRenewConcurrency bounds the renewals in flight.
	defaultRenewConcurrency = 4
	// maxPollsPerPass bounds the renewal-information reads a pass starts;
	// passes run at least once a second while reads are due, which is
	// enough for about 1.3 million certificates read twice a day.
	maxPollsPerPass = 32
)

// schedule is the index of the certificates a Manager maintains: when each
// is due, and when to read its renewal information again, in one queue
// ordered by whichever comes first. A maintenance pass looks at due
// entries only.
type schedule struct {
	mu    sync.Mutex            // guards certs, queue and limit
	certs map[trackKey]*tracked // by name and key type
	queue renew.Queue[*tracked]
	limit renew.Limiter
	wake  chan struct{} // nudges Run when something is queued earlier
}

type trackKey struct {
	name string
	kt   keyIndex
}

// tracked is what the schedule keeps of one certificate: enough to decide
// and to ask the CA, not the certificate itself, and small, since a
// Manager tracks one per name and key type.
type tracked struct {
	renew.Entry // in schedule.queue, at the earlier of due and ari.NextPoll
	trackKey
	notBefore, notAfter time.Time
	aki                 string // authority key ID, shared by most certificates
	serial              string // big-endian bytes
	ari                 renew.ARI
	due                 time.Time // when the renewal should start
	stapleNext          time.Time // when to refresh the OCSP staple; zero: none
	stapleUntil         time.Time // when the staple served expires
}

func (t *tracked) keyType() KeyType { return t.kt.keyType() }

func (t *tracked) String() string { return t.name + "/" + string(t.keyType()) }

// ariCert is the least of a certificate acmez needs to ask for its
// renewal information or to name it in "replaces".
func (t *tracked) ariCert() *x509.Certificate {
	return &x509.Certificate{
		AuthorityKeyId: []byte(t.aki),
		SerialNumber:   new(big.Int).SetBytes([]byte(t.serial)),
		DNSNames:       []string{t.name},
	}
}

func (m *Manager) now() time.Time {
	if m.clock != nil {
		return m.clock()
	}
	return time.Now()
}

func (m *Manager) renewConcurrency() int {
	if m.RenewConcurrency > 0 {
		return m.RenewConcurrency
	}
	return defaultRenewConcurrency
}

// track puts a certificate just cached into the schedule, replacing the
// name's previous certificate of the same type. ri is the renewal
// information stored with it, if any; st says when its staple is due.
func (m *Manager) track(name string, kt KeyType, leaf *x509.Certificate, ri json.RawMessage, st stapling) *tracked {
	now := m.now()
	t := &tracked{
		trackKey:  trackKey{name: name, kt: indexOf(kt)},
		notBefore: leaf.NotBefore, notAfter: leaf.NotAfter,
		aki: m.interned.string(leaf.AuthorityKeyId), serial: string(leaf.SerialNumber.Bytes()),
		stapleNext: st.next, stapleUntil: st.until,
	}
	var info acme.RenewalInfo
	if len(ri) > 0 && json.Unmarshal(ri, &info) == nil && info.HasWindow() {
		w := renew.Window{Start: info.SuggestedWindow.Start, End: info.SuggestedWindow.End}
		t.ari = t.ari.Update(w, info.ExplanationURL, time.Time{}, now, rand.Float64())
	}
	// Renewal information is read at least twice a day; a first read is
	// spread over that period.
	t.ari.NextPoll = renew.Spread(t.String(), now, t.notAfter, renew.MaxPollInterval)
	s := &m.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certs == nil {
		s.certs = make(map[trackKey]*tracked)
	}
	if old := s.certs[t.trackKey]; old != nil {
		s.queue.Remove(old)
	}
	s.certs[t.trackKey] = t
	s.schedule(t, now)
	return t
}

// schedule computes when t is due and queues it. The caller holds s.mu.
func (s *schedule) schedule(t *tracked, now time.Time) {
	ari := &t.ari
	due := renew.Due(t.notBefore, t.notAfter, ari, now)
	t.due = renew.Spread(t.String(), due, t.notAfter, renewSpread)
	if !due.After(now) && ari.Window.Valid() && !now.Before(ari.Window.End) {
		t.due = now // the CA wants it replaced now: no spreading
	}
	s.push(t)
}

// push queues t at the earliest of its due time, its next poll and its
// next staple refresh, and wakes Run. The caller holds s.mu.
func (s *schedule) push(t *tracked) {
	next := t.due
	if t.ari.NextPoll.Before(next) {
		next = t.ari.NextPoll
	}
	if !t.stapleNext.IsZero() && t.stapleNext.Before(next) {
		next = t.stapleNext
	}
	s.queue.Push(t, next)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run maintains the Manager's certificates until ctx ends: it renews each
// when it is due (by the CA's renewal information, else at a third of its
// lifetime remaining), spreading renewals that fall due together and
// running at most RenewConcurrency at once, and backs off failures as the
// renewal state in storage says. It returns nil when ctx ends, after the
// renewals in flight have stopped.
//
// Certificates are maintained once the Manager holds them: names given to
// ManageSync, and names loaded or obtained on demand.
func (m *Manager) Run(ctx context.Context) error {
	if err := m.init(); err != nil {
		return err
	}
	defer m.client.HTTPClient.CloseIdleConnections()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, m.renewConcurrency())
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-m.sched.wake:
		}
		next := m.maintain(ctx, &wg, slots)
		timer.Reset(jitter(next.Sub(m.now())))
	}
}

// jitter returns d, at most maintainInterval and at least a second, less
// up to a fifth at random.
func jitter(d time.Duration) time.Duration {
	d = min(max(d, time.Second), maintainInterval)
	return d - time.Duration(rand.Int64N(int64(d/5)+1))
}

// maintain starts what is due now: renewals as slots free up and the
// limit allows, and renewal-information reads. It returns when it next has
// something to do.
func (m *Manager) maintain(ctx context.Context, wg *sync.WaitGroup, slots chan struct{}) time.Time {
	now := m.now()
	s := &m.sched
	s.mu.Lock()
	var renewals, polls, staples []*tracked
	for _, t := range s.queue.PopDue(now, maxPollsPerPass+cap(slots)) {
		switch {
		case t.due.After(now) && len(polls)+len(staples) == maxPollsPerPass:
			s.queue.Push(t, now.Add(time.Second))
		case t.due.After(now) && !t.ari.NextPoll.After(now):
			// While the read is in flight, the renewal stays queued.
			t.ari.NextPoll = now.Add(renew.MaxPollInterval)
			s.push(t)
			polls = append(polls, t)
		case t.due.After(now):
			t.stapleNext = now.Add(renew.MaxPollInterval)
			s.push(t)
			staples = append(staples, t)
		case len(renewals) < cap(slots)-len(slots) && s.limit.Allow(now):
			renewals = append(renewals, t)
		default:
			s.queue.Push(t, maxTime(s.limit.NextAllowed(now), now.Add(time.Second)))
		}
	}
	next := now.Add(maintainInterval)
	if t, ok := s.queue.Next(); ok && t.Before(next) {
		next = t
	}
	s.mu.Unlock()
	for _, t := range polls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.pollARI(ctx, t)
		}()
	}
	for _, t := range staples {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.refreshStaple(ctx, t)
		}()
	}
	for _, t := range renewals {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			_ = m.renew(ctx, t, false)
		}()
	}
	return next
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// pollARI reads a certificate's renewal information and requeues it.
func (m *Manager) pollARI(ctx context.Context, t *tracked) {
	ctx, note := withRetryAfterNote(ctx)
	info, err := m.client.GetRenewalInfo(ctx, t.ariCert())
	now := m.now()
	s := &m.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certs[t.trackKey] != t {
		return // replaced meanwhile
	}
	if err != nil {
		m.logger().Named("renew").Warn("reading renewal information",
			zapName(t.name), zapKeyType(t.keyType()), zapErr(err))
		t.ari.NextPoll = renew.NextPoll(note.get(), now)
		s.push(t)
		return
	}
	var retryAfter time.Time
	if info.RetryAfter != nil {
		retryAfter = *info.RetryAfter
	}
	w := renew.Window{Start: info.SuggestedWindow.Start, End: info.SuggestedWindow.End}
	t.ari = t.ari.Update(w, info.ExplanationURL, retryAfter, now, rand.Float64())
	if t.ari.ExplanationURL != "" {
		m.logger().Named("renew").Info("renewal information has an explanation",
			zapName(t.name), zapKeyType(t.keyType()), zapString("explanation_url", t.ari.ExplanationURL))
	}
	s.schedule(t, now)
}

// tracked returns the schedule's entry for name and kt, or nil.
func (m *Manager) tracked(name string, kt KeyType) *tracked {
	m.sched.mu.Lock()
	defer m.sched.mu.Unlock()
	return m.sched.certs[trackKey{name: name, kt: indexOf(kt)}]
}

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

// renew replaces t's certificate: storage first (another process may have
// renewed it), then the CA, with "replaces" naming the old certificate.
func (m *Manager) renew(ctx context.Context, t *tracked, force bool) error {
	ctx, cancel := context.WithTimeout(ctx, obtainTimeout)
	defer cancel()
	kt := t.keyType()
	st, err := m.loadState(ctx, t.name, kt)
	if err != nil {
		m.requeue(t, m.now().Add(renew.Backoff(1)))
		return err
	}
	if !force && !st.MayAttempt(m.now()) {
		m.requeue(t, st.NextAttempt)
		return errBackingOff
	}
	lock := storage.CertLockName(t.name, string(kt))
	if err := m.store.Lock(ctx, lock); err != nil {
		m.requeue(t, m.now().Add(renew.Backoff(1)))
		return fmt.Errorf("acmetls: locking %s: %w", lock, err)
	}
	defer m.unlock(lock)
	// Storage first: a sibling may have renewed while we waited.
	if c, rec, err := m.readCert(ctx, t.name, kt); err == nil && c != nil && string(c.Leaf.SerialNumber.Bytes()) != t.serial {
		if _, err := m.cacheCert(ctx, t.name, kt, c, rec.RenewalInfo); err == nil {
			return nil
		}
	}
	ctx, note := withRetryAfterNote(ctx)
	c, ri, err := m.obtain(ctx, t.name, kt, t.ariCert())
	now := m.now()
	if err != nil {
		st = st.Failed(now, err.Error(), problemType(err), note.get())
		if serr := m.saveState(ctx, t.name, kt, st); serr != nil {
			err = errors.Join(err, serr)
		}
		m.requeue(t, st.NextAttempt)
		m.emit(Event{Kind: EventRenewFailed, ServerName: t.name, KeyType: kt, NotAfter: t.notAfter,
			Attempt: st.Failures, NextAttempt: st.NextAttempt, Err: err})
		return err
	}
	if st.Failures > 0 {
		m.clearState(ctx, t.name, kt)
	}
	if _, err := m.cacheCert(ctx, t.name, kt, c, ri); err != nil {
		return err
	}
	m.emit(Event{Kind: EventRenewed, ServerName: t.name, KeyType: kt, NotAfter: c.Leaf.NotAfter})
	return nil
}

// requeue puts t back to be renewed at at, unless it was replaced.
func (m *Manager) requeue(t *tracked, at time.Time) {
	m.reschedule(t, func(t *tracked) { t.due = at })
}

// reschedule applies set to t and requeues it, unless t was replaced
// meanwhile.
func (m *Manager) reschedule(t *tracked, set func(*tracked)) {
	s := &m.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certs[t.trackKey] == t {
		set(t)
		s.push(t)
	}
}

// problemType returns the CA's problem type in err, or "".
func problemType(err error) string {
	var p acme.Problem
	if errors.As(err, &p) {
		return p.Type
	}
	return ""
}

// stateKey is where the renewal state of a certificate lives in storage.
func stateKey(name string, kt KeyType) string {
	return storage.Prefix + "/state/" + storage.Safe(name) + "/" + storage.Safe(string(kt)) + ".json"
}

// loadState reads the renewal state of a certificate; none is the zero
// state.
func (m *Manager) loadState(ctx context.Context, name string, kt KeyType) (renew.State, error) {
	b, err := m.store.Load(ctx, stateKey(name, kt))
	if errors.Is(err, fs.ErrNotExist) {
		return renew.State{}, nil
	}
	if err != nil {
		return renew.State{}, fmt.Errorf("acmetls: loading renewal state of %q: %w", name, err)
	}
	var st renew.State
	if err := json.Unmarshal(b, &st); err != nil {
		m.logger().Named("renew").Error("corrupt renewal state; starting over", zapName(name), zapErr(err))
		return renew.State{}, nil
	}
	return st, nil
}

func (m *Manager) saveState(ctx context.Context, name string, kt KeyType, st renew.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := m.store.Store(ctx, stateKey(name, kt), b); err != nil {
		return fmt.Errorf("acmetls: storing renewal state of %q: %w", name, err)
	}
	return nil
}

func (m *Manager) clearState(ctx context.Context, name string, kt KeyType) {
	if err := m.store.Delete(ctx, stateKey(name, kt)); err != nil {
		m.logger().Named("renew").Warn("clearing renewal state", zapName(name), zapErr(err))
	}
}

// RetryNow clears the backoff of name's certificates and tries at once:
// a renewal for a certificate the Manager holds, a first issuance for one
// it could not obtain. It returns the attempt's error.
func (m *Manager) RetryNow(ctx context.Context, name string) error {
	if err := m.init(); err != nil {
		return err
	}
	name, err := normalizeName(name)
	if err != nil {
		return err
	}
	m.forgetFailing(name)
	var errs []error
	for _, kt := range m.keyTypes() {
		st, err := m.loadState(ctx, name, kt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.Failures > 0 {
			if err := m.saveState(ctx, name, kt, st.RetryNow()); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if t := m.tracked(name, kt); t != nil {
			errs = append(errs, m.renew(ctx, t, true))
		} else if _, err := m.certFor(ctx, name, kt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RetryAll calls RetryNow for every name whose last attempt failed, as
// the renewal states in storage say.
func (m *Manager) RetryAll(ctx context.Context) error {
	if err := m.init(); err != nil {
		return err
	}
	keys, err := m.store.List(ctx, storage.Prefix+"/state", false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("acmetls: listing renewal states: %w", err)
	}
	var errs []error
	for _, k := range keys {
		name := k[strings.LastIndexByte(k, '/')+1:]
		errs = append(errs, m.RetryNow(ctx, name))
	}
	return errors.Join(errs...)
}
