// Package inflight deduplicates work per key: while a call for a key runs,
// later callers for the same key wait for its result instead of starting
// their own. Unlike x/sync/singleflight, a waiter stops waiting when its own
// context ends, and no single waiter can cancel the work for the others:
// the work's context ends only once every waiter has left, for work that
// nobody waits for any more has lost its reason. Work started by [Group.Go]
// is never cancelled by its waiters.
package inflight

import (
	"context"
	"sync"
)

// Group runs at most one call per key at a time. The zero value is ready.
type Group[V any] struct {
	mu    sync.Mutex // guards calls, and the waiters and detached of each call
	calls map[string]*call[V]
}

type call[V any] struct {
	done     chan struct{}
	val      V
	err      error
	cancel   context.CancelFunc // ends the work's context
	waiters  int                // callers of Do still waiting
	detached bool               // started or joined by Go: never cancelled
}

// Do runs fn for key unless a call for key is already running, and returns
// that call's result. fn runs in its own goroutine with a context that keeps
// ctx's values; that context ends when every caller of Do waiting for the
// call has left (its own ctx ended), unless [Group.Go] started or joined
// the call. fn must bound its own duration, and may detach from its
// waiters with context.WithoutCancel once its work must not be abandoned.
// When ctx ends before the result is in, Do returns ctx.Err().
func (g *Group[V]) Do(ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error) {
	c := g.start(ctx, key, fn, false)
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		g.leave(c)
		var zero V
		return zero, ctx.Err()
	}
}

// Go starts fn for key unless a call for key is already running, and
// returns without waiting. The call then runs to its end whoever waits for
// it.
func (g *Group[V]) Go(ctx context.Context, key string, fn func(context.Context) (V, error)) {
	g.start(ctx, key, fn, true)
}

// Running reports whether a call for key is in flight.
func (g *Group[V]) Running(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.calls[key]
	return ok
}

// Len reports how many calls are in flight.
func (g *Group[V]) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.calls)
}

func (g *Group[V]) start(ctx context.Context, key string, fn func(context.Context) (V, error), detached bool) *call[V] {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		c.detached = c.detached || detached
		if !detached {
			c.waiters++
		}
		return c
	}
	if g.calls == nil {
		g.calls = make(map[string]*call[V])
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &call[V]{done: make(chan struct{}), cancel: cancel, detached: detached}
	if !detached {
		c.waiters = 1
	}
	g.calls[key] = c
	go func() {
		defer cancel()
		c.val, c.err = fn(wctx)
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
	}()
	return c
}

// leave records that a waiter of c left, and cancels c's work if it was
// the last and nothing detached it.
func (g *Group[V]) leave(c *call[V]) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c.waiters--
	if c.waiters == 0 && !c.detached {
		c.cancel()
	}
}
