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
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// ErrLockLost is wrapped by the errors of [LockVerifier.VerifyLock] when a
// lock this process took is no longer held.
var ErrLockLost = errors.New("acmetls/storage: lock lost")

// LockVerifier is a Storage that can tell whether a lock this process took
// is still held: a lock that dies with its holder's connection (a
// PostgreSQL session, say) may be lost while its holder works. acmetls
// verifies its lock before it writes a certificate, and re-checks storage
// when the lock was lost, so that processes converge on one certificate.
// A Storage that cannot tell does not implement it.
type LockVerifier interface {
	// VerifyLock returns nil if this process holds the named lock, and
	// an error wrapping ErrLockLost if it no longer does. Other errors
	// say the storage could not tell.
	VerifyLock(ctx context.Context, name string) error
}

// Watcher is implemented by a Storage that tells of writes as they happen,
// such as PostgreSQL's LISTEN/NOTIFY: a process then serves a certificate
// another process stored within moments, instead of when it next reads
// storage.
type Watcher interface {
	// Watch calls changed with the key of every value stored, by any
	// process, until ctx ends (it then returns nil) or it can no longer
	// watch (it returns why). Notices of writes while nothing watched
	// are lost.
	Watch(ctx context.Context, changed func(key string)) error
}

// Prefix is the first segment of every key acmetls writes.
const Prefix = "acmetls"

// CertKey is the key of the one record that holds the certificate of name
// for keyType: private key, chain and metadata together.
func CertKey(name, keyType string) string {
	return CertsDir + "/" + Safe(name) + "/" + Safe(keyType) + ".json"
}

// CertsDir holds one directory per name with a stored certificate, named
// [Safe] of the name: listing it says which names storage holds.
const CertsDir = Prefix + "/certs"

// StateKey is the key of the renewal state of the certificate of name for
// keyType: its failures in a row and when to try again.
func StateKey(name, keyType string) string {
	return StatesDir + "/" + Safe(name) + "/" + Safe(keyType) + ".json"
}

// StatesDir holds one directory per name with a stored renewal state.
const StatesDir = Prefix + "/state"

// StapleKey is the key of the current OCSP staple of the certificate of
// name for keyType, in DER.
func StapleKey(name, keyType string) string {
	return Prefix + "/ocsp/" + Safe(name) + "/" + Safe(keyType) + ".der"
}

// CertLockName is the name of the storage lock taken while a certificate of
// name is obtained or renewed, whatever its key type: orders for one name
// take turns, so that their challenge answers, stored by name, never
// overwrite each other.
func CertLockName(name string) string {
	return Prefix + "-cert-" + Safe(name)
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

// ChangesDir holds, for a Storage that is not a [Watcher], one small
// record per certificate written in the last hour, named by the time of
// the write: processes list it to pick up each other's writes without
// reading every certificate.
const ChangesDir = Prefix + "/changes"

// TicketKeysKey is the key of the TLS session-ticket keys that processes
// sharing storage encrypt tickets with, so that a client resumes on any
// of them. It holds secrets, as certificate records do.
const TicketKeysKey = Prefix + "/tickets/keys.json"

// TicketKeysLockName is the name of the storage lock taken while a new
// session-ticket key is added.
const TicketKeysLockName = Prefix + "-ticket-keys"

// MaxTokenLen bounds the length of the challenge tokens acmetls accepts.
// RFC 8555 asks for at least 128 bits of entropy (22 characters); CAs
// send 43.
const MaxTokenLen = 128

// ValidToken reports whether token can be an ACME challenge token: 1 to
// [MaxTokenLen] characters of the base64url alphabet (RFC 8555 §8.1).
func ValidToken(token string) bool {
	if len(token) == 0 || len(token) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// HTTPChallengeKey is the key of the answer to the http-01 challenge with
// token, readable by every process that may receive the CA's request.
// Tokens are case-sensitive, and so is the key: a token that is not
// [ValidToken] has every byte outside the base64url alphabet replaced,
// and is cut at MaxTokenLen, but keeps its case.
func HTTPChallengeKey(token string) string {
	if !ValidToken(token) {
		b := []byte(token[:min(len(token), MaxTokenLen)])
		for i, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				b[i] = '_'
			}
		}
		token = string(b)
		if token == "" {
			token = "_"
		}
	}
	return Prefix + "/challenges/http-01/" + token + ".json"
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

// MaxSegment bounds the length of a key segment Safe returns, so that a
// key, a lock file named after it, or a file with a suffix, stays within
// the 255 bytes a file name may have: a host name may have 253.
const MaxSegment = 200

// Safe makes s usable as exactly one key segment: lowercase letters, digits,
// '-', '.', '_' and '@' are kept; a leading '*' becomes "wildcard_"; every
// other byte becomes '_'; a segment made only of dots, or an empty one,
// becomes '_'. Safe never returns a string containing '/' or equal to "."
// or "..", so a segment cannot climb out of its prefix. A segment longer
// than MaxSegment is cut, and ends with a hash of the whole of s, so that
// two long names stay two segments.
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
	if len(out) > MaxSegment {
		sum := sha256.Sum256([]byte(s))
		out = out[:MaxSegment-17] + "~" + hex.EncodeToString(sum[:8])
	}
	return out
}

// Dir returns a Storage keeping its values in files under the directory
// path, created as needed: CertMagic's file storage, whose locks work
// across processes sharing the directory (NFS included).
func Dir(path string) Storage { return &certmagic.FileStorage{Path: path} }

// Every CertMagic storage backend is a Storage, the file system one first.
var (
	_ Storage = (certmagic.Storage)(nil)
	_ Storage = (*certmagic.FileStorage)(nil)
)
