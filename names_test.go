package acmetls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path"
	"strings"
	"testing"

	"github.com/acmetls/acmetls/internal/acmetest"
	"github.com/acmetls/acmetls/storage"
)

var badNameCases = []struct {
	name string
	sni  string
	want string // normalized; "" means refused
}{
	{"empty", "", ""},
	{"IPv4 literal", "127.0.0.1", ""},
	{"IPv6 literal", "::1", ""},
	{"bracketed IPv6", "[::1]", ""},
	{"dot dot", "..", ""},
	{"path traversal", "../../etc/passwd", ""},
	{"slash", "a/b", ""},
	{"backslash", `a\b.example.com`, ""},
	{"uppercase", "WWW.Example.COM", "www.example.com"},
	{"trailing dot", "www.example.com.", "www.example.com"},
	{"two trailing dots", "www.example.com..", ""},
	{"leading dot", ".example.com", ""},
	{"64-char label", strings.Repeat("a", 64) + ".example.com", ""},
	{"63-char label", strings.Repeat("a", 63) + ".example.com", strings.Repeat("a", 63) + ".example.com"},
	{"254-char name", strings.Repeat("a.", 127) + "bc", ""},
	{"253-char name", strings.Repeat("a.", 125) + "com", strings.Repeat("a.", 125) + "com"},
	{"IDNA", "bücher.example", "xn--bcher-kva.example"},
	{"IDNA uppercase", "BÜCHER.example", "xn--bcher-kva.example"},
	{"invalid punycode", "xn--a.example", ""},
	{"wildcard as SNI", "*.example.com", ""},
	{"NUL byte", "a\x00.example.com", ""},
	{"NUL only", "\x00", ""},
	{"invalid UTF-8", "\xff.example.com", ""},
	{"space", "a b.example.com", ""},
	{"underscore", "a_b.example.com", ""},
	{"leading hyphen", "-a.example.com", ""},
	{"numeric TLD", "example.123", ""},
	{"percent", "%2e%2e.example.com", ""},
	{"single label", "localhost", "localhost"},
	{"plain", "www.example.com", "www.example.com"},
}

func TestNormalizeName(t *testing.T) {
	t.Parallel()
	for _, tc := range badNameCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalizeName(tc.sni)
			if tc.want == "" {
				var ne *NameError
				if !errors.As(err, &ne) {
					t.Fatalf("normalizeName(%q) = %q, %v; want a *NameError", tc.sni, got, err)
				}
				if !strings.Contains(err.Error(), "invalid server name") {
					t.Errorf("unclear error: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("normalizeName(%q) = %q, %v; want %q", tc.sni, got, err, tc.want)
			}
		})
	}
}

// Bad server names fail the handshake with a NameError, and nothing
// reaches the CA or storage, even with a policy that allows everything.
func TestBadServerNamesNeverReachCAOrStorage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, acmetest.Options{})
	var asked []string
	m := e.manager(func(m *Manager) {
		m.OnDemand = &OnDemand{Decision: func(_ context.Context, name string) error {
			asked = append(asked, name)
			return errors.New("test denies everything it is asked")
		}}
	})
	for _, tc := range badNameCases {
		if tc.want != "" {
			continue
		}
		_, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: tc.sni, SupportedVersions: []uint16{tls.VersionTLS13}})
		var ne *NameError
		if !errors.As(err, &ne) {
			t.Errorf("%s: GetCertificate(%q) error = %v, want a *NameError", tc.name, tc.sni, err)
		}
	}
	if len(asked) != 0 {
		t.Errorf("policy was asked about %q", asked)
	}
	if n := len(e.ca.Orders()); n != 0 {
		t.Errorf("CA saw %d orders", n)
	}
	keys, _ := e.storage.List(context.Background(), storage.Prefix, true)
	if len(keys) != 0 {
		t.Errorf("storage has %q", keys)
	}
}

// Whatever a name is, the keys built from it stay under the prefix, in
// their own segment.
// isNormal is the handshake path's fast form of checkHostname.
func TestIsNormalMatchesCheckHostname(t *testing.T) {
	for _, tc := range badNameCases {
		if got, want := isNormal(tc.sni), checkHostname(tc.sni) == ""; got != want {
			t.Errorf("isNormal(%q) = %v, want %v", tc.sni, got, want)
		}
	}
	for _, s := range []string{"a", "a-b.c", "a-.b", "-a.b", "a..b", "1.2", "a.1", "1a.b2", "x." + strings.Repeat("b", 63), "x." + strings.Repeat("b", 64), strings.Repeat("c", 64) + ".x"} {
		if got, want := isNormal(s), checkHostname(s) == ""; got != want {
			t.Errorf("isNormal(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestStorageKeysStayUnderPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range badNameCases {
		checkKeyContained(t, tc.sni)
	}
}

func checkKeyContained(t *testing.T, name string) {
	t.Helper()
	for _, key := range []string{
		storage.CertKey(name, "ecdsa-p256"),
		storage.CertKey("a.example.com", name),
		storage.StateKey(name, name),
		storage.StapleKey(name, name),
		storage.TLSALPNChallengeKey(name),
		storage.HTTPChallengeKey(name),
		storage.AccountKey(name, name),
	} {
		clean := path.Clean(key)
		if clean != key || !strings.HasPrefix(key, storage.Prefix+"/") || strings.Count(key, "/") > 4 {
			t.Errorf("name %q makes key %q, which leaves its prefix", name, key)
		}
		if strings.ContainsAny(key, "\x00\\") {
			t.Errorf("name %q makes key %q with a NUL or backslash", name, key)
		}
	}
	// Lock names are one segment: no slash at all.
	for _, lock := range []string{storage.CertLockName(name), storage.AccountLockName(name, name)} {
		if strings.ContainsAny(lock, "/\x00\\") || !strings.HasPrefix(lock, storage.Prefix+"-") {
			t.Errorf("name %q makes lock name %q", name, lock)
		}
	}
}

func FuzzNormalizeName(f *testing.F) {
	for _, tc := range badNameCases {
		f.Add(tc.sni)
	}
	f.Fuzz(func(t *testing.T, sni string) {
		name, err := normalizeName(sni)
		checkKeyContained(t, sni)
		if err != nil {
			var ne *NameError
			if !errors.As(err, &ne) {
				t.Fatalf("error %v is not a *NameError", err)
			}
			return
		}
		if reason := checkHostname(name); reason != "" {
			t.Fatalf("normalizeName(%q) = %q, not normal: %s", sni, name, reason)
		}
		if isNormal(sni) != (checkHostname(sni) == "") {
			t.Fatalf("isNormal(%q) = %v, checkHostname says %q", sni, isNormal(sni), checkHostname(sni))
		}
		if again, err := normalizeName(name); err != nil || again != name {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", sni, name, again, err)
		}
		checkKeyContained(t, name)
	})
}

// A refused name's error quotes about 100 bytes of it and says how long it
// was, whatever its length.
func TestNameErrorQuotesLittle(t *testing.T) {
	for _, n := range []int{101, 1012, 1013, 5000, 65000} {
		_, err := normalizeName(strings.Repeat("a", n))
		if err == nil {
			t.Fatalf("a %d-byte name accepted", n)
		}
		msg := err.Error()
		if len(msg) > 400 || !strings.Contains(msg, fmt.Sprintf("(%d bytes)", n)) {
			t.Errorf("%d bytes: %q", n, msg)
		}
	}
}
