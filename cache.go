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
	ecdsaType, rsaType keyIndex
}

// keyIndex is a KeyType in one byte: its index in validKeyTypes plus one,
// zero for none. It keeps cache slots small and the handshake path free of
// string comparisons.
type keyIndex uint8

// The keyIndex of each KeyType, in validKeyTypes' order.
const (
	kiP256 keyIndex = iota + 1
	kiP384
	kiRSA2048
	kiRSA3072
	kiRSA4096
)

func indexOf(kt KeyType) keyIndex {
	for i, v := range validKeyTypes {
		if v == kt {
			return keyIndex(i + 1)
		}
	}
	return 0
}

func (i keyIndex) keyType() KeyType {
	if i == 0 {
		return ""
	}
	return validKeyTypes[i-1]
}

// choose returns the certificate the client supports, ECDSA first, or nil.
// It allocates nothing.
func (p *certPair) choose(hello *tls.ClientHelloInfo) *tls.Certificate {
	if p.ecdsa != nil && supportsIndex(hello, p.ecdsaType) {
		return p.ecdsa
	}
	if p.rsa != nil && supportsIndex(hello, p.rsaType) {
		return p.rsa
	}
	return nil
}

// get returns the certificate of type kt, or nil.
func (p *certPair) get(kt KeyType) *tls.Certificate {
	switch indexOf(kt) {
	case 0:
		return nil
	case p.ecdsaType:
		return p.ecdsa
	case p.rsaType:
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
	n.set(kt, c)
	return &n
}

func (p *certPair) set(kt KeyType, c *tls.Certificate) {
	if kt.isECDSA() {
		p.ecdsa, p.ecdsaType = c, indexOf(kt)
	} else {
		p.rsa, p.rsaType = c, indexOf(kt)
	}
}

// cache maps server names to certificates.
//
// A read takes no lock, follows no pointer but to its shard's table, and
// writes no shared memory (but a hit's mark, once per eviction sweep):
// each shard publishes an immutable open-addressing table through an
// atomic pointer, with the certificates inline in the slots, so a hit
// costs about what a lookup in a plain map does. A writer copies its
// shard's table, which the number of shards keeps small (about shardSize
// names).
//
// The cache holds at most capacity names. When full, an insertion evicts
// from its own shard with the CLOCK algorithm: a hand sweeps the shard's
// names, sparing (and unmarking) those hit since it last passed, and
// evicting the first that was not. A name in use is not evicted while the
// shard has colder ones.
type cache struct {
	seed      maphash.Seed
	shardBits uint
	capacity  int64
	count     atomic.Int64 // names held, across shards
	shards    []shard
}

type shard struct {
	exact atomic.Pointer[table] // by name
	wild  atomic.Pointer[table] // "*.parent", by parent
	mu    sync.Mutex            // serializes writers; guards ring and hand
	ring  []ringKey             // every name, in eviction order from hand
	hand  int
}

type ringKey struct {
	key  string
	wild bool
}

// table is an open-addressing hash table with linear probing, never
// modified once published but for the ref marks of its slots.
type table struct {
	slots []slot
	mask  uint64
	n     int
}

// slot is one name in a table; a slot with an empty key is free.
type slot struct {
	hash uint64
	key  string
	ref  atomic.Bool // set by a hit, cleared by the eviction hand
	pair certPair
}

const (
	// shardSize is the number of names a shard holds on average when
	// the cache is full: small enough to copy on every change.
	shardSize = 64
	maxShards = 4096
)

var emptyTable = &table{slots: make([]slot, 1)}

// newCache returns a cache for at most capacity names.
func newCache(capacity int) *cache {
	capacity = max(capacity, 1)
	bits := uint(0)
	for 1<<bits < maxShards && (1<<bits)*shardSize < capacity {
		bits++
	}
	c := &cache{
		seed:      maphash.MakeSeed(),
		shardBits: bits,
		capacity:  int64(capacity),
		shards:    make([]shard, 1<<bits),
	}
	for i := range c.shards {
		c.shards[i].exact.Store(emptyTable)
		c.shards[i].wild.Store(emptyTable)
	}
	return c
}

// locate hashes key to its shard (by the hash's top bits) and returns both.
func (c *cache) locate(key string) (*shard, uint64) {
	h := maphash.String(c.seed, key)
	if c.shardBits == 0 {
		return &c.shards[0], h
	}
	return &c.shards[h>>(64-c.shardBits)], h
}

// find returns the slot holding key, or nil. Slots are chosen by the
// hash's low bits.
func (t *table) find(h uint64, key string) *slot {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if s.key == "" {
			return nil
		}
		if s.hash == h && s.key == key {
			return s
		}
	}
}

// get returns the certificates for name: an exact entry first, then a
// wildcard one level up. It allocates nothing and takes no lock.
func (c *cache) get(name string) *certPair { return c.lookup(name, false) }

