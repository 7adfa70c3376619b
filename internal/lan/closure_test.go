package lan

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

const closureEntry = `StorePath: /nix/store/0123456789abcdfghijklmnpqrsvwxyz-a
URL: nar/0123456789abcdfghijklmnpqrsvwxyz-0000000000000000000000000000000000000000000000000000.nar
Compression: none
NarHash: sha256:0000000000000000000000000000000000000000000000000000
NarSize: 120
References: 0123456789abcdfghijklmnpqrsvwxyz-a
`

func TestParseClosure(t *testing.T) {
	other := strings.ReplaceAll(closureEntry, "-a", "-b")
	for _, tc := range []struct {
		name  string
		body  string
		paths []string
		bad   bool
	}{
		{"empty", "", nil, false},
		{"one", closureEntry, []string{"a"}, false},
		{"two", closureEntry + "\n" + other, []string{"a", "b"}, false},
		{"not a narinfo", closureEntry + "\nhello\n", nil, true},
		{"an oversized entry", closureEntry + "\n" + "X: " + strings.Repeat("y", store.MaxNarInfoSize) + "\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nis, err := parseClosure([]byte(tc.body))
			if (err != nil) != tc.bad {
				t.Fatalf("err %v, want an error: %v", err, tc.bad)
			}
			var got []string
			for _, ni := range nis {
				got = append(got, ni.StorePath[len(ni.StorePath)-1:])
			}
			if strings.Join(got, ",") != strings.Join(tc.paths, ",") {
				t.Fatalf("paths %v, want %v", got, tc.paths)
			}
		})
	}
	many := bytes.Repeat([]byte(closureEntry+"\n"), cache.ClosureMaxPaths+1)
	if _, err := parseClosure(many); err == nil {
		t.Errorf("a closure of %d paths was taken", cache.ClosureMaxPaths+1)
	}
}

// FuzzParseClosure: any bytes a peer sends give narinfos or an error,
// never a panic, and never more than ClosureMaxPaths.
func FuzzParseClosure(f *testing.F) {
	f.Add([]byte(closureEntry))
	f.Add([]byte(closureEntry + "\n" + closureEntry))
	f.Add([]byte("\n\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		nis, err := parseClosure(b)
		if err == nil && len(nis) > cache.ClosureMaxPaths {
			t.Fatalf("%d paths", len(nis))
		}
	})
}

// Hints are taken once, only while fresh, and at most maxHints are kept.
func TestHints(t *testing.T) {
	s := &Store{}
	seed := &peer{}
	s.addHint(testHash, seed)
	if !s.hinted(testHash) {
		t.Fatal("a hint just added is not there")
	}
	if got := s.takeHint(testHash); got != seed {
		t.Fatalf("takeHint: %v, want the seed", got)
	}
	if s.takeHint(testHash) != nil || s.hinted(testHash) {
		t.Fatal("a hint was taken twice")
	}
	for i := range maxHints + 10 {
		s.addHint(fmt.Sprintf("%032d", i), seed)
	}
	if n := len(s.hints); n != maxHints {
		t.Fatalf("%d hints kept, want at most %d", n, maxHints)
	}
	s.hints[testHash] = hint{seed: seed, at: time.Now().Add(-hitTTL)}
	if s.hinted(testHash) || s.takeHint(testHash) != nil {
		t.Fatal("a stale hint was used")
	}
}
