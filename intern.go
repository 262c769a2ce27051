package acmetls

import "sync"

// interner shares the bytes of intermediate certificates between cached
// certificates. Most certificates of a Manager chain to the same one or
// two intermediates; without sharing, every cached name would hold its
// own copy of each (about 1 KiB apiece).
type interner struct {
	mu      sync.Mutex // guards byDER and strings
	byDER   map[string][]byte
	strings map[string]string
}

// maxInterned bounds the table; a store with more distinct intermediates
// than this still works, it just shares less.
const maxInterned = 1024

// chain replaces the intermediates of chain, in place, by shared copies.
// The leaf, chain[0], is left alone.
func (in *interner) chain(chain [][]byte) {
	if len(chain) < 2 {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.byDER == nil {
		in.byDER = make(map[string][]byte)
	}
	for i := 1; i < len(chain); i++ {
		if shared, ok := in.byDER[string(chain[i])]; ok {
			chain[i] = shared
			continue
		}
		if len(in.byDER) < maxInterned {
			in.byDER[string(chain[i])] = chain[i]
		}
	}
}

// string returns b as a string shared with every equal one interned
// before, such as the authority key ID most certificates have in common.
func (in *interner) string(b []byte) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if s, ok := in.strings[string(b)]; ok {
		return s
	}
	s := string(b)
	if in.strings == nil {
		in.strings = make(map[string]string)
	}
	if len(in.strings) < maxInterned {
		in.strings[s] = s
	}
	return s
}