// lookup is get. Only normalized names are ever cached, so an exact hit
// proves name normal. A wildcard hit needs a valid first label: unless
// normalized says name was normalized, a first label that is not plainly
// valid (including an IDNA one, whose check is slow) is no hit.
func (c *cache) lookup(name string, normalized bool) *certPair {
	sh, h := c.locate(name)
	s := sh.exact.Load().find(h, name)
	if s == nil {
		label, parent, ok := splitFirstLabel(name)
		if !ok || !normalized && !isNormalLabel(label) {
			return nil
		}
		sh, h = c.locate(parent)
		if s = sh.wild.Load().find(h, parent); s == nil {
			return nil
		}
	}
	if !s.ref.Load() {
		s.ref.Store(true)
	}
	return &s.pair
}

// put publishes the certificate of type kt for name (a "*.parent" name is a
// wildcard), keeping the name's other certificate. It returns the new pair.
func (c *cache) put(name string, kt KeyType, cert *tls.Certificate) *certPair {
	rk := ringKey{key: name}
	if parent, ok := wildcardParent(name); ok {
		rk = ringKey{key: parent, wild: true}
	}
	sh, h := c.locate(rk.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var pair certPair
	var ref bool
	old := sh.table(rk.wild).find(h, rk.key)
	if old != nil {
		pair, ref = old.pair, old.ref.Load()
	}
	pair.set(kt, cert)
	if old != nil {
		return sh.publish(rk, h, &pair, ref, nil)
	}
	victim := c.insert(sh, rk)
	return sh.publish(rk, h, &pair, false, victim)
}

func (sh *shard) table(wild bool) *table {
	if wild {
		return sh.wild.Load()
	}
	return sh.exact.Load()
}

// insert makes room for a new name in sh, whose lock the caller holds, and
// adds it to the ring. When the cache is full it evicts one name: from sh,
// returning it for the caller to drop from sh's table as it publishes the
// new name, or if sh is empty from the first other shard it can lock
// without waiting.
func (c *cache) insert(sh *shard, rk ringKey) *ringKey {
	if c.count.Add(1) <= c.capacity || len(sh.ring) == 0 {
		sh.ring = append(sh.ring, rk)
		if c.count.Load() > c.capacity {
			c.stealOne(sh)
		}
		return nil
	}
	i := sh.clockHand(c)
	victim := sh.ring[i]
	sh.ring[i] = rk
	c.count.Add(-1)
	return &victim
}

// stealOne evicts a name from the first shard other than sh that it can
// lock without waiting.
func (c *cache) stealOne(sh *shard) {
	for i := range c.shards {
		o := &c.shards[i]
		if o == sh || !o.mu.TryLock() {
			continue
		}
		if len(o.ring) > 0 {
			j := o.clockHand(c)
			o.dropKey(o.ring[j])
			last := len(o.ring) - 1
			o.ring[j] = o.ring[last]
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

// clockHand returns the ring index of the name to evict, advancing the
// hand past the names hit since it last passed.
func (sh *shard) clockHand(c *cache) int {
	for {
		i := sh.hand
		sh.hand = (sh.hand + 1) % len(sh.ring)
		rk := sh.ring[i]
		_, h := c.locate(rk.key)
		s := sh.table(rk.wild).find(h, rk.key)
		if s == nil || !s.ref.Load() {
			return i
		}
		s.ref.Store(false)
	}
}

// publish replaces the table holding rk by a copy in which rk maps to
// pair, marked ref, or is absent if pair is nil, and returns the published
// pair. A victim in the same table is dropped in the same copy; one in the
// other table costs a copy of its own.
func (sh *shard) publish(rk ringKey, h uint64, pair *certPair, ref bool, victim *ringKey) *certPair {
	var vkey string
	if victim != nil {
		if victim.wild == rk.wild {
			vkey = victim.key
		} else {
			sh.dropKey(*victim)
		}
	}
	dst := &sh.exact
	if rk.wild {
		dst = &sh.wild
	}
	cur := dst.Load()
	size := 8
	for size < 2*(cur.n+1) {
		size *= 2
	}
	next := &table{slots: make([]slot, size), mask: uint64(size - 1)}
	for i := range cur.slots {
		s := &cur.slots[i]
		if s.key == "" || s.key == vkey || (s.hash == h && s.key == rk.key) {
			continue
		}
		next.add(s.hash, s.key, s.ref.Load(), &s.pair)
	}
	var out *certPair
	if pair != nil {
		out = next.add(h, rk.key, ref, pair)
	}
	dst.Store(next)
	return out
}

// dropKey publishes sh's table without rk.
func (sh *shard) dropKey(rk ringKey) {
	dst := &sh.exact
	if rk.wild {
		dst = &sh.wild
	}
	cur := dst.Load()
	next := &table{slots: make([]slot, len(cur.slots)), mask: cur.mask}
	for i := range cur.slots {
		if s := &cur.slots[i]; s.key != "" && s.key != rk.key {
			next.add(s.hash, s.key, s.ref.Load(), &s.pair)
		}
	}
	dst.Store(next)
}

// add puts a name in t, which is not yet published and has a free slot.
func (t *table) add(h uint64, key string, ref bool, p *certPair) *certPair {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if s.key == "" {
			s.hash, s.key, s.pair = h, key, *p
			s.ref.Store(ref)
			t.n++
			return &s.pair
		}
	}
}

// len counts the cached names.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		n += c.shards[i].exact.Load().n + c.shards[i].wild.Load().n
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
