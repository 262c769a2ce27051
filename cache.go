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
	vers := mutualVersion(hello.SupportedVersions)
	if vers == tls.VersionTLS13 && p.ecdsaType == kiP256 && p.ecdsa != nil &&
		offersScheme(hello.SignatureSchemes, tls.ECDSAWithP256AndSHA256) {
		// Nearly every handshake; spelled out so that it inlines.
		return p.ecdsa
	}
	return p.chooseAt(hello, vers)
}

// chooseAt is choose at the version the server will negotiate.
func (p *certPair) chooseAt(hello *tls.ClientHelloInfo, vers uint16) *tls.Certificate {
	if p.ecdsa != nil && supportsAt(hello, vers, p.ecdsaType) {
		return p.ecdsa
	}
	if p.rsa != nil && supportsAt(hello, vers, p.rsaType) {
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
// A read takes no lock and writes no shared memory (but a hit's mark, once
// per eviction sweep). Names are spread over shards by their hash's top
// bits; each shard publishes an immutable open-addressing table of a fixed
// size through an atomic pointer, with the certificates inline in the
// slots. A hit therefore reads the shard's pointer, which sits in a small
// dense array, one slot (as a map reads one group), and the name's bytes:
// about what a lookup in a plain map costs. A writer copies its shard's
// table, which the number of shards keeps small.
//
// The cache holds at most capacity names, and a shard at most
// maxPerShard. When either bound is reached, an insertion evicts from its
// own shard with the CLOCK algorithm: a hand sweeps the shard's names,
// sparing (and unmarking) those hit since it last passed, and evicting the
// first that was not. A name in use is not evicted while the shard has
// colder ones. When the cache is full and the inserting shard is empty, a
// name is evicted from another shard.
//
// While the cache holds at most fewMax names, as a server with a handful
// of sites does, a lookup compares the name with each of them instead of
// hashing it (see fewNames).
type cache struct {
	few      atomic.Pointer[fewNames] // nil once the cache held more than fewMax names
	seed     maphash.Seed
	nshards  uint64
	capacity int64
	count    atomic.Int64 // names held, across shards
	shards   []shard      // read by every lookup: kept dense
	writers  []writer     // writers[i] serializes writes to shards[i]
	fewMu    sync.Mutex   // serializes updates of few
}

// fewNames lists the slots of every cached name, while there are at most
// fewMax. Comparing a name with a few others costs less than hashing it
// (maphash.String is three calls deep), so a small cache is searched
// without hashing. The slots are those of the shards' published
// tables: a hit marks the same slot a hashed lookup would. Each write to a
// shard republishes the entries of that shard, under the shard's writer
// lock, after publishing its table.
//
// Since the cache never shrinks, once it held more than fewMax names the
// list is dropped for good, and lookups hash.
type fewNames struct {
	n       int
	entries [fewMax]fewEntry
}

type fewEntry struct {
	s     *slot
	shard int32
	wild  bool
}

// fewMax is the most names fewNames lists: as many as a map's small group.
const fewMax = 8

// shard is what a lookup reads: one table for exact names and one for
// wildcards (keyed by the wildcard's parent).
type shard struct {
	exact atomic.Pointer[table]
	wild  atomic.Pointer[table]
}

// writer is the write side of a shard.
type writer struct {
	mu   sync.Mutex // serializes writers; guards ring and hand
	ring []ringKey  // every name, in eviction order from hand
	hand int
}

type ringKey struct {
	key  string
	wild bool
}

// table is an open-addressing hash table with linear probing, never
// modified once published but for the ref marks of its slots. Its size is
// fixed, so a lookup needs nothing from it but the slot its hash picks.
type table [tableSize]slot

// slot is one name in a table; a slot with an empty key is free. It is 48
// bytes on 64-bit platforms.
type slot struct {
	hash uint32      // the low half of the name's hash, to skip most compares
	ref  atomic.Bool // set by a hit, cleared by the eviction hand
	key  string
	pair certPair
}

const (
	// tableSize is the number of slots in a shard's table; a power of
	// two.
	tableSize = 128
	// maxPerShard bounds the names in a shard, keeping its tables at
	// most three quarters full.
	maxPerShard = tableSize * 3 / 4
	// shardSize is the number of names a shard holds on average when the
	// cache is full: room to spare below maxPerShard for the shards
	// that hashing fills above the average.
	shardSize = 64
	maxShards = 1 << 20
)

// emptyTable is every shard's table until a name is put in it.
var emptyTable = new(table)

// newCache returns a cache for at most capacity names.
func newCache(capacity int) *cache {
	capacity = max(capacity, 1)
	n := min((capacity+shardSize-1)/shardSize, maxShards)
	c := &cache{
		seed:     maphash.MakeSeed(),
		nshards:  uint64(n),
		capacity: int64(capacity),
		shards:   make([]shard, n),
		writers:  make([]writer, n),
	}
	for i := range c.shards {
		c.shards[i].exact.Store(emptyTable)
		c.shards[i].wild.Store(emptyTable)
	}
	c.few.Store(new(fewNames))
	return c
}

// locate hashes key and returns its shard's index and the hash. The index
// is the hash's top half scaled to the number of shards (a multiply, not
// a division), so any number of shards divides names evenly and every
// table is about half full when the cache is.
func (c *cache) locate(key string) (int, uint64) {
	h := maphash.String(c.seed, key)
	return int((h >> 32) * c.nshards >> 32), h
}

// find returns the slot holding key, or nil. Slots are chosen by the
// hash's low bits.
func (t *table) find(h uint64, key string) *slot {
	for i := h; ; i++ {
		s := &t[i%tableSize]
		if s.key == "" {
			return nil
		}
		if s.hash == uint32(h) && s.key == key {
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
	var s *slot
	if few := c.few.Load(); few != nil {
		s = few.find(name, false)
	} else {
		i, h := c.locate(name)
		s = c.shards[i].exact.Load().find(h, name)
	}
	if s == nil {
		if s = c.lookupWildcard(name, normalized); s == nil {
			return nil
		}
	}
	if !s.ref.Load() {
		s.ref.Store(true)
	}
	return &s.pair
}

// lookupWildcard returns the slot of the wildcard covering name, or nil.
func (c *cache) lookupWildcard(name string, normalized bool) *slot {
	label, parent, ok := splitFirstLabel(name)
	if !ok || !normalized && !isNormalLabel(label) {
		return nil
	}
	if few := c.few.Load(); few != nil {
		return few.find(parent, true)
	}
	i, h := c.locate(parent)
	return c.shards[i].wild.Load().find(h, parent)
}

// find returns the slot of key, or nil.
func (f *fewNames) find(key string, wild bool) *slot {
	for i := range f.n {
		e := &f.entries[i]
		if e.s.key == key && e.wild == wild {
			return e.s
		}
	}
	return nil
}

// syncFew republishes the list of few names after shard i's tables
// changed; the caller holds the shard's writer lock.
func (c *cache) syncFew(i int) {
	if c.few.Load() == nil {
		return // for good: writers to a large cache share no lock
	}
	c.fewMu.Lock()
	defer c.fewMu.Unlock()
	old := c.few.Load()
	if old == nil {
		return
	}
	next := new(fewNames)
	for _, e := range old.entries[:old.n] {
		if e.shard != int32(i) {
			next.entries[next.n] = e
			next.n++
		}
	}
	sh := &c.shards[i]
	for _, wild := range []bool{false, true} {
		t := sh.table(wild)
		for j := range t {
			if t[j].key == "" {
				continue
			}
			if next.n == fewMax {
				c.few.Store(nil)
				return
			}
			next.entries[next.n] = fewEntry{s: &t[j], shard: int32(i), wild: wild}
			next.n++
		}
	}
	c.few.Store(next)
}

// place returns the ring key of name (a "*.parent" name is its parent's
// wildcard), its shard and its hash.
func (c *cache) place(name string) (ringKey, int, uint64) {
	rk := ringKey{key: name}
	if parent, ok := wildcardParent(name); ok {
		rk = ringKey{key: parent, wild: true}
	}
	i, h := c.locate(rk.key)
	return rk, i, h
}

// put publishes the certificate of type kt for name (a "*.parent" name is a
// wildcard), keeping the name's other certificate. It returns the new pair.
func (c *cache) put(name string, kt KeyType, cert *tls.Certificate) *certPair {
	rk, i, h := c.place(name)
	sh, w := &c.shards[i], &c.writers[i]
	w.mu.Lock()
	defer w.mu.Unlock()
	var pair certPair
	var ref bool
	old := sh.table(rk.wild).find(h, rk.key)
	if old != nil {
		pair, ref = old.pair, old.ref.Load()
	}
	pair.set(kt, cert)
	var victim *ringKey
	if old == nil {
		victim = c.insert(sh, w, rk)
	}
	out := sh.publish(rk, h, &pair, ref, victim)
	c.syncFew(i)
	return out
}

// replace publishes cert as name's certificate of type kt if the one
// cached is still old, and reports whether it did: what was made for one
// certificate (its staple) never lands on its replacement.
func (c *cache) replace(name string, kt KeyType, old, cert *tls.Certificate) bool {
	rk, i, h := c.place(name)
	sh, w := &c.shards[i], &c.writers[i]
	w.mu.Lock()
	defer w.mu.Unlock()
	cur := sh.table(rk.wild).find(h, rk.key)
	if cur == nil || cur.pair.get(kt) != old {
		return false
	}
	pair := cur.pair
	pair.set(kt, cert)
	sh.publish(rk, h, &pair, cur.ref.Load(), nil)
	c.syncFew(i)
	return true
}

func (sh *shard) table(wild bool) *table {
	if wild {
		return sh.wild.Load()
	}
	return sh.exact.Load()
}

// insert makes room for a new name in sh, whose writer lock the caller
// holds, and adds it to the ring. When the cache or the shard is full it
// evicts one name: from sh, returning it for the caller to drop from sh's
// table as it publishes the new name, or if sh is empty from the first
// other shard it can lock without waiting.
func (c *cache) insert(sh *shard, w *writer, rk ringKey) *ringKey {
	full := c.count.Add(1) > c.capacity
	if len(w.ring) == 0 || !full && len(w.ring) < maxPerShard {
		w.ring = append(w.ring, rk)
		if full {
			c.stealOne(w)
		}
		return nil
	}
	i := w.clockHand(c, sh)
	victim := w.ring[i]
	w.ring[i] = rk
	c.count.Add(-1)
	return &victim
}

// stealOne evicts a name from the first shard other than w's that it can
// lock without waiting.
func (c *cache) stealOne(w *writer) {
	for i := range c.writers {
		o := &c.writers[i]
		if o == w || !o.mu.TryLock() {
			continue
		}
		if len(o.ring) > 0 {
			sh := &c.shards[i]
			j := o.clockHand(c, sh)
			sh.dropKey(o.ring[j])
			c.syncFew(i)
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

// clockHand returns the ring index of the name to evict from sh, advancing
// the hand past the names hit since it last passed.
func (w *writer) clockHand(c *cache, sh *shard) int {
	for {
		i := w.hand
		w.hand = (w.hand + 1) % len(w.ring)
		rk := w.ring[i]
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
	next := dst.Load().without(rk.key, vkey)
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
	dst.Store(dst.Load().without(rk.key, ""))
}

// without returns an unpublished copy of t without the names a and b.
// Names are re-added rather than copied in place, so that the probe
// sequences stay unbroken by the removals.
func (t *table) without(a, b string) *table {
	next := new(table)
	for i := range t {
		s := &t[i]
		if s.key == "" || s.key == a || s.key == b {
			continue
		}
		next.add(uint64(s.hash), s.key, s.ref.Load(), &s.pair)
	}
	return next
}

// add puts a name in t, which is not yet published and has a free slot.
func (t *table) add(h uint64, key string, ref bool, p *certPair) *certPair {
	for i := h; ; i++ {
		s := &t[i%tableSize]
		if s.key == "" {
			s.hash, s.key, s.pair = uint32(h), key, *p
			s.ref.Store(ref)
			return &s.pair
		}
	}
}

// len counts the cached names.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		for _, t := range []*table{c.shards[i].exact.Load(), c.shards[i].wild.Load()} {
			for j := range t {
				if t[j].key != "" {
					n++
				}
			}
		}
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
