package acmetls

import (
	"context"
	"strings"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// watch follows the writes of other processes to a storage that tells of
// them ([storage.Watcher]) until ctx ends: a certificate or staple another
// process stored for a name this one holds in memory is read and served
// at once, and a name it stored is known to storage. Run calls it.
func (m *Manager) watch(ctx context.Context, w storage.Watcher) {
	wait := time.Second
	for {
		started := time.Now()
		err := w.Watch(ctx, func(key string) { m.changed(ctx, key) })
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			wait = time.Second
		}
		m.logger().Named("storage").Warn("watching storage for other processes' writes; they are read when due meanwhile",
			zapErr(err), zapString("retry_in", wait.String()))
		t, stop := m.newTimer(wait)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-t:
		}
		wait = min(2*wait, time.Minute)
	}
}

// changed handles the notice that key was stored.
func (m *Manager) changed(ctx context.Context, key string) {
	name, kt, ok := certOfKey(key)
	if !ok {
		return
	}
	m.names.add(name)
	if m.cache.get(name) == nil {
		return // read from storage on its first handshake
	}
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, rec, err := m.readStored(ctx, name, kt)
		if err != nil || c == nil {
			return
		}
		staple := strings.HasPrefix(key, storage.Prefix+"/ocsp/")
		if t := m.tracked(name, kt); t != nil && t.serial == string(c.Leaf.SerialNumber.Bytes()) && !staple {
			return // what this process holds already: its own write, say
		}
		if _, err := m.cacheCert(ctx, name, kt, c, rec.RenewalInfo, true); err != nil {
			m.logger().Named("storage").Warn("reading a certificate another process stored", zapName(name), zapErr(err))
		}
	}()
}

// certOfKey returns the name and key type of a certificate or staple key.
// Names cut by storage.Safe are not followed: they are read when due.
func certOfKey(key string) (string, KeyType, bool) {
	var rest, ext string
	switch {
	case strings.HasPrefix(key, storage.CertsDir+"/"):
		rest, ext = strings.TrimPrefix(key, storage.CertsDir+"/"), ".json"
	case strings.HasPrefix(key, storage.Prefix+"/ocsp/"):
		rest, ext = strings.TrimPrefix(key, storage.Prefix+"/ocsp/"), ".der"
	default:
		return "", "", false
	}
	name, file, ok := strings.Cut(rest, "/")
	if !ok || !strings.HasSuffix(file, ext) {
		return "", "", false
	}
	kt := KeyType(strings.TrimSuffix(file, ext))
	if indexOf(kt) == 0 {
		return "", "", false
	}
	if n, err := normalizeName(name); err != nil || n != name {
		return "", "", false
	}
	return name, kt, true
}
