package inflight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDoRunsOncePerKey(t *testing.T) {
	var g Group[int]
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) (int, error) {
		calls.Add(1)
		<-release
		return 42, nil
	}
	var wg sync.WaitGroup
	results := make(chan int, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := g.Do(context.Background(), "k", fn)
			if err != nil {
				t.Error(err)
			}
			results <- v
		}()
	}
	for !g.Running("k") {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // let the waiters join
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != 42 {
			t.Fatalf("got %d", v)
		}
	}
	if n := calls.Load(); n < 1 || n > 2 {
		// A waiter that arrived after the first call ended may start a
		// second one; never more.
		t.Fatalf("fn ran %d times", n)
	}
	if g.Running("k") {
		t.Error("key still running after completion")
	}
}

func TestWaiterLeavesWhenItsContextEnds(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	workCtx := make(chan context.Context, 1)
	fn := func(ctx context.Context) (string, error) {
		workCtx <- ctx
		<-release
		return "done", nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", fn)
		errc <- err
	}()
	wctx := <-workCtx
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not leave when its context ended")
	}
	// The work was not cancelled with the waiter, and a new waiter gets
	// its result.
	if wctx.Err() != nil {
		t.Fatal("the work's context was cancelled with its first waiter")
	}
	done := make(chan string, 1)
	go func() {
		v, _ := g.Do(context.Background(), "k", fn)
		done <- v
	}()
	close(release)
	if v := <-done; v != "done" {
		t.Fatalf("second waiter got %q", v)
	}
}

func TestKeysAreIndependent(t *testing.T) {
	var g Group[string]
	block := make(chan struct{})
	g.Go(context.Background(), "slow", func(context.Context) (string, error) { <-block; return "", nil })
	v, err := g.Do(context.Background(), "fast", func(context.Context) (string, error) { return "fast", nil })
	if err != nil || v != "fast" {
		t.Fatalf("got %q, %v", v, err)
	}
	close(block)
}
