package acmetls

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// unsaved keeps the writes storage refused: certificates obtained and
// renewal states. A certificate the CA issued is never thrown away because
// storage failed: it is served from here, and a backoff that storage could
// not record still holds, so a storage that cannot be written never makes
// a name order again at once. Reads of these keys see this memory first;
// Run writes it to storage again until storage takes it.
//
// It holds at most one entry per name and key type and kind of record,
// and grows only by orders, which the backoff bounds.
type unsaved struct {
	mu    sync.Mutex // guards byKey
	byKey map[string]unsavedWrite
}

// unsavedWrite is one write storage refused.
type unsavedWrite struct {
	value []byte // nil: a deletion
	name  string
	kt    KeyType
}

// isCert reports whether key is a certificate record's.
func isCert(key string) bool { return strings.HasPrefix(key, storage.CertsDir+"/") }

// write stores value at key, keeping it in memory if storage refuses it.
// The error is storage's; the value is kept either way.
func (m *Manager) write(ctx context.Context, key string, value []byte, name string, kt KeyType) error {
	err := m.store.Store(ctx, key, value)
	m.unsaved.set(key, unsavedWrite{value: value, name: name, kt: kt}, err != nil)
	if err == nil {
		m.journal(ctx, key)
	}
	return err
}

// remove deletes key from storage; a deletion storage refuses is kept, so
// that reads see the key gone.
func (m *Manager) remove(ctx context.Context, key string, name string, kt KeyType) error {
	err := m.store.Delete(ctx, key)
	m.unsaved.set(key, unsavedWrite{name: name, kt: kt}, err != nil)
	return err
}

// read loads key: what storage refused to take first, else storage.
func (m *Manager) read(ctx context.Context, key string) ([]byte, error) {
	if w, ok := m.unsaved.get(key); ok {
		if w.value == nil {
			return nil, fmt.Errorf("acmetls: %s: %w (deleted; storage has yet to take the deletion)", key, fs.ErrNotExist)
		}
		return w.value, nil
	}
	return m.store.Load(ctx, key)
}

func (u *unsaved) set(key string, w unsavedWrite, keep bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !keep {
		delete(u.byKey, key)
		return
	}
	if u.byKey == nil {
		u.byKey = make(map[string]unsavedWrite)
	}
	u.byKey[key] = w
}

func (u *unsaved) get(key string) (unsavedWrite, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	w, ok := u.byKey[key]
	return w, ok
}

// len is the number of writes storage has yet to take.
func (u *unsaved) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.byKey)
}

// stateNames lists the names with a renewal state storage refused.
func (u *unsaved) stateNames() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var names []string
	for key, w := range u.byKey {
		if strings.HasPrefix(key, storage.StatesDir+"/") && w.value != nil {
			names = append(names, w.name)
		}
	}
	return names
}

// done drops key if it still holds w: a later write of the same key stays.
func (u *unsaved) done(key string, w unsavedWrite) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.byKey[key]; ok && string(cur.value) == string(w.value) && (cur.value == nil) == (w.value == nil) {
		delete(u.byKey, key)
	}
}

// flushUnsaved writes again what storage refused. A certificate is
// written under its name's lock, and only if storage holds none for its
// name and key type, or an older one: if another process stored a newer
// one meanwhile, this process serves that one instead.
func (m *Manager) flushUnsaved(ctx context.Context) {
	m.unsaved.mu.Lock()
	pending := make(map[string]unsavedWrite, len(m.unsaved.byKey))
	for k, w := range m.unsaved.byKey {
		pending[k] = w
	}
	m.unsaved.mu.Unlock()
	log := m.logger().Named("storage")
	for key, w := range pending {
		if ctx.Err() != nil {
			return
		}
		var err error
		switch {
		case w.value == nil:
			err = m.store.Delete(ctx, key)
		case isCert(key):
			err = m.flushCert(ctx, key, w)
		default:
			err = m.store.Store(ctx, key, w.value)
		}
		if err != nil {
			log.Debug("storage still refuses a write", zap.String("key", key), zapErr(err))
			continue
		}
		m.unsaved.done(key, w)
		log.Info("stored a record kept in memory", zap.String("key", key))
	}
}

// flushCert writes an unsaved certificate record, unless storage has a
// newer certificate of the same name and key type, which is then served.
func (m *Manager) flushCert(ctx context.Context, key string, w unsavedWrite) error {
	l, err := m.lock(ctx, w.name)
	if err != nil {
		return err
	}
	defer l.release()
	stored, _, err := m.readStored(ctx, w.name, w.kt)
	if err != nil {
		return err
	}
	ours, _, cerr := m.certFromRecord(ctx, w.value, w.name, w.kt)
	if cerr != nil {
		return nil // nothing worth writing
	}
	if stored != nil && !stored.Leaf.NotAfter.Before(ours.Leaf.NotAfter) {
		m.unsaved.done(key, w)
		_, err := m.loadCert(ctx, w.name, w.kt)
		return err
	}
	if err := m.store.Store(ctx, key, w.value); err != nil {
		return err
	}
	m.names.add(w.name)
	return nil
}
