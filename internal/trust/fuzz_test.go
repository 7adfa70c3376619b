package trust

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/signing"
)

// FuzzParseUpstreamNarInfo feeds arbitrary bytes to the parser of upstream
// narinfos (go-nix's narinfo.Parse behind our checks) and to what the filter
// and verifier then do with an accepted narinfo. It fails on a panic in the
// parser (which production recovers from, but we want to know), and on an
// accepted narinfo that breaks the checks' promises.
func FuzzParseUpstreamNarInfo(f *testing.F) {
	real, err := os.ReadFile("testdata/syd87l2rxw8cbsxmxl853h0r6pdwhwjr.narinfo")
	if err != nil {
		f.Fatal(err)
	}
	const h = "syd87l2rxw8cbsxmxl853h0r6pdwhwjr"
	f.Add(real, h)
	f.Add([]byte(strings.Replace(string(real), "NarSize: 196040", "NarSize: -1", 1)), h)
	f.Add([]byte(strings.Replace(string(real), "sha256:", "md5:", 1)), h)
	f.Add([]byte(strings.Replace(string(real), "NarHash: sha256:1b4s", "NarHash: sha256-1b4s", 1)), h)
	f.Add([]byte("StorePath: /nix/store/"+h+"-x\nNarHash: sha256:\nNarSize: 1\n"), h)
	f.Add([]byte("StorePath: /nix/store/"+h+"-x\nNarHash: sha512:"+strings.Repeat("0", 128)+"\nNarSize: 1\n"), h)
	f.Add([]byte("Sig: :\nSig: a:b\nReferences: \n\n\n"), h)
	f.Add([]byte("StorePath: : : \n"), h)
	f.Add([]byte(""), "")
	f.Add([]byte{0xff, 0xfe, '\n', 0}, h)

	key, err := signing.ParsePublicKey(DefaultUpstreamPublicKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte, hash string) {
		ni, err := parseUpstreamNarInfo(body, hash)
		if err != nil {
			if strings.Contains(err.Error(), "parser panicked") {
				t.Fatalf("narinfo.Parse panicked: %v", err)
			}
			return
		}
		if hashOfStorePath(ni.StorePath) != hash || ni.NarHash == nil ||
			ni.NarHash.Algo() != nixhash.SHA256 || len(ni.NarHash.Digest()) != 32 || ni.NarSize == 0 {
			t.Fatalf("accepted a narinfo that fails the checks: %+v", ni)
		}
		// What the verifier and filter do with it must not panic either.
		signing.Verify(ni, []signature.PublicKey{key})
		differs(ni, ni)
		nameOfStorePath(ni.StorePath)
	})
}

// FuzzParseFilterCache: the filter cache file is read back at start; any
// bytes must parse or be refused, never panic, and what parses must be
// written back the same (sorted, and less what expired).
func FuzzParseFilterCache(f *testing.F) {
	h := hashOf("x")
	nh := strings.Repeat("1", 52)
	f.Add([]byte(cacheHeader + "\n" + h + " p " + nh + " 99999999999\n" + hashOf("y") + " n 99999999999\n"))
	f.Add([]byte(cacheHeader + "\n" + h + " p " + nh + " 1\n"))
	f.Add([]byte(cacheHeaderV1 + "\n" + h + " p 99999999999\n"))
	f.Add([]byte(cacheHeader + "\n" + h + " n 99999999999 x\n"))
	f.Add([]byte(cacheHeader + "\n"))
	f.Add([]byte(""))
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := parseCache(data, now, 24*time.Hour, time.Hour)
		if err != nil {
			return
		}
		file := filepath.Join(t.TempDir(), "cache")
		if err := writeCacheFile(file, entries); err != nil {
			t.Fatal(err)
		}
		back, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseCache(back, now, 24*time.Hour, time.Hour)
		if err != nil {
			t.Fatalf("written cache does not parse: %v\n%s", err, back)
		}
		if len(again) != len(entries) {
			t.Fatalf("%d entries, %d after a round trip", len(entries), len(again))
		}
		for k, e := range entries {
			if g := again[k]; g.v != e.v || g.exp.Unix() != e.exp.Unix() {
				t.Fatalf("%s: %+v, %+v after a round trip", k, e, g)
			}
		}
	})
}
