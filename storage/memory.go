package storage

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
)

// Memory is a Storage held in this process's memory, for tests and
// benchmarks, or a single process that need not keep certificates across
// restarts. Its zero value is ready.
type Memory struct {
	mu     sync.Mutex // guards values and locks
	values map[string][]byte
	locks  map[string]chan struct{} // closed when released
}

var _ Storage = (*Memory)(nil)

// Lock takes the named lock, waiting until it is free or ctx ends.
func (s *Memory) Lock(ctx context.Context, name string) error {
	for {
		s.mu.Lock()
		held, ok := s.locks[name]
		if !ok {
			if s.locks == nil {
				s.locks = make(map[string]chan struct{})
			}
			s.locks[name] = make(chan struct{})
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Unlock releases the named lock.
func (s *Memory) Unlock(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	held, ok := s.locks[name]
	if !ok {
		return fmt.Errorf("acmetls/storage: unlock of %q, which is not locked", name)
	}
	close(held)
	delete(s.locks, name)
	return nil
}

// Store writes a copy of value at key.
func (s *Memory) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.values == nil {
		s.values = make(map[string][]byte)
	}
	s.values[key] = append([]byte(nil), value...)
	return nil
}

// Load returns a copy of the value at key, or an error wrapping
// fs.ErrNotExist.
func (s *Memory) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[key]
	if !ok {
		return nil, fmt.Errorf("acmetls/storage: %s: %w", key, fs.ErrNotExist)
	}
	return append([]byte(nil), v...), nil
}

// Delete removes key and every key under it.
func (s *Memory) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.values {
		if k == key || strings.HasPrefix(k, key+"/") {
			delete(s.values, k)
		}
	}
	return nil
}

// Exists reports whether key holds a value.
func (s *Memory) Exists(_ context.Context, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.values[key]
	return ok
}

// List returns the keys directly under path, or all keys under it when
// recursive, sorted. A key with keys below it is listed as a prefix.
func (s *Memory) List(_ context.Context, path string, recursive bool) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prefix := strings.TrimSuffix(path, "/") + "/"
	seen := make(map[string]struct{})
	for k := range s.values {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if !recursive {
			rest := k[len(prefix):]
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				k = prefix + rest[:i]
			}
		}
		seen[k] = struct{}{}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("acmetls/storage: %s: %w", path, fs.ErrNotExist)
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}
