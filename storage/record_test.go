package storage

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCertRecordRoundTrip(t *testing.T) {
	r := CertRecord{
		Names: []string{"a.example.com"}, KeyType: "ecdsa-p256",
		KeyPEM: "k", ChainPEM: "c", Obtained: time.Unix(1, 0).UTC(),
	}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCertRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Names[0] != "a.example.com" || got.KeyPEM != "k" || got.Version != RecordVersion || !got.Obtained.Equal(r.Obtained) {
		t.Errorf("round trip: %+v", got)
	}
}

func TestParseCertRecordRejects(t *testing.T) {
	for _, in := range []string{
		``, `{`, `null`, `[]`, `{"version":2,"names":["a"],"key_type":"x","key_pem":"k","chain_pem":"c"}`,
		`{"version":1,"names":[],"key_type":"x","key_pem":"k","chain_pem":"c"}`,
		`{"version":1,"names":["a"],"key_pem":"k","chain_pem":"c"}`,
		`{"version":1,"names":["a"],"key_type":"x","chain_pem":"c"}`,
	} {
		if _, err := ParseCertRecord([]byte(in)); !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("ParseCertRecord(%q) = %v, want ErrCorruptRecord", in, err)
		}
	}
}

func FuzzParseRecords(f *testing.F) {
	f.Add([]byte(`{"version":1,"names":["a"],"key_type":"x","key_pem":"k","chain_pem":"c"}`))
	f.Add([]byte(`{"version":1,"location":"l","key_pem":"k"}`))
	f.Add([]byte(`{"token":"t","key_authorization":"k"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseCertRecord(b); err != nil {
			if !errors.Is(err, ErrCorruptRecord) {
				t.Fatalf("error %v does not wrap ErrCorruptRecord", err)
			}
		} else if len(r.Names) == 0 || r.KeyPEM == "" {
			t.Fatal("accepted an incomplete record")
		}
		if _, err := ParseAccountRecord(b); err != nil && !errors.Is(err, ErrCorruptRecord) {
			t.Fatal(err)
		}
		if _, err := ParseChallengeRecord(b); err != nil && !errors.Is(err, ErrCorruptRecord) {
			t.Fatal(err)
		}
	})
}

func TestSafe(t *testing.T) {
	for in, want := range map[string]string{
		"www.example.com":  "www.example.com",
		"*.example.com":    "wildcard_.example.com",
		"..":               "_",
		".":                "_",
		"":                 "_",
		"../../etc/passwd": ".._.._etc_passwd",
		"A/B":              "a_b",
		"a\x00b":           "a_b",
	} {
		if got := Safe(in); got != want {
			t.Errorf("Safe(%q) = %q, want %q", in, got, want)
		}
	}
	// The longest host names make segments a file system takes, with
	// room for a lock file's prefix and suffix, and stay apart.
	long1 := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	long2 := long1[:len(long1)-1] + "e"
	s1, s2 := Safe(long1), Safe(long2)
	if len(s1) > MaxSegment || s1 == s2 || Safe(long1) != s1 {
		t.Errorf("Safe of 253-byte names: %q (%d bytes), %q", s1, len(s1), s2)
	}
	if n := len(CertLockName(long1)) + len(".lock"); n > 255 {
		t.Errorf("a lock file name of %d bytes", n)
	}
}
