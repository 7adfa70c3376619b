package cache_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Hash parts of the golden narinfos.
const (
	hashMinimal = "0c0rb9s3h8cfihpfgl1qvlqbiz1s9f4w"
	hashRefs    = "1m6xhzbkkmdvqm8gjvy1l8gkaclcfz4i"
	hashSigned  = "syd87l2rxw8cbsxmxl853h0r6pdwhwjr"
	hashCA      = "7xk7qzx5vjm8ldn1jnqlz8ndxbfqyrk9"
	hashFull    = "a7pqcr0dmrxwbcwnhx10ym3n3m5xnryy"
	hashXZ      = "n1xl2gvsvf0bg3w3bdbyqmqwr4ki5a6d"
)

func mustHash(t testing.TB, s string) *nixhash.HashWithEncoding {
	t.Helper()
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// testKey is a fixed ed25519 key (ed25519 signatures are deterministic, so
// golden files can hold them).
func testKey(t testing.TB, name string, seedByte byte) signature.SecretKey {
	t.Helper()
	seed := bytes.Repeat([]byte{seedByte}, ed25519.SeedSize)
	sk, err := signature.LoadSecretKey(name + ":" + base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed)))
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// goldenNarInfos are the narinfos the golden files are made of, by name:
// with and without references, deriver, signatures and CA.
func goldenNarInfos(t testing.TB) map[string]*narinfo.NarInfo {
	t.Helper()
	narHash := mustHash(t, "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0")
	local := func(hash, name string, size uint64) *narinfo.NarInfo {
		return &narinfo.NarInfo{
			StorePath:   "/nix/store/" + hash + "-" + name,
			URL:         "nar/" + hash + "-" + narHash.Format(nixhash.NixBase32, false) + ".nar",
			Compression: "none",
			FileHash:    narHash,
			FileSize:    size,
			NarHash:     narHash,
			NarSize:     size,
		}
	}
	m := map[string]*narinfo.NarInfo{}

	m["minimal"] = local(hashMinimal, "hello-2.12.1", 226560)

	refs := local(hashRefs, "hello-2.12.1", 226560)
	refs.References = []string{
		"0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
		hashRefs + "-hello-2.12.1",
		"6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
	}
	refs.Deriver = "ib3sh3pcz10wsmavxvkdbayhqivbghlq-hello-2.12.1.drv"
	m["refs-deriver"] = refs

	signed := local(hashSigned, "curl-7.82.0-bin", 196040)
	signed.References = []string{
		"0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
		"6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
		"j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
		"yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
	}
	signed.Deriver = "5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv"
	for _, k := range []signature.SecretKey{testKey(t, "cache.example.org-1", 1), testKey(t, "peerix-test-1", 2)} {
		if err := signing.Sign(signed, k); err != nil {
			t.Fatal(err)
		}
	}
	m["signed"] = signed

	ca := local(hashCA, "source", 1240)
	ca.CA = "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	m["ca"] = ca

	full := local(hashFull, "peerix-everything", 5080)
	full.References = []string{hashFull + "-peerix-everything", hashMinimal + "-hello-2.12.1"}
	full.Deriver = "wwww3pcz10wsmavxvkdbayhqivbghlq8-peerix-everything.drv"
	full.System = "x86_64-linux"
	full.CA = "text:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"
	if err := signing.Sign(full, testKey(t, "peerix-test-1", 2)); err != nil {
		t.Fatal(err)
	}
	m["full"] = full

	// As an upstream cache would have it: compressed, FileHash and
	// FileSize those of the compressed file.
	xz := local(hashXZ, "hello-2.12.1", 226560)
	xz.URL = "nar/0v0v3hrxm6bqj6c1z1rl6ypkdvb1pmd3wmdn07dk39mgbhq5ykz0.nar.xz"
	xz.Compression = "xz"
	xz.FileHash = mustHash(t, "sha256:0v0v3hrxm6bqj6c1z1rl6ypkdvb1pmd3wmdn07dk39mgbhq5ykz0")
	xz.FileSize = 50088
	m["xz"] = xz
	return m
}

func goldenStore(t testing.TB) *fakeStore {
	f := &fakeStore{name: "local", narinfos: map[string]*narinfo.NarInfo{}}
	for _, ni := range goldenNarInfos(t) {
		f.narinfos[filepath.Base(ni.StorePath)[:32]] = ni
	}
	return f
}

