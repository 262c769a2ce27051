package acmetls

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// NameError reports a server name that acmetls will not serve or obtain a
// certificate for. Such a name never becomes a storage key and never
// reaches the CA.
type NameError struct {
	Name   string // as received, possibly not valid UTF-8, cut at about 1 KB
	Reason string
	size   int // the length of the name as received
}

// Error names the server name, at most its first maxQuoted bytes, and
// why it is refused.
func (e *NameError) Error() string {
	return fmt.Sprintf("acmetls: invalid server name %s: %s", quoteName(e.Name, max(e.size, len(e.Name))), e.Reason)
}

// quoteName quotes at most the first maxQuoted bytes of name, and says how
// long it was (size) when it is longer: a client's bytes never fill a log
// line.
func quoteName(name string, size int) string {
	if len(name) <= maxQuoted {
		return fmt.Sprintf("%q", name)
	}
	return fmt.Sprintf("%q... (%d bytes)", name[:maxQuoted], size)
}

const (
	maxNameLen  = 253
	maxLabelLen = 63
	// maxRawNameLen bounds a name as received, before IDNA: an
	// internationalized name of 253 bytes in ASCII is at most a few times
	// longer in UTF-8. Anything longer is refused before any other work.
	maxRawNameLen = 4 * maxNameLen
	// maxQuoted is the most of a refused name an error quotes.
	maxQuoted = 100
)

// normalizeName turns a server name as sent in SNI or given by an operator
// into the form used as cache and storage key: lowercase ASCII, no
// trailing dot, IDNA A-labels. It refuses what is not a valid DNS host
// name, including IP literals and wildcards. A name already in normal form
// is returned as is, without allocating.
func normalizeName(name string) (string, error) {
	if isNormal(name) && !strings.Contains(name, "xn--") {
		return name, nil
	}
	return normalizeSlow(name)
}

func normalizeSlow(raw string) (string, error) {
	size := len(raw)
	bad := func(reason string) (string, error) {
		if len(raw) > maxRawNameLen {
			raw = raw[:maxRawNameLen] // the error keeps no more of it
		}
		if len(reason) > 2*maxQuoted {
			reason = strings.ToValidUTF8(reason[:2*maxQuoted], "") + "..." // IDNA errors quote labels
		}
		return "", &NameError{Name: raw, Reason: reason, size: size}
	}
	name := raw
	if name == "" {
		return bad("empty (the client sent no SNI)")
	}
	if len(name) > maxRawNameLen {
		return bad(fmt.Sprintf("%d bytes long; a host name has at most %d", len(name), maxNameLen))
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return bad("an IP address; only DNS names are served")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return bad("contains a NUL byte")
	}
	if !utf8.ValidString(name) {
		return bad("not valid UTF-8")
	}
	if strings.HasPrefix(name, "*") {
		return bad("a wildcard is not a server name")
	}
	name = strings.TrimSuffix(name, ".")
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return bad(fmt.Sprintf("not a valid internationalized name: %v", err))
	}
	name = strings.ToLower(ascii)
	if reason := checkHostname(name); reason != "" {
		return bad(reason)
	}
	if strings.Contains(name, "xn--") {
		// A-labels must decode, and encode back to themselves.
		u, err := idna.Lookup.ToUnicode(name)
		if err != nil {
			return bad(fmt.Sprintf("invalid punycode: %v", err))
		}
		if back, err := idna.Lookup.ToASCII(u); err != nil || back != name {
			return bad("punycode does not round-trip")
		}
	}
	return name, nil
}

// hostByte classifies the bytes of a host name in normal form.
var hostByte = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = byteLetter
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byteDigit
	}
	t['-'] = byteHyphen
	t['.'] = byteDot
	return t
}()

const (
	byteInvalid = iota
	byteLetter
	byteDigit
	byteHyphen
	byteDot
)

// isNormal reports whether checkHostname(name) == "", fast: it is on the
// handshake path.
func isNormal(name string) bool {
	if len(name) == 0 || len(name) > maxNameLen {
		return false
	}
	start, digitsOnly := 0, true
	prev := uint8(byteDot)
	for i := 0; i < len(name); i++ {
		switch c := hostByte[name[i]]; c {
		case byteLetter:
			digitsOnly = false
		case byteDigit:
		case byteHyphen:
			if prev == byteDot {
				return false // label starts with '-'
			}
			digitsOnly = false
		case byteDot:
			if prev == byteDot || prev == byteHyphen || i-start > maxLabelLen {
				return false // empty label, label ends with '-', or too long
			}
			start, digitsOnly = i+1, true
		default:
			return false
		}
		prev = hostByte[name[i]]
	}
	return prev != byteDot && prev != byteHyphen && len(name)-start <= maxLabelLen && !digitsOnly
}

