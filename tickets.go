package acmetls

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// Session tickets are encrypted with keys kept in storage, so that a
// client resumes its TLS session on whichever process sharing the storage
// it reaches. A new key is added every ticketRotation; it is used from
// ticketLead after it was stored, by when every process has read it, and
// the previous ticketKeep-1 keys still decrypt.
const (
	ticketRotation = 12 * time.Hour
	ticketLead     = 5 * time.Minute
	ticketKeep     = 3
	// ticketCheck is how often a process reads the keys again;
	// ticketRecheck, how soon after a ticket under a key it lacks.
	ticketCheck   = time.Minute
	ticketRecheck = 5 * time.Second
	// maxTicketKeysSize bounds the record read.
	maxTicketKeysSize = 64 << 10
)

// ticketKey is one session-ticket key as stored.
type ticketKey struct {
	ID     []byte    `json:"id"`     // 8 random bytes, the ticket's first
	Secret []byte    `json:"secret"` // AES-256 key
	From   time.Time `json:"from"`   // used for new tickets from then on
}

// ticketKeys is the set of keys a Manager holds, newest first.
type ticketKeys struct {
	keys    atomic.Pointer[[]ticketAEAD]
	checkAt atomic.Int64 // Unix ns of the next read of storage
	readAt  atomic.Int64 // Unix ns of the last read's start
	reading atomic.Bool
	local   sync.Once // a key of this process alone, until storage answers
}

// ticketAEAD is a ticketKey ready to seal and open.
type ticketAEAD struct {
	id   [8]byte
	from time.Time
	aead cipher.AEAD
}

func newTicketAEAD(k ticketKey) (ticketAEAD, error) {
	if len(k.ID) != 8 || len(k.Secret) != 32 {
		return ticketAEAD{}, errors.New("malformed session-ticket key")
	}
	block, err := aes.NewCipher(k.Secret)
	if err != nil {
		return ticketAEAD{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return ticketAEAD{}, err
	}
	t := ticketAEAD{from: k.From, aead: aead}
	copy(t.id[:], k.ID)
	return t, nil
}

func newTicketKey(from time.Time) ticketKey {
	k := ticketKey{ID: make([]byte, 8), Secret: make([]byte, 32), From: from}
	rand.Read(k.ID)
	rand.Read(k.Secret)
	return k
}

// wrapSession is tls.Config.WrapSession: the session state sealed with the
// newest key in use.
func (m *Manager) wrapSession(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	keys := m.ticketKeys()
	now := m.now()
	var k *ticketAEAD
	for i := range keys {
		if !keys[i].from.After(now) {
			k = &keys[i]
			break
		}
	}
	if k == nil {
		k = &keys[len(keys)-1]
	}
	// The server name the session was for: RFC 6066 forbids resuming
	// it for another (a ticket is no credential across a fleet's sites).
	ss.Extra = append(ss.Extra, append([]byte(ticketNamePrefix), cs.ServerName...))
	plain, err := ss.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 8+12, 8+12+len(plain)+k.aead.Overhead())
	copy(out, k.id[:])
	rand.Read(out[8:20])
	return k.aead.Seal(out, out[8:20], plain, out[:8]), nil
}

// unwrapSession is tls.Config.UnwrapSession: a ticket sealed with any key
// held opens; any other is no session (a full handshake), never an error.
func (m *Manager) unwrapSession(ticket []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	if len(ticket) < 8+12+16 {
		return nil, nil
	}
	for _, k := range m.ticketKeys() {
		if string(k.id[:]) != string(ticket[:8]) {
			continue
		}
		plain, err := k.aead.Open(nil, ticket[8:20], ticket[20:], ticket[:8])
		if err != nil {
			return nil, nil
		}
		ss, err := tls.ParseSessionState(plain)
		if err != nil || !sameServerName(ss, cs.ServerName) {
			return nil, nil
		}
		return ss, nil
	}
	// A key this process has not read yet, perhaps: read again soon, but
	// not more than once per ticketRecheck whatever clients send.
	t := &m.tickets
	if soon := t.readAt.Load() + int64(ticketRecheck); soon < t.checkAt.Load() {
		t.checkAt.Store(soon)
	}
	return nil, nil
}

