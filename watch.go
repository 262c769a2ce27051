package acmetls

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"math"
	"strconv"
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
	if m.cache.get(name) == nil && m.IssuanceToken == "" {
		// Read from storage on its first handshake. A validation server
		// reads it now: it renews what any of them obtained.
		return
	}
	// A few reads at once: a burst of notices (a mass renewal) waits
	// here, holding up the notices behind it, not the database.
	select {
	case m.reloads <- struct{}{}:
	case <-ctx.Done():
		return
	}
	go func() {
		defer func() { <-m.reloads }()
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
		if _, err := m.cacheCert(ctx, name, kt, c, rec, true); err != nil {
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

// Storages that do not tell of writes get a journal instead: every
// certificate written leaves a record in storage.ChangesDir, named by
// the write's time, holding the certificate's key; Run lists the
// directory every changesPoll (less up to a fifth, at random) and reads
// what is new. A listing of a small directory per poll, whatever the
// number of certificates. Records an hour old are deleted by writers.
const (
	changesPoll = 10 * time.Second
	changesKeep = time.Hour
)

// journal notes that key, a certificate record, was written, for
// processes on a storage that does not tell them.
func (m *Manager) journal(ctx context.Context, key string) {
	if _, ok := m.store.(storage.Watcher); ok || !strings.HasPrefix(key, storage.CertsDir+"/") {
		return
	}
	var r [4]byte
	rand.Read(r[:])
	now := m.now()
	entry := storage.ChangesDir + "/" + strconv.FormatInt(now.UnixNano(), 10) + "-" + hex.EncodeToString(r[:])
	if err := m.store.Store(ctx, entry, []byte(key)); err != nil {
		m.logger().Named("storage").Warn("noting a write for other processes; they read it when due", zapErr(err))
		return
	}
	// Prune what every process has long read.
	keys, err := m.store.List(ctx, storage.ChangesDir, false)
	if err != nil {
		return
	}
	for _, k := range keys {
		if at, ok := changeTime(k); ok && now.Sub(at) > changesKeep {
			_ = m.store.Delete(ctx, k)
		}
	}
}

// changeTime is the time in a journal record's name.
func changeTime(key string) (time.Time, bool) {
	name := key[strings.LastIndexByte(key, '/')+1:]
	ns, _, ok := strings.Cut(name, "-")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil || n <= 0 || n == math.MaxInt64 {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// pollChanges follows the journal until ctx ends. The first listing only
// marks what is there as read.
func (m *Manager) pollChanges(ctx context.Context) {
	var seen map[string]bool
	for {
		keys, err := m.store.List(ctx, storage.ChangesDir, false)
		if err != nil && !errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
			m.logger().Named("storage").Warn("listing other processes' writes; they are read when due meanwhile", zapErr(err))
		}
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			now := make(map[string]bool, len(keys))
			for _, k := range keys {
				now[k] = true
				if seen == nil || seen[k] {
					continue
				}
				if b, err := m.store.Load(ctx, k); err == nil {
					m.changed(ctx, string(b))
				}
			}
			seen = now
		}
		t, stop := m.newTimer(jitter(changesPoll))
		select {
		case <-ctx.Done():
			stop()
			return
		case <-t:
		}
	}
}
