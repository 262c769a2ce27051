// Package inflight deduplicates work per key: while a call for a key runs,
// later callers for the same key wait for its result instead of starting
// their own. Unlike x/sync/singleflight, a waiter stops waiting when its own
// context ends, and the work runs on a context that no single waiter can
// cancel.
package inflight

import (
	"context"
	"sync"
)

// Group runs at most one call per key at a time. The zero value is ready.
type Group[V any] struct {
	mu    sync.Mutex // guards calls
	calls map[string]*call[V]
}

type call[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// Do runs fn for key unless a call for key is already running, and returns
// that call's result. fn runs in its own goroutine with a context that keeps
// ctx's values but not its cancellation, so the caller that started it may
// leave without cancelling the work for the others. fn must bound its own
// duration. When ctx ends before the result is in, Do returns ctx.Err().
func (g *Group[V]) Do(ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error) {
	c := g.start(ctx, key, fn)
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// Go starts fn for key unless a call for key is already running, and
// returns without waiting.
func (g *Group[V]) Go(ctx context.Context, key string, fn func(context.Context) (V, error)) {
	g.start(ctx, key, fn)
}

// Running reports whether a call for key is in flight.
func (g *Group[V]) Running(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.calls[key]
	return ok
}

func (g *Group[V]) start(ctx context.Context, key string, fn func(context.Context) (V, error)) *call[V] {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c
	}
	if g.calls == nil {
		g.calls = make(map[string]*call[V])
	}
	c := &call[V]{done: make(chan struct{})}
	g.calls[key] = c
	go func() {
		c.val, c.err = fn(context.WithoutCancel(ctx))
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
	}()
	return c
}
