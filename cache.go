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
	used  atomic.Uint64 // cache tick of the last hit, for eviction
}

// cache maps server names to certificates. Reads take only a shard's read
// lock and allocate nothing; it holds at most about capacity names and
// evicts an approximation of the least recently used one (the oldest of a
// few sampled) when a shard is full.
type cache struct {
	seed     maphash.Seed
	mask     uint64
	perShard int
	tick     atomic.Uint64 // advanced by every insertion
	shards   []shard
}

type shard struct {
	mu    sync.RWMutex      // guards exact and wild
	exact map[string]*entry // by name
	wild  map[string]*entry // "*.parent", by parent
	_     [40]byte          // keep shards on separate cache lines
}

// evictionSample is how many entries an eviction compares.
const evictionSample = 8

func newCache(capacity int) *cache {
	n := 1
	for n < 64 && capacity/(n*2) >= 64 {
		n *= 2
	}
	c := &cache{
		seed:     maphash.MakeSeed(),
		mask:     uint64(n - 1),
		perShard: (capacity + n - 1) / n,
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
	if t := c.tick.Load(); e.used.Load() != t {
		e.used.Store(t)
	}
	return e.certs.Load()
}

// put publishes the certificate of type kt for name (a "*.parent" name is a
// wildcard), keeping the name's other certificate. It returns the new pair.
func (c *cache) put(name string, kt KeyType, cert *tls.Certificate) *certPair {
	key, m := name, (*shard).exactMap
	if parent, ok := wildcardParent(name); ok {
		key, m = parent, (*shard).wildMap
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	byKey := m(s)
	e := byKey[key]
	if e == nil {
		e = new(entry)
		e.used.Store(c.tick.Add(1))
		if len(s.exact)+len(s.wild) >= c.perShard {
			s.evictOne()
		}
		byKey[key] = e
	}
	p := e.certs.Load().with(kt, cert)
	e.certs.Store(p)
	return p
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

func (s *shard) exactMap() map[string]*entry { return s.exact }
func (s *shard) wildMap() map[string]*entry  { return s.wild }

// evictOne drops the least recently used of a few entries. Go's map
// iteration starts at a random place, so the sample is random.
func (s *shard) evictOne() {
	var (
		victim  string
		vmap    map[string]*entry
		oldest  uint64
		sampled int
	)
	for _, m := range [2]map[string]*entry{s.exact, s.wild} {
		for k, e := range m {
			if u := e.used.Load(); vmap == nil || u < oldest {
				victim, vmap, oldest = k, m, u
			}
			if sampled++; sampled == evictionSample {
				break
			}
		}
	}
	if vmap != nil {
		delete(vmap, victim)
	}
}

// wildcardParent returns "example.com" for "*.example.com".
func wildcardParent(name string) (string, bool) {
	if len(name) > 2 && name[0] == '*' && name[1] == '.' {
		return name[2:], true
	}
	return "", false
}
