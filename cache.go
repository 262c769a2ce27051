package acmetls

import (
	"crypto/tls"
	"hash/maphash"
	"maps"
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

// entry is one cached name as a shard's map holds it: its certificates
// inline, so a hit follows one pointer from the map. An entry is replaced,
// never modified, when the name's certificates change; a handshake sees
// the old entry or the new one, never neither.
type entry struct {
	certPair
	// ref is set by a hit and cleared by the eviction hand passing by.
	ref  atomic.Bool
	key  string
	wild bool
	slot int // index in the shard's ring; guarded by the shard's mu
}

// cache maps server names to certificates.
//
// A read takes no lock and writes no shared memory (but a hit's mark, once
// per eviction sweep): each shard publishes an immutable map through an
// atomic pointer, and a writer copies the shard's map, which is kept small
// (about shardSize names) by the number of shards.
//
// The cache holds at most capacity names. When full, an insertion evicts
// from its own shard with the CLOCK algorithm: a hand sweeps the shard's
// entries, sparing (and unmarking) those hit since it last passed, and
// evicting the first that was not. A name in use is not evicted while the
// shard has colder ones.
type cache struct {
	seed     maphash.Seed
	mask     uint64
	capacity int64
	count    atomic.Int64 // names held, across shards
	shards   []shard
}

type shard struct {
	maps atomic.Pointer[shardMaps]
	mu   sync.Mutex // serializes writers; guards ring and hand
	ring []*entry   // every entry, in eviction order from hand
	hand int
}

// shardMaps is one shard's names; never modified once published.
type shardMaps struct {
	exact map[string]*entry // by name
	wild  map[string]*entry // "*.parent", by parent
}

const (
	// shardSize is the number of names a shard holds on average when
	// the cache is full: small enough to copy on every change.
	shardSize = 256
	maxShards = 4096
)

// newCache returns a cache for at most capacity names.
func newCache(capacity int) *cache {
	capacity = max(capacity, 1)
	n := 1
	for n < maxShards && n*shardSize < capacity {
		n *= 2
	}
	c := &cache{
		seed:     maphash.MakeSeed(),
		mask:     uint64(n - 1),
		capacity: int64(capacity),
		shards:   make([]shard, n),
	}
	empty := &shardMaps{exact: map[string]*entry{}, wild: map[string]*entry{}}
	for i := range c.shards {
		c.shards[i].maps.Store(empty)
	}
	return c
}

func (c *cache) shard(key string) *shard {
	return &c.shards[maphash.String(c.seed, key)&c.mask]
}

// get returns the certificates for name: an exact entry first, then a
// wildcard one level up. It allocates nothing and takes no lock.
func (c *cache) get(name string) *certPair { return c.lookup(name, false) }

// lookup is get. Only normalized names are ever cached, so an exact hit
// proves name normal. A wildcard hit needs a valid first label: unless
// normalized says name was normalized, a first label that is not plainly
// valid (including an IDNA one, whose check is slow) is no hit.
func (c *cache) lookup(name string, normalized bool) *certPair {
	e := c.shard(name).maps.Load().exact[name]
	if e == nil {
		label, parent, ok := splitFirstLabel(name)
		if !ok || !normalized && !isNormalLabel(label) {
			return nil
		}
		if e = c.shard(parent).maps.Load().wild[parent]; e == nil {
			return nil
		}
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return &e.certPair
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
	cur := s.maps.Load()
	old := cur.exact[key]
	if wild {
		old = cur.wild[key]
	}
	e := &entry{key: key, wild: wild}
	if old != nil {
		e.certPair = old.certPair
		e.ref.Store(old.ref.Load())
	}
	if kt.isECDSA() {
		e.ecdsa, e.ecdsaType = cert, kt
	} else {
		e.rsa, e.rsaType = cert, kt
	}
	// e is complete: publish it.
	if old != nil {
		e.slot = old.slot
		s.ring[e.slot] = e
		s.publish(e, old)
	} else {
		c.insert(s, e)
	}
	return &e.certPair
}

// insert adds e to s, whose lock the caller holds. When the cache is full
// it evicts one entry: from s, or if s is empty from the first other shard
// it can lock without waiting.
func (c *cache) insert(s *shard, e *entry) {
	if c.count.Add(1) <= c.capacity || len(s.ring) == 0 {
		e.slot = len(s.ring)
		s.ring = append(s.ring, e)
		s.publish(e, nil)
		if c.count.Load() > c.capacity {
			c.stealOne(s)
		}
		return
	}
	e.slot = s.clockHand()
	victim := s.ring[e.slot]
	s.ring[e.slot] = e
	s.publish(e, victim)
	c.count.Add(-1)
}

// stealOne evicts an entry from the first shard other than s that it can
// lock without waiting.
func (c *cache) stealOne(s *shard) {
	for i := range c.shards {
		o := &c.shards[i]
		if o == s || !o.mu.TryLock() {
			continue
		}
		if len(o.ring) > 0 {
			slot := o.clockHand()
			victim := o.ring[slot]
			last := len(o.ring) - 1
			o.ring[slot] = o.ring[last]
			o.ring[slot].slot = slot
			o.ring = o.ring[:last]
			if o.hand >= len(o.ring) {
				o.hand = 0
			}
			o.publish(nil, victim)
			c.count.Add(-1)
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
	}
}

// clockHand returns the ring slot of the entry to evict, advancing the
// hand past the entries hit since it last passed.
func (s *shard) clockHand() int {
	for {
		e := s.ring[s.hand]
		slot := s.hand
		s.hand = (s.hand + 1) % len(s.ring)
		if !e.ref.Load() {
			return slot
		}
		e.ref.Store(false)
	}
}

// publish replaces the shard's maps by a copy with add added and drop
// dropped (either may be nil; add replaces drop when their keys match).
func (s *shard) publish(add, drop *entry) {
	cur := s.maps.Load()
	next := &shardMaps{exact: cur.exact, wild: cur.wild}
	var exactCopied, wildCopied bool
	mapFor := func(e *entry) map[string]*entry {
		if e.wild {
			if !wildCopied {
				next.wild, wildCopied = maps.Clone(cur.wild), true
			}
			return next.wild
		}
		if !exactCopied {
			next.exact, exactCopied = maps.Clone(cur.exact), true
		}
		return next.exact
	}
	if drop != nil {
		delete(mapFor(drop), drop.key)
	}
	if add != nil {
		mapFor(add)[add.key] = add
	}
	s.maps.Store(next)
}

// len counts the cached names.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		m := c.shards[i].maps.Load()
		n += len(m.exact) + len(m.wild)
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
