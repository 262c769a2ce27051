// Package storagetest checks that a storage backend behaves as acmetls
// needs: the contract of storage.Storage, including locks that exclude
// other processes.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// Open returns two views of one fresh, empty store, as two processes
// sharing it would see it. Both may be the same value for an in-process
// store.
type Open func(t *testing.T) (a, b storage.Storage)

// Run runs the conformance tests against the stores open makes.
func Run(t *testing.T, open Open) {
	t.Run("LoadStore", func(t *testing.T) { testLoadStore(t, open) })
	t.Run("ListDelete", func(t *testing.T) { testListDelete(t, open) })
	t.Run("Lock", func(t *testing.T) { testLock(t, open) })
	t.Run("LockExcludes", func(t *testing.T) { testLockExcludes(t, open) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, open) })
}

func testLoadStore(t *testing.T, open Open) {
	ctx := context.Background()
	a, b := open(t)
	if _, err := a.Load(ctx, "acmetls/certs/x/ecdsa-p256.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key = %v, want fs.ErrNotExist", err)
	}
	if a.Exists(ctx, "acmetls/certs/x/ecdsa-p256.json") {
		t.Fatal("Exists of a missing key")
	}
	value := []byte("\x00binary\xff value")
	if err := a.Store(ctx, "acmetls/certs/x/ecdsa-p256.json", value); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Load(ctx, "acmetls/certs/x/ecdsa-p256.json"); err != nil || string(got) != string(value) {
		t.Fatalf("Load from the other process = %q, %v", got, err)
	}
	if !b.Exists(ctx, "acmetls/certs/x/ecdsa-p256.json") {
		t.Fatal("Exists of a stored key is false")
	}
	if err := b.Store(ctx, "acmetls/certs/x/ecdsa-p256.json", []byte("second")); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, "acmetls/certs/x/ecdsa-p256.json"); err != nil || string(got) != "second" {
		t.Fatalf("Load after overwrite = %q, %v", got, err)
	}
	if err := a.Store(ctx, "acmetls/empty", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, "acmetls/empty"); err != nil || len(got) != 0 {
		t.Fatalf("Load of an empty value = %q, %v", got, err)
	}
}

func testListDelete(t *testing.T, open Open) {
	ctx := context.Background()
	a, b := open(t)
	// "a/c_d" and "a/c%" would match "a/c" in a careless LIKE; "a/c0"
	// and "a/c.x" sort next to "a/c/" bytewise.
	keys := []string{"a/b", "a/c/d", "a/c/e/f", "a/c_d", "a/c%", "a/c0", "a/c.x", "ab/x", "z"}
	for _, k := range keys {
		if err := a.Store(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	// want is sorted bytewise.
	for _, tc := range []struct {
		path      string
		recursive bool
		want      []string
	}{
		{"a", false, []string{"a/b", "a/c", "a/c%", "a/c.x", "a/c0", "a/c_d"}},
		{"a/", false, []string{"a/b", "a/c", "a/c%", "a/c.x", "a/c0", "a/c_d"}},
		{"a", true, []string{"a/b", "a/c%", "a/c.x", "a/c/d", "a/c/e/f", "a/c0", "a/c_d"}},
		{"a/c", false, []string{"a/c/d", "a/c/e"}},
		{"a/c", true, []string{"a/c/d", "a/c/e/f"}},
	} {
		got, err := b.List(ctx, tc.path, tc.recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", tc.path, tc.recursive, err)
		}
		if tc.recursive {
			// A recursive list may name the prefixes between path and
			// the keys too, as a file system's walk does.
			got = slices.DeleteFunc(got, func(k string) bool {
				return !slices.Contains(keys, k) && slices.ContainsFunc(tc.want, func(w string) bool {
					return len(w) > len(k) && w[:len(k)+1] == k+"/"
				})
			})
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%q, %v) = %q, want %q", tc.path, tc.recursive, got, tc.want)
		}
	}
	if _, err := b.List(ctx, "nothing", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of an empty prefix = %v, want fs.ErrNotExist", err)
	}
	if err := b.Delete(ctx, "a/c"); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		gone := k == "a/c/d" || k == "a/c/e/f"
		if got := a.Exists(ctx, k); got == gone {
			t.Errorf("after Delete(a/c): Exists(%s) = %v", k, got)
		}
	}
	if err := b.Delete(ctx, "z"); err != nil || a.Exists(ctx, "z") {
		t.Errorf("Delete of a key: %v, exists %v", err, a.Exists(ctx, "z"))
	}
	if err := b.Delete(ctx, "never/stored"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Delete of a missing key: %v", err)
	}
}

func testLock(t *testing.T, open Open) {
	ctx := context.Background()
	a, _ := open(t)
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := a.Lock(short, "l"); err == nil {
		t.Fatal("a second Lock of a held lock succeeded")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second Lock = %v, want it to end with its context", err)
	}
	if err := a.Lock(ctx, "other"); err != nil {
		t.Fatalf("a lock of another name waits: %v", err)
	}
	got := make(chan error)
	go func() { got <- a.Lock(ctx, "l") }()
	if err := a.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	for _, name := range []string{"l", "other"} {
		if err := a.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Unlock(ctx, "never"); err == nil {
		t.Error("Unlock of a lock not held succeeded")
	}
}

// Goroutines of two processes increment a counter under one lock, each
// reading and writing it: a lock that does not exclude loses increments.
func testLockExcludes(t *testing.T, open Open) {
	ctx := context.Background()
	a, b := open(t)
	if err := a.Store(ctx, "counter", []byte("0")); err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 4, 10
	var wg sync.WaitGroup
	var inside atomic.Int32
	errs := make(chan error, workers*rounds)
	for w := 0; w < workers; w++ {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for r := 0; r < rounds; r++ {
				if err := increment(ctx, s, &inside); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v, err := a.Load(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint(workers * rounds); string(v) != want {
		t.Fatalf("counter = %s, want %s: the lock let two holders in", v, want)
	}
}

func increment(ctx context.Context, s storage.Storage, inside *atomic.Int32) error {
	if err := s.Lock(ctx, "counter-lock"); err != nil {
		return err
	}
	defer func() { _ = s.Unlock(ctx, "counter-lock") }()
	if n := inside.Add(1); n != 1 {
		return fmt.Errorf("%d holders of one lock", n)
	}
	defer inside.Add(-1)
	v, err := s.Load(ctx, "counter")
	if err != nil {
		return err
	}
	var n int
	if _, err := fmt.Sscan(string(v), &n); err != nil {
		return err
	}
	time.Sleep(time.Millisecond) // widen the window a broken lock leaves
	return s.Store(ctx, "counter", []byte(fmt.Sprint(n+1)))
}

// Writers replace a value while readers read it: each read sees one
// whole value.
func testConcurrent(t *testing.T, open Open) {
	ctx := context.Background()
	a, b := open(t)
	values := [][]byte{make([]byte, 4096), make([]byte, 4096)}
	for i := range values[1] {
		values[1][i] = 0xff
	}
	if err := a.Store(ctx, "v", values[0]); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 50; i++ {
			if err := a.Store(ctx, "v", values[i%2]); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i := 0; i < 50; i++ {
		v, err := b.Load(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		if string(v) != string(values[0]) && string(v) != string(values[1]) {
			t.Fatal("a read saw a mix of two writes")
		}
	}
	wg.Wait()
}
