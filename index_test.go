package acmetls

import (
	"hash/maphash"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/acmetls/acmetls/storage"
)

// The index hashes what storage lists: a name in normal form is its own
// segment, and a wildcard's is storage.Safe of "*." and the parent.
func TestStoredNamesMatchStorageSegments(t *testing.T) {
	s := storedNames{seed: maphash.MakeSeed()}
	long := strings.Repeat("l", 63) + "." + strings.Repeat("o", 63) + "." + strings.Repeat("n", 63) + ".example.com"
	s.hashes = []uint64{s.hash(storage.Safe("a.example.com")), s.hash(storage.Safe("*.wild.example.com")),
		s.hash(storage.Safe(long)), s.hash(storage.Safe("*." + long))}
	slices.Sort(s.hashes)
	s.loaded = time.Now()
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"a.example.com", true},
		{"x.wild.example.com", true},
		{"wild.example.com", false},
		{"x.y.wild.example.com", false},
		{"b.example.com", false},
		{long, true},
		{"x." + long, true},
		{"y" + long[1:], false},
	} {
		if got, known := s.mayHold(tc.name); got != tc.want || !known {
			t.Errorf("mayHold(%q) = %v, %v; want %v", tc.name, got, known, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { s.mayHold("x.wild.example.com") }); n != 0 {
		t.Errorf("mayHold allocates %v times", n)
	}
	if got := storage.Safe("*.x"); got != wildcardSegment+"x" {
		t.Errorf("Safe(*.x) = %q, the index expects %q", got, wildcardSegment+"x")
	}
}
