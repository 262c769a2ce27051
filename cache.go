package acmetls

import (
	"crypto/tls"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// certPair is what the cache holds for one name: at most one ECDSA and one
// RSA certificate, side by side. A certPair is never modified once
// published; a renewal publishes a new one.
type certPair struct {
	ecdsa, rsa         *tls.Certificate
	ecdsaType, rsaType KeyType
}

// choose returns the certificate the client supports, ECDSA first, or nil.
// It allocates nothing.
func (p *certPair) choose(hello *tls.ClientHelloInfo) *tls.Certificate {
	if p.ecdsa != nil && supports(hello, p.ecdsaType) {
		return p.ecdsa
	}
	if p.rsa != nil && supports(hello, p.rsaType) {
		return p.rsa
	}
	return nil
}

// get returns the certificate of type kt, or nil.
func (p *certPair) get(kt KeyType) *tls.Certificate {
	if kt.isECDSA() {
		if p.ecdsaType == kt {
			return p.ecdsa
		}
		return nil
	}
	if p.rsaType == kt {
		return p.rsa
	}
	return nil
}

// with returns a copy of p holding c as its certificate of type kt.
func (p *certPair) with(kt KeyType, c *tls.Certificate) *certPair {
	var n certPair
	if p != nil {
		n = *p
	}
	if kt.isECDSA() {
		n.ecdsa, n.ecdsaType = c, kt
	} else {
		n.rsa, n.rsaType = c, kt
	}
	return &n
}

// entry is one cached name. Its certificates are swapped atomically, so a
// handshake sees the old pair or the new one, never neither.
type entry struct {
	certs atomic.Pointer[certPair]
	// ref is set by a hit and cleared by the eviction hand passing by.
	ref  atomic.Bool
	key  string
	wild bool
}

// cache maps server names to certificates. Reads take only a shard's read
// lock and allocate nothing. It holds at most capacity names; when full,
// an insertion evicts from its own shard with the CLOCK algorithm: a hand
// sweeps the shard's entries, sparing (and unmarking) those hit since it
// last passed, and evicting the first that was not. A name in use is not
// evicted while the cache has colder ones.
type cache struct {
	seed     maphash.Seed
	mask     uint64
	capacity int64
	count    atomic.Int64 // names held, across shards
	shards   []shard
}

type shard struct {
	mu    sync.RWMutex      // guards exact, wild, ring and hand
	exact map[string]*entry // by name
	wild  map[string]*entry // "*.parent", by parent
	ring  []*entry          // every entry, in eviction order from hand
	hand  int
	_     [64]byte // keep shards on separate cache lines
}

// newCache returns a cache for at most capacity names, split into up to 64
// shards.
func newCache(capacity int) *cache {
	n := 1
	for n < 64 && capacity/(n*2) >= 64 {
		n *= 2
	}
	c := &cache{
		seed:     maphash.MakeSeed(),
		mask:     uint64(n - 1),
		capacity: int64(max(capacity, 1)),
		shards:   make([]shard, n),
	}
	for i := range c.shards {
		c.shards[i].exact = make(map[string]*entry)
		c.shards[i].wild = make(map[string]*entry)
	}
	return c
}

func (c *cache) shard(key string) *shard {
	return &c.shards[maphash.String(c.seed, key)&c.mask]
}

// get returns the certificates for name: an exact entry first, then a
// wildcard one level up. It allocates nothing.
func (c *cache) get(name string) *certPair {
	s := c.shard(name)
	s.mu.RLock()
	e := s.exact[name]
	s.mu.RUnlock()
	if e == nil {
		parent, ok := parentOf(name)
		if !ok {
			return nil
		}
		s = c.shard(parent)
		s.mu.RLock()
		e = s.wild[parent]
		s.mu.RUnlock()
		if e == nil {
			return nil
		}
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e.certs.Load()
}

// put publishes the certificate of type kt for name (a "*.parent" name is a
// wildcard), keeping the name's other certificate. It returns the new pair.
func (c *cache) put(name string, kt KeyType, cert *tls.Certificate) *certPair {
	key, wild := name, false
	if parent, ok := wildcardParent(name); ok {
		key, wild = parent, true
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	byKey := s.exact
	if wild {
		byKey = s.wild
	}
	e := byKey[key]
	if e == nil {
		e = &entry{key: key, wild: wild}
		c.insert(s, e)
		byKey[key] = e
	}
	p := e.certs.Load().with(kt, cert)
	e.certs.Store(p)
	return p
}

// insert places e in s, whose lock the caller holds. When the cache is
// full it evicts one entry: from s, or if s is empty from the first other
// shard it can lock without waiting.
func (c *cache) insert(s *shard, e *entry) {
	if c.count.Add(1) <= c.capacity {
		s.ring = append(s.ring, e)
		return
	}
	if len(s.ring) > 0 {
		s.ring[s.evict()] = e
		c.count.Add(-1)
		return
	}
	s.ring = append(s.ring, e)
	for i := range c.shards {
		o := &c.shards[i]
		if o == s || !o.mu.TryLock() {
			continue
		}
		if len(o.ring) > 0 {
			last := len(o.ring) - 1
			o.ring[o.evict()] = o.ring[last]
			o.ring = o.ring[:last]
			if o.hand >= len(o.ring) {
				o.hand = 0
			}
			c.count.Add(-1)
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
	}
}

// evict removes the entry the CLOCK hand settles on from the maps and
// returns its ring slot, for the caller to reuse or fill.
func (s *shard) evict() int {
	for {
		old := s.ring[s.hand]
		if old.ref.Load() {
			old.ref.Store(false)
			s.hand = (s.hand + 1) % len(s.ring)
			continue
		}
		if old.wild {
			delete(s.wild, old.key)
		} else {
			delete(s.exact, old.key)
		}
		slot := s.hand
		s.hand = (s.hand + 1) % len(s.ring)
		return slot
	}
}

// len counts the cached names.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.exact) + len(s.wild)
		s.mu.RUnlock()
	}
	return n
}

// wildcardParent returns "example.com" for "*.example.com".
func wildcardParent(name string) (string, bool) {
	if len(name) > 2 && name[0] == '*' && name[1] == '.' {
		return name[2:], true
	}
	return "", false
}
