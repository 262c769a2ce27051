package acmetls

import (
	"context"
	"errors"
	"hash/maphash"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// storedNames knows which names storage holds certificates for, so that a
// handshake for a name that is neither managed, nor allowed on demand, nor
// stored is refused without a storage read: random server names from
// anywhere on the internet must not become load on a shared database.
//
// It is filled from one listing of storage, taken in the background on
// the first miss and again when older than namesRefresh, and kept current
// by this process's own writes between listings, and by the challenge
// answers it gives from storage for another process's orders. A name
// another process stored otherwise is found within namesRefresh. It holds 8
// bytes per stored name; a collision of two names' hashes only costs a
// storage read.
type storedNames struct {
	seed maphash.Seed

	mu      sync.RWMutex        // guards the fields below
	hashes  []uint64            // sorted, from the last listing
	added   map[uint64]struct{} // stored by this process
	loaded  time.Time           // when the last listing was taken; zero: none
	tried   time.Time           // when the last listing started
	loading bool
}

const (
	// namesRefresh is how often the listing of stored names is taken
	// again while handshakes miss.
	namesRefresh = time.Minute
	// namesRetry is the least time between two listings, failed or not.
	namesRetry = time.Minute
	// namesListTimeout bounds one listing.
	namesListTimeout = time.Minute
)

// hash is the hash of a stored name's segment (storage.Safe of the name).
func (s *storedNames) hash(segment string) uint64 { return maphash.String(s.seed, segment) }

// mayHold reports whether storage may hold a certificate for name (in
// normal form), under its own name or as the wildcard of its parent; known
// is false while no listing has been taken, when nothing can be said. It
// allocates nothing: a name in normal form is its own segment, and the
// wildcard's segment is hashed in pieces.
func (s *storedNames) mayHold(name string) (maybe, known bool) {
	h, hw := s.hash(name), uint64(0)
	if len(name) > storage.MaxSegment {
		h = s.hash(storage.Safe(name)) // cut and hashed
	}
	_, parent, wild := splitFirstLabel(name)
	switch {
	case wild && len(wildcardSegment)+len(parent) > storage.MaxSegment:
		hw = s.hash(storage.Safe("*." + parent))
	case wild:
		var mh maphash.Hash
		mh.SetSeed(s.seed)
		mh.WriteString(wildcardSegment)
		mh.WriteString(parent)
		hw = mh.Sum64()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.loaded.IsZero() {
		return true, false
	}
	return s.has(h) || wild && s.has(hw), true
}

// wildcardSegment is what storage.Safe makes of "*.".
const wildcardSegment = "wildcard_."

// has reports whether h is a stored name's hash. The caller holds s.mu.
func (s *storedNames) has(h uint64) bool {
	if _, ok := s.added[h]; ok {
		return true
	}
	_, ok := slices.BinarySearch(s.hashes, h)
	return ok
}

// count returns the number of names storage held at the last listing,
// with those this process stored since; 0 while no listing was taken.
func (s *storedNames) count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.loaded.IsZero() {
		return 0
	}
	n := len(s.hashes)
	for h := range s.added {
		if _, ok := slices.BinarySearch(s.hashes, h); !ok {
			n++
		}
	}
	return n
}

// add records that this process stored a certificate for name.
func (s *storedNames) add(name string) {
	h := s.hash(storage.Safe(name))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.added == nil {
		s.added = make(map[uint64]struct{})
	}
	s.added[h] = struct{}{}
}

// due reports whether a listing should start at now, and marks it started.
func (s *storedNames) due(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loading || now.Sub(s.tried) < namesRetry || (!s.loaded.IsZero() && now.Sub(s.loaded) < namesRefresh) {
		return false
	}
	s.loading, s.tried = true, now
	return true
}

// mayBeStored reports whether storage may hold a certificate for name.
// While the listing is missing or old, it starts one in the background,
// and answers true until the first is in.
func (m *Manager) mayBeStored(name string) bool {
	if m.names.due(m.now()) {
		go m.listNames(context.Background())
	}
	maybe, _ := m.names.mayHold(name)
	return maybe
}

// listNames takes the listing of stored names.
func (m *Manager) listNames(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, namesListTimeout)
	defer cancel()
	started := m.now()
	keys, err := m.store.List(ctx, storage.CertsDir, false)
	if errors.Is(err, fs.ErrNotExist) {
		keys, err = nil, nil
	}
	s := &m.names
	if err != nil {
		m.logger().Named("storage").Warn("listing stored names; refusals read storage until a listing succeeds", zapErr(err))
		s.mu.Lock()
		s.loading = false
		s.mu.Unlock()
		return
	}
	hashes := make([]uint64, 0, len(keys))
	for _, k := range keys {
		hashes = append(hashes, s.hash(k[strings.LastIndexByte(k, '/')+1:]))
	}
	slices.Sort(hashes)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hashes, s.loaded, s.loading = hashes, started, false
}
