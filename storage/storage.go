// Package storage defines where acmetls keeps its state and how it lays it
// out: accounts, certificate records, challenge answers, renewal state and
// OCSP staples, all under one prefix of a [Storage].
//
// [Storage] is the subset of certmagic.Storage that acmetls needs, with the
// very same method signatures, so every CertMagic storage backend (the file
// system, Redis, Consul, S3, DynamoDB, PostgreSQL, ...) plugs in unchanged.
// A missing key is reported as an error wrapping [fs.ErrNotExist].
package storage

import (
	"context"
	"strings"

	"github.com/caddyserver/certmagic"
)

// Storage is a key-value store shared by every process that serves the same
// names. Keys are slash-separated paths. Implementations must be safe for
// concurrent use.
//
// Its methods are those of certmagic.Storage; any certmagic.Storage is a
// Storage.
type Storage interface {
	// Lock takes the named lock, blocking until it is held or ctx ends.
	// A lock held by one process excludes every other process sharing the
	// storage.
	Lock(ctx context.Context, name string) error
	// Unlock releases a lock taken by Lock.
	Unlock(ctx context.Context, name string) error
	// Store writes value at key, replacing what was there, atomically: a
	// reader sees the old value or the new one, never a mix.
	Store(ctx context.Context, key string, value []byte) error
	// Load reads the value at key. A missing key is an error wrapping
	// fs.ErrNotExist.
	Load(ctx context.Context, key string) ([]byte, error)
	// Delete removes key, and everything under it if it is a prefix.
	Delete(ctx context.Context, key string) error
	// Exists reports whether key exists.
	Exists(ctx context.Context, key string) bool
	// List lists the keys under path, recursively if asked.
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// Prefix is the first segment of every key acmetls writes.
const Prefix = "acmetls"

// CertKey is the key of the one record that holds the certificate of name
// for keyType: private key, chain and metadata together.
func CertKey(name, keyType string) string {
	return Prefix + "/certs/" + Safe(name) + "/" + Safe(keyType) + ".json"
}

// CertLockName is the name of the storage lock taken while the certificate
// of name for keyType is obtained or renewed.
func CertLockName(name, keyType string) string {
	return Prefix + "-cert-" + Safe(name) + "-" + Safe(keyType)
}

// AccountKey is the key of the ACME account record for one CA directory
// and one contact email ("" for an account without contact).
func AccountKey(ca, email string) string {
	if email == "" {
		email = "default"
	}
	return Prefix + "/accounts/" + Safe(caSegment(ca)) + "/" + Safe(email) + ".json"
}

// AccountLockName is the name of the storage lock taken while an account is
// created, so that processes sharing storage register one account.
func AccountLockName(ca, email string) string {
	return Prefix + "-account-" + Safe(caSegment(ca)) + "-" + Safe(email)
}

// HTTPChallengeKey is the key of the answer to the http-01 challenge with
// token, readable by every process that may receive the CA's request.
func HTTPChallengeKey(token string) string {
	return Prefix + "/challenges/http-01/" + Safe(token) + ".json"
}

// TLSALPNChallengeKey is the key of the answer to the tls-alpn-01 challenge
// for name.
func TLSALPNChallengeKey(name string) string {
	return Prefix + "/challenges/tls-alpn-01/" + Safe(name) + ".json"
}

// caSegment turns a directory URL into one readable path segment: scheme
// dropped, host and path kept.
func caSegment(ca string) string {
	if i := strings.Index(ca, "://"); i >= 0 {
		ca = ca[i+3:]
	}
	return strings.Trim(ca, "/")
}

// Safe makes s usable as exactly one key segment: lowercase letters, digits,
// '-', '.', '_' and '@' are kept; a leading '*' becomes "wildcard_"; every
// other byte becomes '_'; a segment made only of dots, or an empty one,
// becomes '_'. Safe never returns a string containing '/' or equal to "."
// or "..", so a segment cannot climb out of its prefix.
func Safe(s string) string {
	if strings.HasPrefix(s, "*") {
		s = "wildcard_" + s[1:]
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '_', c == '@':
			b.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + ('a' - 'A'))
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if strings.Trim(out, ".") == "" {
		return "_"
	}
	return out
}

// Every CertMagic storage backend is a Storage, the file system one first.
var (
	_ Storage = (certmagic.Storage)(nil)
	_ Storage = (*certmagic.FileStorage)(nil)
)
