package signing_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// hashStore answers a fixed narinfo per hash.
type hashStore map[string]*narinfo.NarInfo

func (h hashStore) NarInfo(_ context.Context, hash string) (*narinfo.NarInfo, error) {
	if ni, ok := h[hash]; ok {
		return ni, nil
	}
	return nil, store.ErrNotFound
}

func (h hashStore) NAR(context.Context, string, int64) (*store.NAR, error) {
	return nil, store.ErrNotFound
}

// variant is the curl narinfo with its NarSize changed, so its fingerprint
// (and signature) differs, and without signatures.
func variant(t testing.TB, i int) *narinfo.NarInfo {
	t.Helper()
	ni := parseNarinfo(t, readFile(t, curlNarinfo))
	ni.NarSize += uint64(i)
	ni.Signatures = nil
	return ni
}

func TestNewStoreMemoises(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, test1PublicKey)
	ctx := context.Background()

	a := variant(t, 0)
	reordered := variant(t, 0)
	slices.Reverse(reordered.References) // same fingerprint as a
	b := variant(t, 1)
	s, signs := signing.NewCountingStore(hashStore{"a": a, "r": reordered, "b": b}, sk, 1000)

	first, err := s.NarInfo(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if signs() != 1 || !signing.Verify(first, pub) {
		t.Fatalf("first request: %d signatures made, verifies %v", signs(), signing.Verify(first, pub))
	}
	for range 10 {
		again, err := s.NarInfo(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if again.String() != first.String() {
			t.Fatalf("memoised answer differs:\n%s\n%s", again, first)
		}
	}
	if n := signs(); n != 1 {
		t.Fatalf("%d signatures made for 11 requests of one path, want 1", n)
	}
	if len(a.Signatures) != 0 {
		t.Fatal("the wrapped store's narinfo was modified")
	}

	// References in another order: the same fingerprint, no new signature.
	if got, err := s.NarInfo(ctx, "r"); err != nil || !signing.Verify(got, pub) || signs() != 1 {
		t.Fatalf("reordered references: %v, verifies %v, %d signatures made", err, signing.Verify(got, pub), signs())
	}
	// Another fingerprint: a new signature.
	got, err := s.NarInfo(ctx, "b")
	if err != nil || !signing.Verify(got, pub) || signs() != 2 {
		t.Fatalf("second path: %v, %d signatures made", err, signs())
	}
	if got.Signatures[0].String() == first.Signatures[0].String() {
		t.Fatal("two fingerprints, one signature")
	}
	if _, err := s.NarInfo(ctx, "missing"); err != store.ErrNotFound {
		t.Fatalf("absent path: %v", err)
	}
}

// TestNewStoreSameAsSign: whatever signatures a narinfo already carries, the
// memoising store answers exactly what Sign makes of it.
func TestNewStoreSameAsSign(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	text := readFile(t, curlNarinfo)
	orig := parseNarinfo(t, text) // cache.nixos.org-1, then test1
	stale, _ := signature.ParseSignature("test1:" + base64.StdEncoding.EncodeToString(make([]byte, 64)))
	other, _ := signature.ParseSignature("other-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64)))

	cases := map[string][]signature.Signature{
		"none":               {},
		"upstream only":      orig.Signatures[:1],
		"ours and upstream":  orig.Signatures,
		"ours first":         {orig.Signatures[1], orig.Signatures[0]},
		"stale ours":         {orig.Signatures[0], stale},
		"stale before valid": {stale, orig.Signatures[0], orig.Signatures[1]},
		"stale then others":  {stale, other, orig.Signatures[0]},
		"two others":         {other, orig.Signatures[0]},
	}
	for name, sigs := range cases {
		t.Run(name, func(t *testing.T) {
			ni := parseNarinfo(t, text)
			ni.Signatures = slices.Clone(sigs)
			want := parseNarinfo(t, text)
			want.Signatures = slices.Clone(sigs)
			if err := signing.Sign(want, sk); err != nil {
				t.Fatal(err)
			}
			s := signing.NewStore(fakeStore{ni: ni}, sk)
			for range 2 { // computed, then memoised
				got, err := s.NarInfo(context.Background(), "syd87l2rxw8cbsxmxl853h0r6pdwhwjr")
				if err != nil {
					t.Fatal(err)
				}
				if got.String() != want.String() {
					t.Fatalf("store answers\n%s\nSign makes\n%s", got, want)
				}
			}
			if !slices.EqualFunc(ni.Signatures, sigs, func(a, b signature.Signature) bool { return a.String() == b.String() }) {
				t.Fatal("the wrapped store's narinfo was modified")
			}
		})
	}

	// A zero key signs nothing and does not panic.
	s := signing.NewStore(fakeStore{ni: parseNarinfo(t, text)}, signature.SecretKey{})
	if got, err := s.NarInfo(context.Background(), "x"); err != nil || got.String() != parseNarinfo(t, text).String() {
		t.Fatalf("zero key: %v\n%s", err, got)
	}
}

func TestNewStoreMemoBounded(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, test1PublicKey)
	const max, paths = 16, 100
	hs := hashStore{}
	for i := range paths {
		hs[fmt.Sprint(i)] = variant(t, i)
	}
	s, signs := signing.NewCountingStore(hs, sk, max)
	for i := range paths {
		got, err := s.NarInfo(context.Background(), fmt.Sprint(i))
		if err != nil || !signing.Verify(got, pub) {
			t.Fatalf("path %d: %v", i, err)
		}
		if n := signing.Memoised(s); n > max {
			t.Fatalf("%d signatures memoised, bound %d", n, max)
		}
	}
	if signs() != paths {
		t.Fatalf("%d signatures made for %d paths", signs(), paths)
	}
	// The most recent one is remembered.
	if _, err := s.NarInfo(context.Background(), fmt.Sprint(paths-1)); err != nil || signs() != paths {
		t.Fatalf("last path signed again: %d signatures, %v", signs(), err)
	}
}

func TestNewStoreConcurrent(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, test1PublicKey)
	hs := hashStore{}
	for i := range 8 {
		hs[fmt.Sprint(i)] = variant(t, i)
	}
	s, signs := signing.NewCountingStore(hs, sk, 4) // evicts constantly
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				got, err := s.NarInfo(context.Background(), fmt.Sprint((g+i)%8))
				if err != nil || len(got.Signatures) != 1 || !signing.Verify(got, pub) {
					t.Errorf("goroutine %d: %v %v", g, err, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d signatures made for 1600 requests", signs())
}

func BenchmarkSignedNarInfo(b *testing.B) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		b.Fatal(err)
	}
	ni := parseNarinfo(b, readFile(b, curlNarinfo))
	ni.Signatures = ni.Signatures[:1] // upstream's only: ours is added
	s := signing.NewStore(fakeStore{ni: ni}, sk)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.NarInfo(ctx, "syd87l2rxw8cbsxmxl853h0r6pdwhwjr"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSign is what every narinfo request cost before memoisation.
func BenchmarkSign(b *testing.B) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		b.Fatal(err)
	}
	ni := parseNarinfo(b, readFile(b, curlNarinfo))
	b.ReportAllocs()
	for b.Loop() {
		signed := *ni
		signed.Signatures = slices.Clone(ni.Signatures[:1])
		if err := signing.Sign(&signed, sk); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNewStoreSameCopy: while the wrapped store hands out the same narinfo
// for a path, the signed copy is the same too (HTTP memoises its rendering
// on it); a new narinfo for the path (a signature Nix added) gets a new
// copy that carries it.
func TestNewStoreSameCopy(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, test1PublicKey)
	ctx := context.Background()
	a := variant(t, 0)
	next := hashStore{"a": a}
	s := signing.NewStore(next, sk)
	first, err := s.NarInfo(ctx, "a")
	if err != nil || !signing.Verify(first, pub) {
		t.Fatalf("first: %v", err)
	}
	if again, err := s.NarInfo(ctx, "a"); err != nil || again != first {
		t.Fatalf("second lookup: %p %v; want the same copy %p", again, err, first)
	}
	if len(a.Signatures) != 0 {
		t.Fatalf("the wrapped store's narinfo was modified: %v", a.Signatures)
	}

	changed := *a
	changed.Signatures = []signature.Signature{{Name: "added-later", Data: make([]byte, 64)}}
	next["a"] = &changed
	got, err := s.NarInfo(ctx, "a")
	if err != nil || got == first || len(got.Signatures) != 2 || got.Signatures[0].Name != "added-later" || !signing.Verify(got, pub) {
		t.Fatalf("after the path's narinfo changed: %p (first %p) %v %v", got, first, got.Signatures, err)
	}
}
