package nixstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/nixtest"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// openFixture opens the shared fixture store; it is closed when t ends.
func openFixture(t *testing.T) (*nixtest.Sample, *nixstore.Local) {
	t.Helper()
	f := nixtest.SharedSample(t)
	l, err := nixstore.Open(f.Store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return f, l
}

func TestPathInfoMatchesNix(t *testing.T) {
	f, l := openFixture(t)
	ctx := context.Background()
	if err := l.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if l.Root() != f.Store {
		t.Fatalf("Root() = %s", l.Root())
	}
	pub, err := signing.ParsePublicKeys([]string{f.Key.Public})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name        string
		path        string
		wantRefs    int // -1: don't care
		wantDeriver bool
		wantSigs    bool
		wantCA      bool
	}{
		{"leaf", f.Leaf, 0, true, false, false},
		{"refs", f.Refs, 3, true, true, false},
		{"shapes", f.Shapes, 0, true, false, false},
		{"gc", f.GC, 0, true, false, false},
		{"ca", f.CA, 0, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nf := nixtest.MustInfo(t, f.Store, tc.path)
			pi, err := l.PathInfo(ctx, nixtest.HashPart(tc.path))
			if err != nil {
				t.Fatal(err)
			}
			if pi.StorePath != tc.path {
				t.Errorf("StorePath %s, want %s", pi.StorePath, tc.path)
			}
			if got := pi.NarHash.Format(nixhash.NixBase32, true); got != nf.NarHash {
				t.Errorf("NarHash %s, Nix says %s", got, nf.NarHash)
			}
			if pi.NarSize != nf.NarSize {
				t.Errorf("NarSize %d, Nix says %d", pi.NarSize, nf.NarSize)
			}
			if !slices.Equal(pi.References, nf.References) {
				t.Errorf("References %q, Nix says %q", pi.References, nf.References)
			}
			if tc.wantRefs >= 0 && len(pi.References) != tc.wantRefs {
				t.Errorf("%d references, want %d", len(pi.References), tc.wantRefs)
			}
			if pi.Deriver != nf.Deriver || (pi.Deriver != "") != tc.wantDeriver {
				t.Errorf("Deriver %q, Nix says %q", pi.Deriver, nf.Deriver)
			}
			if !sameSet(pi.Signatures, nf.Signatures) || (len(pi.Signatures) > 0) != tc.wantSigs {
				t.Errorf("Signatures %q, Nix says %q", pi.Signatures, nf.Signatures)
			}
			if pi.CA != nf.CA || (pi.CA != "") != tc.wantCA {
				t.Errorf("CA %q, Nix says %q", pi.CA, nf.CA)
			}
			if tc.wantCA && !strings.HasPrefix(pi.CA, "fixed:r:sha256:") {
				t.Errorf("CA %q of a path added with nix-store --add", pi.CA)
			}

			// The narinfo served for it.
			ni, err := l.NarInfo(ctx, nixtest.HashPart(tc.path))
			if err != nil {
				t.Fatal(err)
			}
			checkNarInfo(t, ni, pi, nf)
			if tc.wantSigs && !signing.Verify(ni, pub) {
				t.Errorf("Nix's signature does not verify on the narinfo:\n%s", ni)
			}
			// The text form survives go-nix's parser.
			back, err := narinfo.Parse(strings.NewReader(ni.String()))
			if err != nil {
				t.Fatalf("narinfo does not parse: %v\n%s", err, ni)
			}
			if back.String() != ni.String() {
				t.Errorf("narinfo does not round-trip:\n%s\n%s", ni, back)
			}
		})
	}
}

