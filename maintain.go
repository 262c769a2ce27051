package acmetls

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

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
	// due is set when the queue has something due, by a timer armed for
	// the queue's first entry: what a handshake checks when Run is not
	// running. The timer refers to due alone, not to the Manager.
	due       *atomic.Bool
	clock     clock
	armed     int64       // when the timer is armed for, Unix ns
	stopArmed func() bool // stops that timer
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
	stapleUntil         time.Time // when the staple served must go; zero: none served
	stapleAt            int64     // the served staple's thisUpdate, Unix seconds; zero: none
	// issuer is the index of the CA that issued it in Manager.issuers,
	// asked for its renewal information and named in "replaces"; -1 for
	// a CA no longer configured, which is never asked.
	issuer int8
	// names are the names the certificate holds, when it holds several
	// (ManageGroup); nil otherwise.
	names []string
	// earliest is, for a certificate this process just obtained, the
	// earliest it is due by the local clock (Unix seconds; zero: none),
	// an hour at most after it came: a clock far ahead of the CA's must
	// not make every new certificate due at once, and renewals a loop.
	earliest int64
}

func (t *tracked) keyType() KeyType { return t.kt.keyType() }

func (t *tracked) String() string { return t.name + "/" + string(t.keyType()) }

// ariCert is the least of a certificate acmez needs to ask for its
// renewal information or to name it in "replaces".
func (t *tracked) ariCert() *x509.Certificate {
	c := &x509.Certificate{
		AuthorityKeyId: []byte(t.aki),
		SerialNumber:   new(big.Int).SetBytes([]byte(t.serial)),
		DNSNames:       []string{t.name},
	}
	if len(t.names) > 1 {
		c.DNSNames = t.names // a group renews as a group
	}
	return c
}

func (m *Manager) renewConcurrency() int {
	if m.RenewConcurrency > 0 {
		return m.RenewConcurrency
	}
	return defaultRenewConcurrency
}