// ticketKeys returns the keys held, starting a read of storage when one is
// due. Until storage answers, a key of this process alone is used.
func (m *Manager) ticketKeys() []ticketAEAD {
	t := &m.tickets
	t.local.Do(func() {
		k, _ := newTicketAEAD(newTicketKey(time.Time{}))
		t.keys.Store(&[]ticketAEAD{k})
	})
	if now := m.now(); now.UnixNano() >= t.checkAt.Load() && m.init() == nil && t.reading.CompareAndSwap(false, true) {
		t.readAt.Store(now.UnixNano())
		t.checkAt.Store(now.Add(ticketCheck).UnixNano())
		go func() {
			defer t.reading.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := m.refreshTicketKeys(ctx); err != nil {
				m.logger().Named("tickets").Warn("session-ticket keys; tickets resume on this process only until storage answers", zapErr(err))
			}
		}()
	}
	return *t.keys.Load()
}

// refreshTicketKeys reads the keys from storage, and adds a new one under
// the storage lock when the newest is ticketRotation old.
func (m *Manager) refreshTicketKeys(ctx context.Context) error {
	keys, err := m.loadTicketKeys(ctx, false)
	if err != nil {
		return err
	}
	now := m.now()
	if rotationDue(keys, now) {
		if err := m.store.Lock(ctx, storage.TicketKeysLockName); err != nil {
			return fmt.Errorf("taking lock %s: %w", storage.TicketKeysLockName, err)
		}
		defer m.unlock(storage.TicketKeysLockName)
		if keys, err = m.loadTicketKeys(ctx, true); err != nil {
			return err
		}
		if rotationDue(keys, now) {
			from := now.Add(ticketLead)
			if len(keys) == 0 {
				from = now // the first key: nothing to wait for
			}
			keys = append([]ticketKey{newTicketKey(from)}, keys...)
			keys = keys[:min(len(keys), ticketKeep)]
			b, err := json.Marshal(keys)
			if err != nil {
				return err
			}
			if err := m.store.Store(ctx, storage.TicketKeysKey, b); err != nil {
				return fmt.Errorf("storing %s: %w", storage.TicketKeysKey, err)
			}
		}
	}
	aeads := make([]ticketAEAD, 0, len(keys))
	for _, k := range keys {
		a, err := newTicketAEAD(k)
		if err != nil {
			return fmt.Errorf("%s: %w", storage.TicketKeysKey, err)
		}
		aeads = append(aeads, a)
	}
	// This process's own key stays last while tickets it sealed may be
	// presented: it decrypts, and is never used to seal again.
	if old := *m.tickets.keys.Load(); len(old) > 0 && old[len(old)-1].from.IsZero() {
		aeads = append(aeads, old[len(old)-1])
	}
	m.tickets.keys.Store(&aeads)
	return nil
}

// rotationDue reports whether a new key is to be added: none is stored,
// or the newest is near ticketRotation old.
func rotationDue(keys []ticketKey, now time.Time) bool {
	return len(keys) == 0 || now.Sub(keys[0].From) >= ticketRotation-ticketLead
}

// loadTicketKeys reads the stored keys, newest first; none if there is no
// record, or an unusable one, which is logged if report says so.
func (m *Manager) loadTicketKeys(ctx context.Context, report bool) ([]ticketKey, error) {
	b, err := m.store.Load(ctx, storage.TicketKeysKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", storage.TicketKeysKey, err)
	}
	var keys []ticketKey
	if len(b) > maxTicketKeysSize || json.Unmarshal(b, &keys) != nil || !wellFormed(keys) {
		if !report {
			return nil, nil
		}
		m.logger().Named("tickets").Error("unusable session-ticket keys; they will be replaced", zapString("key", storage.TicketKeysKey))
		return nil, nil
	}
	return keys, nil
}

// wellFormed reports whether every key has an ID and a secret of the
// right lengths.
func wellFormed(keys []ticketKey) bool {
	for _, k := range keys {
		if len(k.ID) != 8 || len(k.Secret) != 32 {
			return false
		}
	}
	return true
}

// ticketNamePrefix marks the session state's Extra entry holding the
// server name the session was for.
const ticketNamePrefix = "acmetls/sni\x00"

// sameServerName reports whether ss was for name.
func sameServerName(ss *tls.SessionState, name string) bool {
	for _, e := range ss.Extra {
		if rest, ok := strings.CutPrefix(string(e), ticketNamePrefix); ok {
			return rest == name
		}
	}
	return false
}