// TestNarInfoGolden: GET /local/<hash>.narinfo answers the golden file.
// `go test -run TestNarInfoGolden -update` rewrites them.
func TestNarInfoGolden(t *testing.T) {
	st := goldenStore(t)
	s := &cache.Server{Local: st, StoreDir: "/nix/store", Log: quietLog()}
	for name, ni := range goldenNarInfos(t) {
		t.Run(name, func(t *testing.T) {
			hash := filepath.Base(ni.StorePath)[:32]
			rec := do(t, s, "GET", "/local/"+hash+".narinfo", "192.0.2.7:4444", nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			body := rec.Body.String()
			if ct := rec.Header().Get("Content-Type"); ct != "text/x-nix-narinfo" {
				t.Errorf("Content-Type %q", ct)
			}
			if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length %q for %d bytes", cl, len(body))
			}
			file := filepath.Join("testdata", "golden", name+".narinfo")
			if *update {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if body != string(want) {
				t.Fatalf("body differs from %s:\n got:\n%s\nwant:\n%s", file, body, want)
			}
			checkNarInfoText(t, ni, body)
		})
	}
}

// checkNarInfoText: body is what go-nix writes for ni, and parses back to ni.
func checkNarInfoText(t *testing.T, ni *narinfo.NarInfo, body string) {
	t.Helper()
	if got := string(cache.AppendNarInfo(nil, ni)); got != body {
		t.Errorf("AppendNarInfo differs from the body:\n%s\n%s", got, body)
	}
	if want := ni.String(); body != want {
		t.Errorf("body differs from go-nix's NarInfo.String():\n got:\n%s\nwant:\n%s", body, want)
	}
	back, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("narinfo.Parse: %v\n%s", err, body)
	}
	if back.String() != body {
		t.Errorf("does not round-trip through narinfo.Parse:\n%s\n%s", back, body)
	}
	if err := back.Check(); err != nil {
		t.Errorf("go-nix's Check: %v", err)
	}
	if len(back.References) != len(ni.References) || len(back.Signatures) != len(ni.Signatures) ||
		back.Deriver != ni.Deriver || back.CA != ni.CA || back.NarSize != ni.NarSize || back.StorePath != ni.StorePath {
		t.Errorf("parsed back differently: %+v", back)
	}
}

// TestAppendNarInfoEqualsGoNix covers what the golden files do not: edge
// values, appending to a non-empty buffer.
func TestAppendNarInfoEqualsGoNix(t *testing.T) {
	for name, ni := range goldenNarInfos(t) {
		for _, mod := range []func(*narinfo.NarInfo){
			func(*narinfo.NarInfo) {},
			func(n *narinfo.NarInfo) { n.FileSize = 0 },            // FileHash/FileSize left out
			func(n *narinfo.NarInfo) { n.FileHash = nil },          //
			func(n *narinfo.NarInfo) { n.NarSize = 0 },             //
			func(n *narinfo.NarInfo) { n.References = []string{} }, //
			func(n *narinfo.NarInfo) { n.NarSize = 1<<64 - 1 },     //
		} {
			c := *ni
			mod(&c)
			prefix := []byte("prefix\n")
			got := cache.AppendNarInfo(bytes.Clone(prefix), &c)
			if want := string(prefix) + c.String(); string(got) != want {
				t.Errorf("%s: AppendNarInfo\n%s\ngo-nix\n%s", name, got, want)
			}
		}
	}
}

func BenchmarkNarInfoRequest(b *testing.B) {
	st := goldenStore(b)
	s := &cache.Server{Local: st, StoreDir: "/nix/store", Log: quietLog()}
	r, _ := request(b, "GET", "/local/"+hashSigned+".narinfo", "127.0.0.1:5", nil)
	st.noRecord = true
	b.ReportAllocs()
	for b.Loop() {
		w := discardWriter{h: http.Header{}}
		s.ServeHTTP(&w, r.WithContext(context.Background()))
	}
}

// TestLocalNarInfoFollowsStore: a local narinfo is rendered once for as long
// as the store hands out the same narinfo, but what is served always
// follows the store: a new narinfo for the path (a signature added), a
// path that is gone or no longer shared.
func TestLocalNarInfoFollowsStore(t *testing.T) {
	st := goldenStore(t)
	s := &cache.Server{Local: st, Remote: st, StoreDir: "/nix/store", Log: quietLog()}
	target := "/local/" + hashSigned + ".narinfo"
	first := st.narinfos[hashSigned]
	want := string(cache.AppendNarInfo(nil, first))
	for i := range 3 {
		if rec := do(t, s, "GET", target, "127.0.0.1:5", nil); rec.Code != 200 || rec.Body.String() != want {
			t.Fatalf("request %d: %d\n%s", i, rec.Code, rec.Body)
		}
	}

	changed := *first
	changed.Signatures = append(slices.Clone(first.Signatures), first.Signatures[0])
	changed.Signatures[len(changed.Signatures)-1].Name = "added-later"
	st.narinfos[hashSigned] = &changed
	rec := do(t, s, "GET", target, "127.0.0.1:5", nil)
	if !strings.Contains(rec.Body.String(), "Sig: added-later:") || rec.Body.String() != string(cache.AppendNarInfo(nil, &changed)) {
		t.Fatalf("after the store's narinfo changed: %d\n%s", rec.Code, rec.Body)
	}
	if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(rec.Body.Len()) {
		t.Fatalf("Content-Length %s for %d bytes", cl, rec.Body.Len())
	}

	for _, err := range []error{store.ErrRefused, store.ErrNotFound} {
		st.err = err
		if rec := do(t, s, "GET", target, "127.0.0.1:5", nil); rec.Code != 404 || strings.Contains(rec.Body.String(), "StorePath") {
			t.Fatalf("store answers %v: %d\n%s", err, rec.Code, rec.Body)
		}
	}
	st.err = nil
	st.narinfos[hashSigned] = first
	if rec := do(t, s, "HEAD", target, "127.0.0.1:5", nil); rec.Code != 200 || rec.Body.Len() != 0 ||
		rec.Header().Get("Content-Length") != strconv.Itoa(len(want)) {
		t.Fatalf("HEAD: %d, %d bytes, Content-Length %s", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
	}
	// The same narinfo through the peers' route is rendered the same.
	if rec := do(t, s, "GET", "/"+hashSigned+".narinfo", "127.0.0.1:5", nil); rec.Code != 200 || rec.Body.String() != want {
		t.Fatalf("remote route: %d\n%s", rec.Code, rec.Body)
	}
}
