package acmetls

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/acmetls/acmetls/storage"
)

// Orders take their name's turn in this process first, then an order
// slot, then the storage lock of their name: while the CA is slow, at most
// maxConcurrentOrders storage locks are held by this process (each a
// connection, on PostgreSQL), however many names wait to be ordered, and
// what waits holds nothing shared.

// turns serializes the orders of one name in this process: the key types
// of a name take turns before they take an order slot, so that an order
// waiting for its name's storage lock never holds a slot another name
// could use.
type turns struct {
	mu     sync.Mutex               // guards byName
	byName map[string]chan struct{} // closed when the name's turn ends
}

// turn waits for name's turn, or for ctx to end, and returns the function
// that ends it.
func (m *Manager) turn(ctx context.Context, name string) (func(), error) {
	t := &m.turns
	for {
		t.mu.Lock()
		busy, ok := t.byName[name]
		if !ok {
			if t.byName == nil {
				t.byName = make(map[string]chan struct{})
			}
			done := make(chan struct{})
			t.byName[name] = done
			t.mu.Unlock()
			return func() {
				t.mu.Lock()
				delete(t.byName, name)
				t.mu.Unlock()
				close(done)
			}, nil
		}
		t.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, fmt.Errorf("acmetls: waiting for another order for %q: %w", name, ctx.Err())
		}
	}
}

// orderSlot waits for one of the Manager's order slots, or for ctx to end,
// and returns the function that gives it back. Work no handshake waits for
// (see inBackground) may hold half of the slots at most, so that a burst of
// background orders never makes waiting clients wait longer.
func (m *Manager) orderSlot(ctx context.Context, name string) (func(), error) {
	wait := func(slots chan struct{}) error {
		select {
		case slots <- struct{}{}:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("acmetls: waiting to order a certificate for %q: %w", name, ctx.Err())
		}
	}
	if ctx.Value(backgroundKey{}) == nil {
		if err := wait(m.orders); err != nil {
			return nil, err
		}
		return func() { <-m.orders }, nil
	}
	if err := wait(m.backgroundOrders); err != nil {
		return nil, err
	}
	if err := wait(m.orders); err != nil {
		<-m.backgroundOrders
		return nil, err
	}
	return func() { <-m.orders; <-m.backgroundOrders }, nil
}

// backgroundKey marks a context whose orders no handshake waits for.
type backgroundKey struct{}

// inBackground returns ctx marked as work no handshake waits for: the
// other key type of a name just obtained, renewals.
func inBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// heldLock is a storage lock this process took for a name.
type heldLock struct {
	m    *Manager
	name string // the lock's name
	gone bool   // lost and not taken again: nothing to release
}

// lock takes the storage lock of name, shared by every process on the
// storage and by every key type: one order at a time per name.
func (m *Manager) lock(ctx context.Context, name string) (*heldLock, error) {
	l := &heldLock{m: m, name: storage.CertLockName(name)}
	m.logger().Named("obtain").Debug("taking storage lock", zap.String("lock", l.name))
	if err := m.store.Lock(ctx, l.name); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("acmetls: waiting for lock %s: %w", l.name, err)
		}
		return nil, &storageError{op: "taking lock " + l.name, err: err}
	}
	return l, nil
}

// release gives the lock back, even when the work's context has ended.
func (l *heldLock) release() {
	if !l.gone {
		l.m.unlock(l.name)
	}
}

// verify returns an error wrapping storage.ErrLockLost if the storage can
// tell that this process no longer holds the lock (a PostgreSQL session
// that was cut, say), another error if it could not tell, and nil if it
// holds it or the storage cannot tell at all.
func (l *heldLock) verify(ctx context.Context) error {
	v, ok := l.m.store.(storage.LockVerifier)
	if !ok {
		return nil
	}
	return v.VerifyLock(ctx, l.name)
}

// retake releases a lost lock and takes it again.
func (l *heldLock) retake(ctx context.Context) error {
	ctx2, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = l.m.store.Unlock(ctx2, l.name) // lost: whatever it says
	cancel()
	if err := l.m.store.Lock(ctx, l.name); err != nil {
		l.gone = true
		return fmt.Errorf("acmetls: locking %s again: %w", l.name, err)
	}
	return nil
}

// unlock releases a storage lock even when the work's context has ended.
func (m *Manager) unlock(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.store.Unlock(ctx, name); err != nil && !errors.Is(err, storage.ErrLockLost) {
		m.logger().Error("releasing storage lock", zap.String("lock", name), zap.Error(err))
	}
}
