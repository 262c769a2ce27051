package acmetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// MaxNamesPerCertificate is the most names one certificate may hold, as
// Let's Encrypt allows.
const MaxNamesPerCertificate = 100

// ManageGroup is ManageSync for names that share one certificate (of each
// key type), up to [MaxNamesPerCertificate]: one order, one renewal, one
// record, stored under the first name. A larger group is refused before
// any order. Renewals keep the group, whatever this process was told at
// its start, since the certificate names it; a process that was not
// given the group serves its names other than the first only once it
// holds the certificate. One certificate per name (ManageSync) stays the
// default: a group's names fail and renew together.
func (m *Manager) ManageGroup(ctx context.Context, names ...string) error {
	if err := m.init(); err != nil {
		return err
	}
	if len(names) == 0 {
		return errors.New("acmetls: ManageGroup: no names")
	}
	if len(names) > MaxNamesPerCertificate {
		return fmt.Errorf("acmetls: ManageGroup: %d names; a certificate holds at most %d (MaxNamesPerCertificate)", len(names), MaxNamesPerCertificate)
	}
	group := make([]string, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, raw := range names {
		name, err := normalizeIdentifier(raw)
		if err != nil {
			return err
		}
		if !seen[name] {
			seen[name] = true
			group = append(group, name)
		}
	}
	primary := group[0]
	m.mu.Lock()
	if m.managed == nil {
		m.managed = make(map[string]struct{})
	}
	if m.groups == nil {
		m.groups = make(map[string][]string)
		m.primaries = make(map[string]string)
	}
	m.groups[primary] = group
	for _, name := range group {
		m.managed[name] = struct{}{}
		m.primaries[name] = primary
	}
	m.mu.Unlock()
	var errs []error
	for _, kt := range m.keyTypes() {
		if _, err := m.certFor(ctx, primary, kt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// namesFor returns the names a certificate for name holds: those of the
// certificate it renews, if it held several, else name's group, else
// name alone.
func (m *Manager) namesFor(name string, replaces *x509.Certificate) []string {
	if replaces != nil && severalNames(replaces) {
		return certNames(replaces)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if g := m.groups[name]; len(g) > 0 {
		return g
	}
	return []string{name}
}

// primaryOf returns the first name of name's group, or "".
func (m *Manager) primaryOf(name string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.primaries[name]
}

// severalNames reports whether c holds more than one name.
func severalNames(c *x509.Certificate) bool { return len(c.DNSNames)+len(c.IPAddresses) > 1 }

// certNames lists the names a certificate holds.
func certNames(c *x509.Certificate) []string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// cacheGroup puts cc, the certificate of name, in the cache under the
// other names it holds as well, if it holds several.
func (m *Manager) cacheGroup(name string, kt KeyType, leaf *x509.Certificate, cc *tls.Certificate) {
	if !severalNames(leaf) {
		return
	}
	for _, n := range certNames(leaf) {
		if n != name {
			m.cache.put(n, kt, cc)
		}
	}
}
