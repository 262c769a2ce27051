package acmetls

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// OnDemand says which names not given to ManageSync may get a certificate
// when a client first asks for them. A name is allowed if it is in Names or
// if Decision returns nil for it.
type OnDemand struct {
	// Names are allowed names, in any case, with or without trailing dot.
	Names []string
	// Decision returns nil to allow name (already normalized), or an error
	// that says why not. It must be fast and safe for concurrent use.
	Decision func(ctx context.Context, name string) error
	// DenialTTL is how long a denial is remembered, so a flood of the same
	// unknown name costs one decision. Default: one minute.
	DenialTTL time.Duration

	names map[string]struct{} // Names normalized; built once
	once  sync.Once
}

// allowed reports whether a certificate may be obtained for name, and why
// not. A denial by OnDemand.Decision is remembered for DenialTTL.
func (m *Manager) allowed(ctx context.Context, name string) error {
	if m.isManaged(name) {
		return nil
	}
	od := m.OnDemand
	if od == nil {
		return fmt.Errorf("%w: %q (set Manager.OnDemand or call ManageSync)", ErrNotManaged, name)
	}
	if od.listed(name) {
		return nil
	}
	if od.Decision == nil {
		return fmt.Errorf("%w: %q", ErrNotManaged, name)
	}
	err := od.Decision(ctx, name)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("acmetls: on-demand policy denied %q: %w", name, err)
	m.denied.remember(name, err, m.now().Add(od.denialTTL()))
	return err
}

// listed reports whether name is in Names.
func (od *OnDemand) listed(name string) bool {
	od.once.Do(func() {
		od.names = make(map[string]struct{}, len(od.Names))
		for _, n := range od.Names {
			if nn, err := normalizeName(n); err == nil {
				od.names[nn] = struct{}{}
			}
		}
	})
	_, ok := od.names[name]
	return ok
}

// denialTTL is how long a denial is remembered; od may be nil.
func (od *OnDemand) denialTTL() time.Duration {
	if od != nil && od.DenialTTL > 0 {
		return od.DenialTTL
	}
	return time.Minute
}
