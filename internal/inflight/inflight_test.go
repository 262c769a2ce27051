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

// A waiter leaves when its context ends; the work goes on while another
// waiter waits, and ends once the last one has left.
func TestWaiterLeavesWhenItsContextEnds(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	workCtx := make(chan context.Context, 1)
	fn := func(ctx context.Context) (string, error) {
		workCtx <- ctx
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() {
		_, err := g.Do(ctx1, "k", fn)
		errc <- err
	}()
	wctx := <-workCtx
	go func() {
		_, err := g.Do(ctx2, "k", fn)
		errc <- err
	}()
	waitWaiters(t, &g, "k", 2)
	cancel1()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if wctx.Err() != nil {
		t.Fatal("the work's context ended with its first waiter while another waits")
	}
	cancel2()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	select {
	case <-wctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the work's context did not end when its last waiter left")
	}
	close(release)
}

// Work started by Go runs to its end, whoever joins and leaves.
func TestGoIsNeverCancelledByWaiters(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	workCtx := make(chan context.Context, 1)
	fn := func(ctx context.Context) (string, error) {
		workCtx <- ctx
		<-release
		return "done", nil
	}
	g.Go(context.Background(), "k", fn)
	wctx := <-workCtx
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", fn)
		errc <- err
	}()
	waitWaiters(t, &g, "k", 1)
	cancel()
	<-errc
	if wctx.Err() != nil {
		t.Fatal("a waiter's leaving cancelled work started by Go")
	}
	done := make(chan string, 1)
	go func() {
		v, _ := g.Do(context.Background(), "k", fn)
		done <- v
	}()
	close(release)
	if v := <-done; v != "done" {
		t.Fatalf("a later waiter got %q", v)
	}
}

// waitWaiters waits until n callers of Do wait for key.
func waitWaiters[V any](t *testing.T, g *Group[V], key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		c := g.calls[key]
		got := 0
		if c != nil {
			got = c.waiters
		}
		g.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
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
