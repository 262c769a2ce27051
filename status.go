package acmetls

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/internal/inflight"
	"github.com/acmetls/acmetls/renew"
	"github.com/acmetls/acmetls/storage"
)

// CertState sums up a certificate's health, worst first.
type CertState string

const (
	// StateFailing: the last attempt to obtain or renew it failed; see
	// LastError and NextAttempt.
	StateFailing CertState = "failing"
	// StateExpired: past its NotAfter.
	StateExpired CertState = "expired"
	// StateExpiring: less than a tenth of its lifetime left, when it
	// should have been renewed already: renewal is not keeping up.
	StateExpiring CertState = "expiring"
	// StateDue: its renewal time has come; the renewal is queued.
	StateDue CertState = "due"
	// StateOK: valid, and renewed at RenewAt.
	StateOK CertState = "ok"
)

// CertificateStatus is what an administrator needs to know of one
// certificate the Manager holds, or failed to obtain. It holds no key
// material.
type CertificateStatus struct {
	Name string `json:"name"`
	// Names are all the names of a certificate holding several
	// (ManageGroup); empty otherwise.
	Names   []string  `json:"names,omitempty"`
	KeyType KeyType   `json:"key_type"`
	State   CertState `json:"state"`
	// Serial is the certificate's serial number in hex; empty when
	// none was obtained yet.
	Serial    string    `json:"serial,omitempty"`
	CA        string    `json:"ca,omitempty"` // directory URL of the CA that issued it
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// RenewAt is when its renewal starts; RenewReason says what chose
	// it: "ari" (the CA's renewal window) or "lifetime" (a third of its
	// lifetime left, half for certificates of ten days or less).
	RenewAt     time.Time `json:"renew_at,omitzero"`
	RenewReason string    `json:"renew_reason,omitempty"`
	// Staple is "none" (no OCSP responder), "served" (until
	// StapleUntil) or "missing" (none could be fetched yet); it is
	// refreshed at StapleNext. StapleAge is the served staple's age.
	Staple      string        `json:"staple"`
	StapleUntil time.Time     `json:"staple_until,omitzero"`
	StapleNext  time.Time     `json:"staple_next,omitzero"`
	StapleAge   time.Duration `json:"staple_age,omitempty"`
	// Failures counts the failed attempts in a row; LastError is the
	// last one's error, ProblemType and ProblemDetail the CA's own
	// words, if the CA answered. NextAttempt is when it is tried again.
	Failures      int       `json:"failures,omitempty"`
	LastAttempt   time.Time `json:"last_attempt,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	ProblemType   string    `json:"problem_type,omitempty"`
	ProblemDetail string    `json:"problem_detail,omitempty"`
	NextAttempt   time.Time `json:"next_attempt,omitzero"`
}

// StatusQuery selects and pages the certificates [Manager.Status] lists.
// Its filters combine: a certificate is listed if it matches every one
// set.
type StatusQuery struct {
	// Name, if set, lists that name's certificates alone.
	Name string
	// Failing lists those whose last attempt failed.
	Failing bool
	// Due lists those whose renewal time has come.
	Due bool
	// ExpiringWithin, if positive, lists those that expire within it.
	ExpiringWithin time.Duration
	// Offset skips that many of the certificates listed; Limit returns
	// at most that many, [DefaultStatusLimit] when zero,
	// [MaxStatusLimit] at most.
	Offset, Limit int
}

// DefaultStatusLimit and MaxStatusLimit bound a page of [Manager.Status].
const (
	DefaultStatusLimit = 100
	MaxStatusLimit     = 1000
)

// StatusCounts counts the certificates by state.
type StatusCounts struct {
	Certificates int `json:"certificates"`
	Failing      int `json:"failing"`
	Expired      int `json:"expired"`
	Expiring     int `json:"expiring"`
	Due          int `json:"due"`
	OK           int `json:"ok"`
}

// StatusReport is one page of [Manager.Status].
type StatusReport struct {
	// Counts are over every certificate, whatever the query.
	Counts StatusCounts `json:"counts"`
	// Total is the number of certificates the query matches; the page
	// holds those from Offset on.
	Total        int                 `json:"total"`
	Offset       int                 `json:"offset"`
	Certificates []CertificateStatus `json:"certificates"`
	// Held, if set, is a failure that is no one name's (the CA down,
	// storage failing, a configuration error): every attempt waits
	// until it clears.
	Held *Hold `json:"held,omitempty"`
	// CAs are the CAs ordered from, in order, each with the failure
	// that makes attempts skip it, if any.
	CAs []CAStatus `json:"cas"`
	// StoredNames is the number of names storage holds certificates
	// for, as this process last listed them (it lists them when
	// handshakes miss); 0 when it has not. After a restart, Status
	// lists the certificates loaded since, which may be fewer.
	StoredNames int `json:"stored_names,omitempty"`
	// Warning, if set, says what the report lacks: the failures, when
	// storage could not be read.
	Warning string `json:"warning,omitempty"`
	// Time is when the report was made.
	Time time.Time `json:"time"`
}

// Hold is a failure that holds attempts back until a time.
type Hold struct {
	Error string    `json:"error"`
	Until time.Time `json:"until"`
}

// CAStatus is one of the CAs a Manager orders from.
type CAStatus struct {
	URL string `json:"url"`
	// Skipped, if set, is the failure for which attempts go to the next
	// CA without asking this one, until it clears.
	Skipped *Hold `json:"skipped,omitempty"`
}

// hold returns what b holds back at now, if anything.
func (b *breaker) hold(now time.Time) *Hold {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil || !now.Before(b.until) {
		return nil
	}
	return &Hold{Error: b.err.Error(), Until: b.until}
}

// Status lists the certificates this Manager holds, failing ones first
// (most failures first), then by expiry, soonest first: the schedule in
// memory, with the renewal states in storage, which say what failed on
// any process sharing it. Names whose first issuance failed are listed
// with no serial. It reads no certificate record: its cost is a listing
// of the renewal states, a read of each failing certificate's state
// (cached for a few seconds), and a pass over the schedule.
//
// What a Manager holds is what it was given (ManageSync, ManageGroup)
// and what it loaded or obtained since it started: after a restart,
// certificates of on-demand names appear as their first handshakes load
// them ([StatusReport.StoredNames] counts those in storage). A
// validation server holds every certificate in storage from its start;
// a frontend of one, what it loaded. While a failure that is no name's
// holds every attempt back ([StatusReport.Held]), names waiting for
// their first certificate are not listed: nothing is recorded against
// them.
func (m *Manager) Status(ctx context.Context, q StatusQuery) (*StatusReport, error) {
	if err := m.init(); err != nil {
		return nil, err
	}
	if q.Name != "" {
		name, err := normalizeIdentifier(q.Name)
		if err != nil {
			return nil, err
		}
		q.Name = name
	}
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultStatusLimit
	}
	limit = min(limit, MaxStatusLimit)
	states, statesAt, statesErr := m.failureStates(ctx)
	now := m.now()
	rows, counts := m.statusRows(states, q, now)
	r := &StatusReport{Counts: counts, Total: len(rows), Offset: q.Offset, Time: now, Held: m.breaker.hold(now),
		StoredNames: m.names.count()}
	if statesErr != nil {
		// The schedule is in memory: list it, and say what is missing.
		r.Warning = "the failures could not be read from storage: " + statesErr.Error()
		if !statesAt.IsZero() {
			r.Warning += "; those shown were read at " + statesAt.UTC().Format(time.RFC3339)
		}
	}
	if m.Validator == nil {
		for _, is := range m.issuers {
			cs := CAStatus{URL: is.url}
			if len(m.issuers) > 1 {
				cs.Skipped = is.down.hold(now)
			}
			r.CAs = append(r.CAs, cs)
		}
	}
	if q.Offset < 0 || q.Offset >= len(rows) {
		r.Certificates = []CertificateStatus{}
		return r, nil
	}
	page := firstRows(rows, q.Offset+limit)[q.Offset:]
	r.Certificates = make([]CertificateStatus, len(page))
	s := &m.sched
	s.mu.Lock()
	for i, row := range page {
		r.Certificates[i] = m.certStatus(row, states[row.t.trackKey], now)
	}
	s.mu.Unlock()
	return r, nil
}

// statusRow is one certificate of a Status listing, as small as sorting
// 200,000 of them wants: its details are read for the page alone.
type statusRow struct {
	t        *tracked // for a first issuance that failed, one made up, with no serial
	notAfter int64    // Unix seconds; 0 when none was obtained
	failures int32
	state    stateIndex
}

// before is the listing's order: failing first, most failures first,
// then soonest to expire, then by name and key type.
func (a statusRow) before(b statusRow) bool {
	switch {
	case a.failures != b.failures:
		return a.failures > b.failures
	case a.notAfter != b.notAfter:
		return a.notAfter < b.notAfter
	case a.t.name != b.t.name:
		return a.t.name < b.t.name
	}
	return a.t.kt < b.t.kt
}

func compareRows(a, b statusRow) int {
	switch {
	case a.before(b):
		return -1
	case b.before(a):
		return 1
	}
	return 0
}

// firstRows returns the first k rows in order. For a page near the start
// of a long listing, it keeps the k first in a heap instead of sorting
// every row: O(n log k).
func firstRows(rows []statusRow, k int) []statusRow {
	if k >= len(rows)/4 {
		slices.SortFunc(rows, compareRows)
		return rows[:min(k, len(rows))]
	}
	// A max-heap of the k first rows seen: its root is the last of them.
	h := make([]statusRow, 0, k)
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			j := l
			if r := l + 1; r < len(h) && h[l].before(h[r]) {
				j = r
			}
			if !h[i].before(h[j]) {
				return
			}
			h[i], h[j] = h[j], h[i]
			i = j
		}
	}
	for _, row := range rows {
		if len(h) < k {
			h = append(h, row)
			for i := len(h) - 1; i > 0; {
				p := (i - 1) / 2
				if !h[p].before(h[i]) {
					break
				}
				h[p], h[i] = h[i], h[p]
				i = p
			}
			continue
		}
		if row.before(h[0]) {
			h[0] = row
			down(0)
		}
	}
	slices.SortFunc(h, compareRows)
	return h
}

// stateIndex is a CertState in a statusRow.
type stateIndex uint8

const (
	stOK stateIndex = iota
	stDue
	stExpiring
	stExpired
	stFailing
)

var stateNames = [...]CertState{StateOK, StateDue, StateExpiring, StateExpired, StateFailing}

// statusRows lists the certificates q selects, and counts them all by
// state.
func (m *Manager) statusRows(states map[trackKey]renew.State, q StatusQuery, now time.Time) ([]statusRow, StatusCounts) {
	var byState [len(stateNames)]int
	var rows []statusRow
	expiringBy := now.Add(q.ExpiringWithin).Unix()
	add := func(row statusRow, due bool) {
		byState[row.state]++
		switch {
		case q.Name != "" && row.t.name != q.Name,
			q.Failing && row.failures == 0,
			q.Due && !due,
			q.ExpiringWithin > 0 && (row.notAfter == 0 || row.notAfter > expiringBy):
			return
		}
		rows = append(rows, row)
	}
	s := &m.sched
	s.mu.Lock()
	if q.Name == "" && !q.Failing {
		rows = make([]statusRow, 0, len(s.certs)+len(states))
	}
	// The failures by entry: a pointer hashes faster than a name.
	failing := make(map[*tracked]int, len(states))
	for key, st := range states {
		if t, ok := s.certs[key]; ok {
			failing[t] = st.Failures
		} else {
			add(statusRow{t: &tracked{trackKey: key}, failures: int32(st.Failures), state: stFailing}, false)
		}
	}
	for _, t := range s.certs {
		var failures int
		if len(failing) > 0 {
			failures = failing[t]
		}
		add(statusRow{t: t, notAfter: t.notAfter.Unix(), failures: int32(failures),
			state: certState(failures, t.notBefore, t.notAfter, t.due, now)}, !now.Before(t.due))
	}
	s.mu.Unlock()
	counts := StatusCounts{
		Failing: byState[stFailing], Expired: byState[stExpired], Expiring: byState[stExpiring],
		Due: byState[stDue], OK: byState[stOK],
	}
	for _, n := range byState {
		counts.Certificates += n
	}
	return rows, counts
}

// certState sums up a certificate's health at now.
func certState(failures int, notBefore, notAfter, due, now time.Time) stateIndex {
	switch {
	case failures > 0:
		return stFailing
	case !now.Before(notAfter):
		return stExpired
	case !now.Before(renew.Deadline(notBefore, notAfter)):
		return stExpiring
	case !now.Before(due):
		return stDue
	}
	return stOK
}

// certStatus fills the status of row. The caller holds m.sched.mu.
func (m *Manager) certStatus(row statusRow, st renew.State, now time.Time) CertificateStatus {
	cs := CertificateStatus{
		Name: row.t.name, KeyType: row.t.kt.keyType(), State: stateNames[row.state], Staple: "none",
		Failures: st.Failures, LastError: st.LastError, ProblemType: st.ProblemType,
		ProblemDetail: st.ProblemDetail,
	}
	if st.Failures > 0 {
		cs.LastAttempt, cs.NextAttempt = st.LastAttempt, st.NextAttempt
	}
	t := row.t
	if t.serial == "" {
		return cs // never obtained
	}
	cs.Names = t.names
	cs.Serial = hex.EncodeToString([]byte(t.serial))
	if t.issuer >= 0 && int(t.issuer) < len(m.issuers) {
		cs.CA = m.issuers[t.issuer].url
	}
	cs.NotBefore, cs.NotAfter, cs.RenewAt = t.notBefore, t.notAfter, t.due
	cs.RenewReason = "lifetime"
	if t.ari.Window.Valid() {
		cs.RenewReason = "ari"
	}
	switch {
	case !t.stapleUntil.IsZero():
		cs.Staple, cs.StapleUntil, cs.StapleNext = "served", t.stapleUntil, t.stapleNext
		if t.stapleAt != 0 {
			cs.StapleAge = now.Sub(time.Unix(t.stapleAt, 0))
		}
	case !t.stapleNext.IsZero():
		cs.Staple, cs.StapleNext = "missing", t.stapleNext
	}
	return cs
}

// statesTTL is how long the failure states read from storage are reused:
// status pages and metric scrapes in a row read them once. A failure or
// a retry in this process reads them again at once.
const statesTTL = 10 * time.Second

// failureStates holds the renewal states last read from storage.
type failureStates struct {
	mu     sync.Mutex // guards the fields below, never held while reading
	at     time.Time
	gen    uint64
	states map[trackKey]renew.State
	// changed counts the failures, successes after failures and
	// retries of this process: a read older than one is stale.
	changed atomic.Uint64
	// reads is the read in flight: callers wait for it, each as long as
	// its context allows, and a storage that hangs holds none of them
	// longer than statesReadTimeout.
	reads inflight.Group[map[trackKey]renew.State]
}

// statesReadTimeout bounds a read of the failure states.
const statesReadTimeout = 10 * time.Second

// failureStates returns the renewal state of every certificate whose last
// attempt failed, by name and key type, and when they were read: from
// storage (and the states storage refused to take), read again when
// statesTTL has passed or this process recorded a change. When storage
// fails, or ctx ends first, it returns the error with the states last
// read, if any.
func (m *Manager) failureStates(ctx context.Context) (map[trackKey]renew.State, time.Time, error) {
	f := &m.failureStatus
	now := m.now()
	gen := f.changed.Load()
	f.mu.Lock()
	last, at := f.states, f.at
	fresh := last != nil && f.gen == gen && now.Sub(at) < statesTTL && !now.Before(at)
	f.mu.Unlock()
	if fresh {
		return last, at, nil
	}
	states, err := f.reads.Do(ctx, "", func(ctx context.Context) (map[trackKey]renew.State, error) {
		ctx, cancel := context.WithTimeout(ctx, statesReadTimeout)
		defer cancel()
		states, err := m.listFailures(ctx)
		if err == nil {
			f.mu.Lock()
			f.states, f.at, f.gen = states, now, gen
			f.mu.Unlock()
		}
		return states, err
	})
	if err != nil {
		return last, at, err
	}
	return states, now, nil
}

// listFailures reads the renewal state of every certificate whose last
// attempt failed, by name and key type, from storage and from the states
// storage refused to take.
func (m *Manager) listFailures(ctx context.Context) (map[trackKey]renew.State, error) {
	keys, err := m.store.List(ctx, storage.StatesDir, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("acmetls: listing renewal states: %w", err)
	}
	// A state's directory is its name made safe for a storage key
	// (storage.Safe), which cannot always be read back, nor made safe
	// again (a name cut to its hash): the state is read by the
	// directory, and says its name.
	segments := make(map[string]bool, len(keys))
	for _, k := range keys {
		segments[k[strings.LastIndexByte(k, '/')+1:]] = true
	}
	for _, name := range m.unsaved.stateNames() {
		segments[storage.Safe(name)] = true
	}
	list := make([]string, 0, len(segments))
	for seg := range segments {
		list = append(list, seg)
	}
	var mu sync.Mutex
	states := make(map[trackKey]renew.State)
	err = m.forEach(list, 8, func(seg string) error {
		for _, kt := range m.keyTypes() {
			st, err := m.loadStateKey(ctx, storage.StatesDir+"/"+seg+"/"+storage.Safe(string(kt))+".json", seg)
			if err != nil {
				return err
			}
			if st.Failures == 0 {
				continue // none, cleared, or recorded under another configuration
			}
			name := st.Name
			if name == "" {
				name = seg // recorded before states held their name
			}
			if _, err := normalizeIdentifier(name); err != nil {
				m.logger().Named("renew").Warn("a renewal state of no name; ignored", zap.String("key", storage.StateKey(seg, string(kt))))
				continue
			}
			mu.Lock()
			states[trackKey{name: name, kt: indexOf(kt)}] = st
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return states, nil
}