// track puts a certificate just cached into the schedule, replacing the
// name's previous certificate of the same type. rec is its record, with
// the CA that issued it and its stored renewal information; st says when
// its staple is due.
func (m *Manager) track(name string, kt KeyType, leaf *x509.Certificate, rec *storage.CertRecord, st stapling, fresh bool) *tracked {
	now := m.now()
	t := &tracked{
		trackKey:  trackKey{name: name, kt: indexOf(kt)},
		notBefore: leaf.NotBefore, notAfter: leaf.NotAfter,
		aki: m.interned.string(leaf.AuthorityKeyId), serial: string(leaf.SerialNumber.Bytes()),
		stapleNext: st.next, stapleUntil: st.until, stapleAt: unixOrZero(st.at),
		issuer: m.issuerOf(rec.CA),
	}
	if severalNames(leaf) {
		t.names = certNames(leaf)
	}
	if fresh {
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		t.earliest = now.Add(min(life/10, time.Hour)).Unix()
		if !renew.RatioTime(leaf.NotBefore, leaf.NotAfter).After(now) {
			m.logger().Named("renew").Warn("a certificate just obtained is already due by this clock; is the clock right?",
				zapName(name), zapKeyType(kt), zap.Time("not_before", leaf.NotBefore), zap.Time("now", now))
		}
	}
	if w, explanation, ok := storedWindow(rec.RenewalInfo); ok {
		t.ari = t.ari.Update(w, explanation, time.Time{}, now, rand.Float64())
	}
	// Renewal information is read at least twice a day; a first read is
	// spread over that period. Not by a frontend: it never asks the CA.
	t.ari.NextPoll = renew.Spread(t.String(), now, t.notAfter, renew.MaxPollInterval)
	if m.Validator != nil || t.issuer < 0 {
		t.ari.NextPoll = never
	}
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

// storedWindow decodes the renewal information stored with a certificate
// (the CA's answer, as JSON): its window, if it has a valid one, and its
// explanation URL.
func storedWindow(ri json.RawMessage) (renew.Window, string, bool) {
	var info acme.RenewalInfo
	if len(ri) == 0 || len(ri) > maxRenewalInfoSize || json.Unmarshal(ri, &info) != nil {
		return renew.Window{}, "", false
	}
	w := renew.Window{Start: info.SuggestedWindow.Start, End: info.SuggestedWindow.End}
	return w, info.ExplanationURL, w.Valid()
}

// maxRenewalInfoSize bounds the stored renewal information read.
const maxRenewalInfoSize = 64 << 10

// schedule computes when t is due and queues it. The caller holds s.mu.
func (s *schedule) schedule(t *tracked, now time.Time) {
	ari := &t.ari
	due := renew.Due(t.notBefore, t.notAfter, ari, now)
	t.due = renew.Start(t.String(), due, t.notBefore, t.notAfter, renewSpread)
	if !due.After(now) && ari.Window.Valid() && !now.Before(ari.Window.End) {
		t.due = now // the CA wants it replaced now: no spreading
	}
	if t.earliest != 0 {
		t.due = maxTime(t.due, time.Unix(t.earliest, 0))
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
	if !t.stapleUntil.IsZero() && t.stapleUntil.Before(next) {
		next = t.stapleUntil
	}
	s.queue.Push(t, next)
	s.noteNext()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// noteNext arms the timer that sets s.due for the queue's first entry.
// The caller holds s.mu.
func (s *schedule) noteNext() {
	next, at := int64(math.MaxInt64), time.Time{}
	if t, ok := s.queue.Next(); ok {
		next, at = t.UnixNano(), t
	}
	if next == s.armed {
		return
	}
	s.armed = next
	if s.stopArmed != nil {
		s.stopArmed()
		s.stopArmed = nil
	}
	if next != math.MaxInt64 {
		due := s.due
		s.stopArmed = s.clock.AfterFunc(at.Sub(s.clock.Now()), func() { due.Store(true) })
	}
}

// Run maintains the Manager's certificates until ctx ends: it renews each
// when it is due (by the CA's renewal information, else at a third of its
// lifetime remaining), spreading renewals that fall due together and
// running at most RenewConcurrency at once, and backs off failures as the
// renewal state in storage says. It refreshes OCSP staples and drops
// those about to expire, and writes to storage what storage refused
// before (certificates served from memory meanwhile). It returns nil when
// ctx ends, after the work in flight has stopped; renewals cut short by
// the end are not recorded as failures.
//
// Certificates are maintained once the Manager holds them: names given to
// ManageSync, and names loaded or obtained on demand. [Manager.Serve]
// runs Run. A Manager whose Run is not running still renews, from
// handshakes: see [Manager.GetCertificate].
func (m *Manager) Run(ctx context.Context) error {
	if err := m.init(); err != nil {
		return err
	}
	m.running.Add(1)
	defer m.running.Add(-1)
	defer m.closeIdleConnections()
	var wg sync.WaitGroup
	defer wg.Wait()
	if w, ok := m.store.(storage.Watcher); ok {
		wg.Go(func() { m.watch(ctx, w) })
	} else {
		wg.Go(func() { m.pollChanges(ctx) })
	}
	if m.IssuanceToken != "" {
		wg.Go(func() { m.trackStored(ctx) })
	}
	slots := make(chan struct{}, m.renewConcurrency())
	timer, stop := m.newTimer(0)
	var flushAt time.Time // when to write again what storage refused
	for {
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-timer:
		case <-m.sched.wake:
			stop()
		}
		next := m.maintain(ctx, &wg, slots)
		if m.unsaved.len() > 0 {
			if now := m.now(); !now.Before(flushAt) {
				m.flushUnsaved(ctx)
				flushAt = now.Add(flushInterval)
			}
			next = minTime(next, flushAt)
		}
		timer, stop = m.newTimer(jitter(next.Sub(m.now())))
	}
}

// flushInterval is how often Run writes again what storage refused.
const flushInterval = 30 * time.Second

// jitter returns d, at most maintainInterval and at least a tenth of a
// second, less up to a fifth at random: Run wakes early, never late, for
// what it must do at an instant (a staple to drop).
func jitter(d time.Duration) time.Duration {
	d = min(max(d, 100*time.Millisecond), maintainInterval)
	return d - time.Duration(rand.Int64N(int64(d/5)+1))
}

// maintain starts what is due now: renewals as slots free up and the
// limit allows, and renewal-information reads. It returns when it next has
// something to do.
func (m *Manager) maintain(ctx context.Context, wg *sync.WaitGroup, slots chan struct{}) time.Time {
	now := m.now()
	s := &m.sched
	s.mu.Lock()
	var renewals, polls, staples, expired []*tracked
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
			if !t.stapleUntil.IsZero() && !now.Before(t.stapleUntil) {
				t.stapleUntil, t.stapleAt = time.Time{}, 0
				expired = append(expired, t)
			}
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
	s.noteNext()
	s.mu.Unlock()
	for _, t := range expired {
		m.dropStaple(t)
	}
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

// pollARI reads a certificate's renewal information and requeues it.
func (m *Manager) pollARI(ctx context.Context, t *tracked) {
	if m.Validator != nil || t.issuer < 0 {
		return // a frontend never asks the CA, nor anyone a CA no longer configured; its NextPoll is never
	}
	ctx, note := withRetryAfterNote(ctx)
	info, err := m.issuers[t.issuer].client.GetRenewalInfo(ctx, t.ariCert())
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

// renew replaces t's certificate: storage first (another process may have
// renewed it), then the CA, with "replaces" naming the old certificate.
// force skips the backoff (an admin's retry). When ctx ends (Run
// returning), the renewal stops and nothing is recorded: a shutdown is not
// a failure.
func (m *Manager) renew(ctx context.Context, t *tracked, force bool) error {
	if m.Validator != nil {
		return m.pickUp(ctx, t)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, m.obtainTimeout())
	defer cancel()
	kt := t.keyType()
	// notStarted reports an attempt that could not start: a shutdown is
	// nothing; storage that cannot lock trips the breaker; storage that
	// cannot be read is reported, and tried again in a minute.
	notStarted := func(st renew.State, err error) error {
		switch {
		case isShutdown(parent):
			m.requeue(t, m.now())
		case errors.As(err, new(*storageError)):
			m.requeue(t, m.failed(ctx, EventRenewFailed, t.name, kt, st, err, time.Time{}, t.notAfter))
		default:
			next := m.now().Add(renew.Backoff(1))
			m.requeue(t, next)
			m.emit(Event{Kind: EventRenewFailed, ServerName: t.name, KeyType: kt, NotAfter: t.notAfter, NextAttempt: next, Err: err})
		}
		return err
	}
	st, err := m.mayAttempt(ctx, t.name, kt)
	var bo *backingOffError
	switch {
	case errors.As(err, &bo) && (!force || bo.cause != nil):
		m.requeue(t, bo.next)
		return err
	case err != nil && bo == nil:
		return notStarted(st, err)
	}
	endTurn, err := m.turn(ctx, t.name)
	if err != nil {
		return notStarted(st, err)
	}
	defer endTurn()
	release, err := m.orderSlot(inBackground(ctx), t.name)
	if err != nil {
		return notStarted(st, err)
	}
	defer release()
	l, err := m.lock(ctx, t.name)
	if err != nil {
		return notStarted(st, err)
	}
	defer l.release()
	// Storage first: a sibling may have renewed while we waited.
	if c, rec, err := m.readCert(ctx, t.name, kt); err == nil && c != nil && string(c.Leaf.SerialNumber.Bytes()) != t.serial {
		// Just obtained, by a sibling: the same floor on its next
		// renewal as for one this process obtained.
		if _, err := m.cacheCert(ctx, t.name, kt, c, rec, true); err == nil {
			return nil
		}
	}
	ctx, note := withRetryAfterNote(ctx)
	c, rec, err := m.obtain(ctx, t.name, kt, t)
	if err != nil {
		if isShutdown(parent) {
			m.requeue(t, m.now())
			return err
		}
		m.requeue(t, m.failed(ctx, EventRenewFailed, t.name, kt, st, err, note.get(), t.notAfter))
		return err
	}
	m.succeeded(ctx, t.name, kt, st)
	if _, err := m.install(ctx, l, t.name, kt, c, rec, t.serial); err != nil {
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

// RetryNow clears the backoff of name's certificates and tries at once:
// a renewal for a certificate the Manager holds, a first issuance for one
// it could not obtain. The attempt goes ahead even while a failure that
// is no name's (the CA down) holds every name back, and asks the fallback
// CAs skipped meanwhile; what holds the others back is cleared only if it
// succeeds. It returns the attempt's error. A name the Manager
// neither holds, nor failed to obtain, nor may serve (managed, or allowed
// by the on-demand policy) is refused with [ErrNotManaged], and nothing
// is ordered.
func (m *Manager) RetryNow(ctx context.Context, name string) error {
	if err := m.init(); err != nil {
		return err
	}
	name, err := normalizeIdentifier(name)
	if err != nil {
		return err
	}
	if primary := m.primaryOf(name); primary != "" {
		name = primary // a grouped name's certificate is its group's
	}
	if err := m.checkValidatable(name); err != nil {
		return err
	}
	kts := m.keyTypes()
	states := make([]renew.State, len(kts))
	known := m.isManaged(name) || m.primaryOf(name) != ""
	for i, kt := range kts {
		if states[i], err = m.loadState(ctx, name, kt); err != nil {
			return err
		}
		known = known || states[i].Failures > 0 || m.tracked(name, kt) != nil
	}
	if !known {
		if c, err := m.loadCert(ctx, name, kts[0]); err != nil {
			return err
		} else if c == nil {
			if err := m.allowed(ctx, name); err != nil {
				return err
			}
		}
	}
	m.forgetFailing(name)
	defer m.failureStatus.changed.Add(1)
	ctx = context.WithValue(ctx, adminRetryKey{}, true)
	var errs []error
	for i, kt := range kts {
		if st := states[i]; st.Failures > 0 {
			b, err := json.Marshal(st.RetryNow())
			if err == nil {
				err = m.write(ctx, storage.StateKey(name, string(kt)), b, name, kt)
			}
			if err != nil {
				// Kept in memory: this process retries regardless.
				m.logger().Named("renew").Warn("storing renewal state", zapName(name), zapErr(err))
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
// the renewal states in storage say, RenewConcurrency at a time.
func (m *Manager) RetryAll(ctx context.Context) error {
	if err := m.init(); err != nil {
		return err
	}
	states, err := m.listFailures(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(states))
	var names []string
	for key := range states {
		if !seen[key.name] {
			seen[key.name] = true
			names = append(names, key.name)
		}
	}
	return m.forEach(names, m.renewConcurrency(), func(name string) error { return m.RetryNow(ctx, name) })
}

// never is a time no schedule reaches.
var never = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