// checkHostname returns "" if name is a host name in normal form, or why it
// is not: labels of 1 to 63 of [a-z0-9-], not starting or ending with '-',
// at most 253 bytes, and a last label that is not all digits.
func checkHostname(name string) string {
	if name == "" {
		return "empty"
	}
	if len(name) > maxNameLen {
		return fmt.Sprintf("longer than %d bytes", maxNameLen)
	}
	start, digitsOnly := 0, true
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			c := name[i]
			switch {
			case c >= 'a' && c <= 'z', c == '-':
				digitsOnly = false
			case c >= '0' && c <= '9':
			default:
				return fmt.Sprintf("byte %q is not allowed (only a-z, 0-9, '-' and '.')", c)
			}
			continue
		}
		label := name[start:i]
		switch {
		case len(label) == 0:
			return "empty label"
		case len(label) > maxLabelLen:
			return fmt.Sprintf("label longer than %d bytes", maxLabelLen)
		case label[0] == '-' || label[len(label)-1] == '-':
			return "label starts or ends with '-'"
		}
		if i < len(name) {
			start, digitsOnly = i+1, true
		}
	}
	if digitsOnly {
		return "last label is all digits"
	}
	return ""
}

// splitFirstLabel splits "a.b.c" into "a" and "b.c"; ok is false for a
// name with a single label.
func splitFirstLabel(name string) (label, parent string, ok bool) {
	i := strings.IndexByte(name, '.')
	if i < 0 || i == len(name)-1 {
		return "", "", false
	}
	return name[:i], name[i+1:], true
}

// isNormalLabel reports whether label is one label of a name in normal
// form (not checking the all-digits rule, which applies to the last label).
func isNormalLabel(label string) bool {
	if len(label) == 0 || len(label) > maxLabelLen || label[0] == '-' || label[len(label)-1] == '-' {
		return false
	}
	for i := 0; i < len(label); i++ {
		if c := hostByte[label[i]]; c == byteInvalid || c == byteDot {
			return false
		}
	}
	return !strings.HasPrefix(label, "xn--")
}

// normalizeIdentifier is normalizeName for names given to ManageSync,
// which may also be IP addresses (RFC 8738), in their canonical text
// form (IPv4 as IPv4 even when written mapped to IPv6), and wildcards
// ("*.example.com", served for exactly one label below).
func normalizeIdentifier(raw string) (string, error) {
	if addr, err := netip.ParseAddr(strings.Trim(raw, "[]")); err == nil && addr.Zone() == "" {
		return addr.Unmap().String(), nil
	}
	if parent, ok := strings.CutPrefix(raw, "*."); ok {
		// A wildcard: one label below parent, which needs two labels.
		name, err := normalizeName(parent)
		if err != nil {
			return "", err
		}
		if !strings.Contains(name, ".") {
			return "", &NameError{Name: raw, Reason: "a wildcard needs a parent of two labels at least", size: len(raw)}
		}
		return "*." + name, nil
	}
	return normalizeName(raw)
}

// isIP reports whether name, normalized, is an IP address.
func isIP(name string) bool {
	_, err := netip.ParseAddr(name)
	return err == nil
}

// reverseIP returns the address a reverse-DNS name (RFC 8738 section 6:
// the server name of a tls-alpn-01 validation of an IP address) stands
// for.
func reverseIP(name string) (string, bool) {
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa"):
		labels := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa"), ".")
		if len(labels) != 4 {
			return "", false
		}
		slices.Reverse(labels)
		addr, err := netip.ParseAddr(strings.Join(labels, "."))
		if err != nil || !addr.Is4() {
			return "", false
		}
		return addr.String(), true
	case strings.HasSuffix(name, ".ip6.arpa"):
		nibbles := strings.Split(strings.TrimSuffix(name, ".ip6.arpa"), ".")
		if len(nibbles) != 32 {
			return "", false
		}
		var b strings.Builder
		for i := 31; i >= 0; i-- {
			if len(nibbles[i]) != 1 {
				return "", false
			}
			b.WriteString(nibbles[i])
			if i%4 == 0 && i > 0 {
				b.WriteByte(':')
			}
		}
		addr, err := netip.ParseAddr(b.String())
		if err != nil || !addr.Is6() {
			return "", false
		}
		return addr.String(), true
	}
	return "", false
}
