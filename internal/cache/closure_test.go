package cache_test

import (
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

// closureHash names the i-th path of the closure fixture.
func closureHash(i int) string {
	const digits = "0123456789abcdfghijklmnpqrsvwxyz"
	h := []byte(strings.Repeat("a", 32))
	h[30], h[31] = digits[i/32], digits[i%32]
	return string(h)
}

// A closure: a → b, c; b → c, d (private); c → a (a cycle back to the
// root); d → e (reachable only through the private d).
func closureStore() *fakeStore {
	name := func(i int) string { return closureHash(i) + "-p" + string(rune('a'+i)) }
	mk := func(i int, refs ...int) *narinfo.NarInfo {
		ni := &narinfo.NarInfo{StorePath: "/nix/store/" + name(i), URL: "nar/" + closureHash(i) + ".nar", Compression: "none", NarSize: 10}
		for _, r := range refs {
			ni.References = append(ni.References, name(r))
		}
		return ni
	}
	return &fakeStore{name: "local", narinfos: map[string]*narinfo.NarInfo{
		closureHash(0): mk(0, 0, 1, 2),
		closureHash(1): mk(1, 2, 3),
		closureHash(2): mk(2, 0),
		// 3 is private (absent from the store's view); 4 is here but
		// only 3 refers to it.
		closureHash(4): mk(4),
	}}
}

func TestClosure(t *testing.T) {
	local := closureStore()
	s := &cache.Server{Local: local, StoreDir: "/nix/store", Log: quietLog()}
	rec := do(t, s, "GET", "/local/"+closureHash(0)+cache.ClosureSuffix, "192.0.2.1:1234", nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != cache.ClosureContentType {
		t.Fatalf("status %d, type %q: %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	entries := strings.Split(rec.Body.String(), "\n\n")
	var got []string
	for _, e := range entries {
		ni, err := store.ParseNarInfo([]byte(e))
		if err != nil {
			t.Fatalf("entry %q: %v", e, err)
		}
		got = append(got, ni.StorePath[len("/nix/store/"):][:32])
	}
	want := []string{closureHash(1), closureHash(2)} // breadth first; root, private and unreachable left out
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("closure %v, want %v", got, want)
	}

	for _, tc := range []struct {
		target string
		code   int
	}{
		{"/local/" + closureHash(3) + cache.ClosureSuffix, 404}, // private or absent: as its narinfo
		{"/local/" + closureHash(9) + cache.ClosureSuffix, 404},
		{"/local/notahash" + cache.ClosureSuffix, 400},
		{"/" + closureHash(0) + cache.ClosureSuffix, 404}, // only under /local/
	} {
		if rec := do(t, s, "GET", tc.target, "192.0.2.1:1234", nil); rec.Code != tc.code {
			t.Errorf("GET %s: %d, want %d", tc.target, rec.Code, tc.code)
		}
	}
}