func checkNarInfo(t *testing.T, ni *narinfo.NarInfo, pi *nixstore.PathInfo, nf nixtest.PathInfo) {
	t.Helper()
	if ni.StorePath != pi.StorePath {
		t.Errorf("narinfo StorePath %s", ni.StorePath)
	}
	wantURL := "nar/" + nixtest.HashPart(pi.StorePath) + "-" + strings.TrimPrefix(nf.NarHash, "sha256:") + ".nar"
	if ni.URL != wantURL {
		t.Errorf("URL %s, want %s", ni.URL, wantURL)
	}
	if ni.Compression != "none" {
		t.Errorf("Compression %q", ni.Compression)
	}
	if ni.NarHash == nil || ni.NarHash.String() != nf.NarHash {
		t.Errorf("NarHash %v, want %s", ni.NarHash, nf.NarHash)
	}
	if ni.FileHash == nil || ni.FileHash.String() != nf.NarHash {
		t.Errorf("FileHash %v, want %s", ni.FileHash, nf.NarHash)
	}
	if ni.NarSize != nf.NarSize || ni.FileSize != nf.NarSize {
		t.Errorf("NarSize %d FileSize %d, want %d", ni.NarSize, ni.FileSize, nf.NarSize)
	}
	var wantRefs []string
	for _, r := range nf.References {
		wantRefs = append(wantRefs, path.Base(r))
	}
	if !slices.Equal(ni.References, wantRefs) {
		t.Errorf("References %q, want %q", ni.References, wantRefs)
	}
	wantDeriver := ""
	if nf.Deriver != "" {
		wantDeriver = path.Base(nf.Deriver)
	}
	if ni.Deriver != wantDeriver {
		t.Errorf("Deriver %q, want %q", ni.Deriver, wantDeriver)
	}
	var sigs []string
	for _, s := range ni.Signatures {
		sigs = append(sigs, s.String())
	}
	if !sameSet(sigs, nf.Signatures) {
		t.Errorf("Sig %q, want %q", sigs, nf.Signatures)
	}
	if ni.CA != nf.CA {
		t.Errorf("CA %q, want %q", ni.CA, nf.CA)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestPathInfoErrors(t *testing.T) {
	f, l := openFixture(t)
	ctx := context.Background()
	leaf := nixtest.HashPart(f.Leaf)

	// Valid hashes of absent paths: before, between and after the store's
	// paths, and one differing from a present path in its last character
	// (the "path >= prefix" lookup must not answer with the neighbour).
	neighbour := leaf[:31] + string("01"[bool2int(leaf[31] == '0')])
	for _, h := range []string{
		"00000000000000000000000000000000",
		"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
		"7777777777777777777777777777777a",
		neighbour,
		leaf[:31] + "z",
	} {
		if h == leaf {
			continue
		}
		if _, err := l.PathInfo(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("PathInfo(%s) = %v, want ErrNotFound", h, err)
		}
		if _, err := l.NarInfo(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("NarInfo(%s) = %v, want ErrNotFound", h, err)
		}
	}

	for _, h := range []string{
		"",
		leaf[:31],
		leaf + "0",
		strings.ToUpper(leaf),
		"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
		"oooooooooooooooooooooooooooooooo",
		"uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu",
		"tttttttttttttttttttttttttttttttt",
		"../../../../../../../../../etc/p",
		leaf[:31] + "/",
		leaf[:31] + "\x00",
		leaf[:31] + "%",
		f.Leaf,
		path.Base(f.Leaf),
	} {
		if _, err := l.PathInfo(ctx, h); !errors.Is(err, store.ErrBadRequest) {
			t.Errorf("PathInfo(%q) = %v, want ErrBadRequest", h, err)
		}
		if _, err := l.NarInfo(ctx, h); !errors.Is(err, store.ErrBadRequest) {
			t.Errorf("NarInfo(%q) = %v, want ErrBadRequest", h, err)
		}
	}
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestOpenErrors(t *testing.T) {
	// No database at all.
	root := t.TempDir()
	_, err := nixstore.Open(root)
	if err == nil || !strings.Contains(err.Error(), nixstore.DBPath(root)) {
		t.Fatalf("Open of an empty root: %v, want an error naming %s", err, nixstore.DBPath(root))
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap ErrNotExist", err)
	}

	// A file that is not a SQLite database.
	root = t.TempDir()
	db := nixstore.DBPath(root)
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, bytes.Repeat([]byte("not a database\n"), 300), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := nixstore.Open(root)
	if err == nil {
		// Opening may be lazy; the first query must fail then.
		defer l.Close()
		_, err = l.PathInfo(context.Background(), "00000000000000000000000000000000")
		if err == nil || errors.Is(err, store.ErrNotFound) {
			t.Fatalf("lookup in a garbage database: %v", err)
		}
	}
	if !strings.Contains(err.Error(), db) {
		t.Errorf("error %q does not name %s", err, db)
	}

	// A SQLite database without Nix's tables.
	root = t.TempDir()
	db = nixstore.DBPath(root)
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := nixstore.Open(root); err == nil {
		l.Close()
		t.Fatal("Open of an empty database succeeded")
	} else if !strings.Contains(err.Error(), db) {
		t.Errorf("error %q does not name %s", err, db)
	}
}

func TestNAR(t *testing.T) {
	f, l := openFixture(t)
	ctx := context.Background()
	for _, p := range []string{f.Shapes, f.Refs, f.CA, f.GC} {
		t.Run(path.Base(p)[33:], func(t *testing.T) {
			want := nixtest.MustDump(t, f.Store, p)
			ni, err := l.NarInfo(ctx, nixtest.HashPart(p))
			if err != nil {
				t.Fatal(err)
			}
			if int(ni.NarSize) != len(want) {
				t.Fatalf("NarSize %d, nix-store --dump gives %d bytes", ni.NarSize, len(want))
			}
			size := int64(len(want))
			offsets := []int64{0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 100, 112, 113, size / 3, size / 2, size - 9, size - 8, size - 1, size}
			// NAROf with the narinfo just handed out (no second lookup),
			// and with another one (a lookup, as NAR), opens the same bytes.
			copied := *ni
			opens := map[string]func(off int64) (*store.NAR, error){
				"NAR":                    func(off int64) (*store.NAR, error) { return l.NAR(ctx, ni.URL, off) },
				"NAROf(current narinfo)": func(off int64) (*store.NAR, error) { return l.NAROf(ctx, ni, ni.URL, off) },
				"NAROf(another narinfo)": func(off int64) (*store.NAR, error) { return l.NAROf(ctx, &copied, ni.URL, off) },
			}
			for name, open := range opens {
				for _, off := range offsets {
					if off < 0 || off > size {
						continue
					}
					n, err := open(off)
					if err != nil {
						t.Fatalf("%s at %d: %v", name, off, err)
					}
					if n.Size != size {
						t.Errorf("NAR at %d: Size %d, want %d", off, n.Size, size)
					}
					got, err := io.ReadAll(n)
					n.Close()
					if err != nil {
						t.Fatalf("NAR at %d: %v", off, err)
					}
					if !bytes.Equal(got, want[off:]) {
						t.Fatalf("%s at %d: %d bytes differ from nix-store --dump's suffix of %d bytes (first difference at %d)",
							name, off, len(got), len(want[off:]), firstDiff(got, want[off:]))
					}
				}
			}
			for _, off := range []int64{-1, size + 1, size + 4096, 1 << 62} {
				if n, err := l.NAR(ctx, ni.URL, off); !errors.Is(err, store.ErrOffset) {
					if n != nil {
						n.Close()
					}
					t.Errorf("NAR at %d: %v, want ErrOffset", off, err)
				}
			}

			// A URL naming the path with another NarHash (a stale URL) is a 404.
			ref, err := store.ParseNarURL(ni.URL)
			if err != nil || ref.Source != "" || ref.Hash != nixtest.HashPart(p) {
				t.Fatalf("local NAR URL %q: %+v, %v", ni.URL, ref, err)
			}
			narHash := ref.NarHash
			other := "0000000000000000000000000000000000000000000000000000"
			if narHash == other {
				other = "1111111111111111111111111111111111111111111111111111"
			}
			if _, err := l.NAR(ctx, "nar/"+nixtest.HashPart(p)+"-"+other+".nar", 0); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("NAR with a wrong NarHash: %v, want ErrNotFound", err)
			}
			if _, err := l.NAROf(ctx, ni, "nar/"+nixtest.HashPart(p)+"-"+other+".nar", 0); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("NAROf with a wrong NarHash: %v, want ErrNotFound", err)
			}
			// An absent path.
			if _, err := l.NAR(ctx, "nar/00000000000000000000000000000000-"+narHash+".nar", 0); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("NAR of an absent path: %v, want ErrNotFound", err)
			}
			// Malformed URLs.
			for _, bad := range []string{"nar/" + nixtest.HashPart(p) + ".nar", "nar/../" + path.Base(ni.URL), "/" + ni.URL, ni.URL + ".xz"} {
				if _, err := l.NAR(ctx, bad, 0); !errors.Is(err, store.ErrBadRequest) {
					t.Errorf("NAR(%q): %v, want ErrBadRequest", bad, err)
				}
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestPathCacheGC: a cached path that is garbage-collected is no longer
// served, and is served again once it is back.
func TestPathCacheGC(t *testing.T) {
	f, l := openFixture(t)
	ctx := context.Background()
	h := nixtest.HashPart(f.GC)
	want := nixtest.MustDump(t, f.Store, f.GC)

	pi, err := l.PathInfo(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := l.PathInfo(ctx, h); err != nil || again != pi {
		t.Fatalf("second lookup: %p %v; want the cached %p", again, err, pi)
	}
	ni, err := l.NarInfo(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := l.NarInfo(ctx, h); err != nil || again != ni {
		t.Fatalf("second narinfo lookup: %p %v; want the same %p (layers above memoise on it)", again, err, ni)
	}
	url := ni.URL
	// Read the NAR twice, so that the second comes from memory.
	for i := range 2 {
		n, err := l.NAR(ctx, url, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(n)
		n.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("NAR %d: %d bytes, %v", i, len(got), err)
		}
	}
	if len(want) <= 64<<10 && l.CachedNARs() == 0 {
		t.Fatalf("the %d-byte NAR is not held in memory", len(want))
	}

	nixtest.Must(t, "nix-store", "--store", f.Store, "--delete", f.GC)
	if _, err := os.Lstat(l.FilePath(f.GC)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nix-store --delete left %s: %v", l.FilePath(f.GC), err)
	}
	if _, err := l.PathInfo(ctx, h); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("PathInfo after GC: %v, want ErrNotFound", err)
	}
	if _, err := l.NarInfo(ctx, h); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("NarInfo after GC: %v, want ErrNotFound", err)
	}
	if n, err := l.NAR(ctx, url, 0); !errors.Is(err, store.ErrNotFound) {
		if n != nil {
			n.Close()
		}
		t.Fatalf("NAR after GC: %v, want ErrNotFound", err)
	}

	nixtest.Must(t, "nix", "copy", "--no-check-sigs", "--to", f.Store, f.GC)
	pi2, err := l.PathInfo(ctx, h)
	if err != nil {
		t.Fatalf("PathInfo after copying the path back: %v", err)
	}
	if pi2.StorePath != f.GC || pi2.NarHash.Format(nixhash.NixBase32, false) != pi.NarHash.Format(nixhash.NixBase32, false) {
		t.Fatalf("path info after copying back: %+v", pi2)
	}
	if ni2, err := l.NarInfo(ctx, h); err != nil || ni2 == ni {
		t.Fatalf("narinfo after copying back: %p %v; want a new one, not the old %p", ni2, err, ni)
	}
	n, err := l.NAR(ctx, url, 0)
	if err != nil {
		t.Fatalf("NAR after copying back: %v", err)
	}
	got, err := io.ReadAll(n)
	n.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("NAR after copying back: %d bytes, %v", len(got), err)
	}
}

// TestSignaturesAddedLater: a signature Nix adds to a path after peerix has
// looked the path up must be served within seconds (the path info cache
// expires entries after 5 s).
func TestSignaturesAddedLater(t *testing.T) {
	f, l := openFixture(t)
	ctx := context.Background()
	p := f.Outputs[0] // only this test signs it
	nixtest.Must(t, "nix", "copy", "--no-check-sigs", "--to", f.Store, p)
	h := nixtest.HashPart(p)
	pi, err := l.PathInfo(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(pi.Signatures) != 0 {
		t.Fatalf("%s is already signed: %q", p, pi.Signatures)
	}
	nixtest.Must(t, "nix", "store", "sign", "--store", f.Store, "--key-file", f.Key.SecretFile, p)
	deadline := time.Now().Add(7 * time.Second)
	for {
		pi, err = l.PathInfo(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if len(pi.Signatures) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a signature added by `nix store sign` is still not served after 7 s (got %q)", pi.Signatures)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
