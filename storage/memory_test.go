package storage

import (
	"context"
	"errors"
	"io/fs"
	"reflect"
	"testing"
	"time"
)

func TestMemory(t *testing.T) {
	ctx := context.Background()
	var s Memory
	if _, err := s.Load(ctx, "a/b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v", err)
	}
	for _, k := range []string{"a/b", "a/c/d", "a/c/e", "z"} {
		if err := s.Store(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.Load(ctx, "a/c/d"); err != nil || string(v) != "a/c/d" {
		t.Fatalf("Load = %q, %v", v, err)
	}
	if got, _ := s.List(ctx, "a", false); !reflect.DeepEqual(got, []string{"a/b", "a/c"}) {
		t.Errorf("List = %q", got)
	}
	if got, _ := s.List(ctx, "a", true); !reflect.DeepEqual(got, []string{"a/b", "a/c/d", "a/c/e"}) {
		t.Errorf("List recursive = %q", got)
	}
	if err := s.Delete(ctx, "a/c"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "a/c/d") || !s.Exists(ctx, "a/b") {
		t.Error("Delete removed the wrong keys")
	}
}

func TestMemoryLock(t *testing.T) {
	ctx := context.Background()
	var s Memory
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := s.Lock(short, "l"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want it to wait for its context", err)
	}
	got := make(chan error)
	go func() { got <- s.Lock(ctx, "l") }()
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	if err := s.Unlock(ctx, "other"); err == nil {
		t.Error("Unlock of a lock not held succeeded")
	}
}
