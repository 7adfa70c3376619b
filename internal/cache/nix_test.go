package cache_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/nixtest"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/trust"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// serveFixture serves the nixtest sample store's nixstore.Local (wrapped by
// wrap, if given) on a real HTTP server.
func serveFixture(t *testing.T, wrap func(store.Store) store.Store) (*nixtest.Sample, *nixstore.Local, *httptest.Server) {
	t.Helper()
	f := nixtest.SharedSample(t)
	l, err := nixstore.Open(f.Store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var st store.Store = l
	if wrap != nil {
		st = wrap(l)
	}
	srv := httptest.NewServer(&cache.Server{Local: st, StoreDir: nixstore.StoreDir, Priority: 30, Log: quietLog()})
	t.Cleanup(srv.Close)
	return f, l, srv
}

func get(t *testing.T, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, body
}

// TestLocalNarInfoMatchesNix: the narinfo served for each fixture path says
// what Nix says about the path, and is exactly go-nix's rendering.
func TestLocalNarInfoMatchesNix(t *testing.T) {
	f, l, srv := serveFixture(t, nil)
	for _, p := range []string{f.Leaf, f.Refs, f.Shapes, f.CA} {
		t.Run(path.Base(p)[33:], func(t *testing.T) {
			nf := nixtest.MustInfo(t, f.Store, p)
			resp, body := get(t, "GET", srv.URL+"/local/"+nixtest.HashPart(p)+".narinfo", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if resp.ContentLength != int64(len(body)) {
				t.Errorf("Content-Length %d for %d bytes", resp.ContentLength, len(body))
			}
			ni, err := narinfo.Parse(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("%v\n%s", err, body)
			}
			if ni.StorePath != p || ni.NarHash.String() != nf.NarHash || ni.NarSize != nf.NarSize ||
				ni.Compression != "none" || ni.FileHash.String() != nf.NarHash || ni.FileSize != nf.NarSize {
				t.Errorf("narinfo\n%s\ndisagrees with Nix: %+v", body, nf)
			}
			var refs []string
			for _, r := range ni.References {
				refs = append(refs, nixstore.StoreDir+"/"+r)
			}
			if !slices.Equal(refs, nf.References) {
				t.Errorf("References %q, Nix says %q", refs, nf.References)
			}
			if (ni.Deriver == "" && nf.Deriver != "") || (ni.Deriver != "" && nixstore.StoreDir+"/"+ni.Deriver != nf.Deriver) {
				t.Errorf("Deriver %q, Nix says %q", ni.Deriver, nf.Deriver)
			}
			var sigs []string
			for _, s := range ni.Signatures {
				sigs = append(sigs, s.String())
			}
			slices.Sort(sigs)
			if !slices.Equal(sigs, nf.Signatures) {
				t.Errorf("Sig %q, Nix says %q", sigs, nf.Signatures)
			}
			if ni.CA != nf.CA {
				t.Errorf("CA %q, Nix says %q", ni.CA, nf.CA)
			}
			switch p {
			case f.Refs:
				if len(ni.References) != 3 || len(ni.Signatures) != 1 || ni.Deriver == "" {
					t.Errorf("refs: want 3 references, a deriver and a signature:\n%s", body)
				}
			case f.CA:
				if ni.CA == "" || ni.Deriver != "" {
					t.Errorf("ca: want a CA and no deriver:\n%s", body)
				}
			}
			// The body is exactly go-nix's rendering of the store's narinfo.
			want, err := l.NarInfo(context.Background(), nixtest.HashPart(p))
			if err != nil {
				t.Fatal(err)
			}
			checkNarInfoText(t, want, string(body))

			head, headBody := get(t, "HEAD", srv.URL+"/local/"+nixtest.HashPart(p)+".narinfo", nil)
			if head.StatusCode != 200 || head.ContentLength != int64(len(body)) || len(headBody) != 0 {
				t.Errorf("HEAD: %d, Content-Length %d, body %d bytes", head.StatusCode, head.ContentLength, len(headBody))
			}
		})
	}
	if resp, _ := get(t, "GET", srv.URL+"/local/00000000000000000000000000000000.narinfo", nil); resp.StatusCode != 404 {
		t.Errorf("absent path: %d", resp.StatusCode)
	}
}

// TestLocalNARMatchesNix: NARs served at both URL forms are `nix store
// dump-path`'s bytes, with the right Content-Length, whole or in ranges.
func TestLocalNARMatchesNix(t *testing.T) {
	f, l, srv := serveFixture(t, nil)
	for _, p := range []string{f.Leaf, f.Refs, f.Shapes, f.CA} {
		t.Run(path.Base(p)[33:], func(t *testing.T) {
			want := nixtest.MustDump(t, f.Store, p)
			size := len(want)
			ni, err := l.NarInfo(context.Background(), nixtest.HashPart(p))
			if err != nil {
				t.Fatal(err)
			}
			if ni.NarSize != uint64(size) {
				t.Fatalf("NarSize %d, Nix's NAR is %d bytes", ni.NarSize, size)
			}
			for _, u := range []string{srv.URL + "/" + ni.URL, srv.URL + "/local/" + ni.URL} {
				resp, body := get(t, "GET", u, nil)
				if resp.StatusCode != 200 || resp.ContentLength != int64(size) || !bytes.Equal(body, want) {
					t.Fatalf("GET %s: %d, Content-Length %d, %d bytes (equal: %v), want %d",
						u, resp.StatusCode, resp.ContentLength, len(body), bytes.Equal(body, want), size)
				}
				if resp.Header.Get("Content-Type") != "application/x-nix-nar" {
					t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
				}
				head, headBody := get(t, "HEAD", u, nil)
				if head.StatusCode != 200 || head.ContentLength != int64(size) || len(headBody) != 0 {
					t.Errorf("HEAD %s: %d, Content-Length %d, %d bytes", u, head.StatusCode, head.ContentLength, len(headBody))
				}
			}

			u := srv.URL + "/local/" + ni.URL
			type rng struct {
				header     string
				status     int
				start, end int
			}
			ranges := []rng{
				{"bytes=0-99", 206, 0, min(100, size)},
				{"bytes=100-", 206, 100, size},
				{"bytes=-50", 206, size - 50, size},
				{fmt.Sprintf("bytes=%d-", size-1), 206, size - 1, size},
				{fmt.Sprintf("bytes=%d-%d", size/3, size/2), 206, size / 3, size/2 + 1},
				{fmt.Sprintf("bytes=%d-", size), 416, 0, 0},
				{fmt.Sprintf("bytes=%d-", size+100), 416, 0, 0},
				{"bytes=0-9,20-29", 200, 0, size},
				{"bytes=nonsense", 200, 0, size},
			}
			for _, off := range []int{1, 7, 8, 9, 56, 57, 120, 121, 128, size / 4, size - 8} {
				ranges = append(ranges, rng{"bytes=" + strconv.Itoa(off) + "-", 206, off, size})
			}
			for _, r := range ranges {
				resp, body := get(t, "GET", u, http.Header{"Range": {r.header}})
				if resp.StatusCode != r.status {
					t.Errorf("Range %s: status %d, want %d", r.header, resp.StatusCode, r.status)
					continue
				}
				if r.status == 416 {
					if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes */%d", size) {
						t.Errorf("Range %s: Content-Range %q", r.header, cr)
					}
					continue
				}
				if !bytes.Equal(body, want[r.start:r.end]) || resp.ContentLength != int64(r.end-r.start) {
					t.Errorf("Range %s: %d bytes (Content-Length %d), want want[%d:%d]", r.header, len(body), resp.ContentLength, r.start, r.end)
				}
				if r.status == 206 {
					if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", r.start, r.end-1, size) {
						t.Errorf("Range %s: Content-Range %q", r.header, cr)
					}
				}
			}

			// A transfer resumed where it broke off gives the whole NAR.
			k := size / 2
			_, first := get(t, "GET", u, http.Header{"Range": {fmt.Sprintf("bytes=0-%d", k-1)}})
			_, rest := get(t, "GET", u, http.Header{"Range": {fmt.Sprintf("bytes=%d-", k)}})
			if !bytes.Equal(append(first, rest...), want) {
				t.Error("two ranges do not make the NAR")
			}

			// A stale URL (same path, another NarHash) is a 404.
			stale := "nar/" + nixtest.HashPart(p) + "-0000000000000000000000000000000000000000000000000000.nar"
			if resp, _ := get(t, "GET", srv.URL+"/"+stale, nil); resp.StatusCode != 404 {
				t.Errorf("stale NAR URL: %d", resp.StatusCode)
			}
		})
	}
	// Malformed local NAR URLs are refused by the store: 400.
	for _, bad := range []string{"/nar/" + nixtest.HashPart(f.Leaf) + ".nar", "/local/nar/x.nar", "/nar/" + strings.Repeat("0", 85) + ".nar"} {
		if resp, _ := get(t, "GET", srv.URL+bad, nil); resp.StatusCode != 400 {
			t.Errorf("GET %s: %d, want 400", bad, resp.StatusCode)
		}
	}
}

// TestNixSubstitutes: Nix itself copies a closure from /local, checking the
// daemon's signatures (require-sigs) and every NarHash.
func TestNixSubstitutes(t *testing.T) {
	f := nixtest.SharedSample(t)
	key, err := signing.LoadSecretKeyFile(f.Key.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	_, _, srv := serveFixture(t, func(s store.Store) store.Store { return signing.NewStore(s, key) })
	ctx := context.Background()
	copyFrom := func(trustedKey, to, path string) ([]byte, error) {
		return nixtest.Output(ctx, "nix", "copy", "--option", "require-sigs", "true",
			"--option", "trusted-public-keys", trustedKey, "--from", srv.URL+"/local", "--to", to, path)
	}

	// First, that Nix does check: trusting another key, it refuses.
	other, _, err := signing.GenerateKeyPair("someone-else-1")
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := signing.ParseSecretKey(other)
	if _, err := copyFrom(otherKey.ToPublicKey().String(), nixtest.TempStore(t, "refused"), f.Leaf); err == nil {
		t.Fatal("nix copy accepted paths signed by an untrusted key: the test below proves nothing")
	}

	dst := nixtest.TempStore(t, "dst")
	for _, p := range []string{f.Refs, f.Shapes, f.CA} {
		if out, err := copyFrom(f.Key.Public, dst, p); err != nil {
			t.Fatalf("nix copy from the cache: %v\n%s", err, out)
		}
	}
	for _, p := range []string{f.Leaf, f.Refs, f.Shapes, f.CA} {
		want, got := nixtest.MustInfo(t, f.Store, p), nixtest.MustInfo(t, dst, p)
		if got.NarHash != want.NarHash || got.NarSize != want.NarSize || !slices.Equal(got.References, want.References) {
			t.Errorf("%s copied as %+v, want %+v", p, got, want)
		}
		if len(got.Signatures) == 0 {
			t.Errorf("%s copied without signatures", p)
		}
	}
	// Nix's own check of what it received.
	if out, err := nixtest.Output(ctx, "nix", "store", "verify", "--store", dst, "--no-trust", "--sigs-needed", "0", "-r", f.Refs); err != nil {
		t.Fatalf("nix store verify: %v\n%s", err, out)
	}
}

// localChain is the daemon's local serving chain on the sample store: the
// store, the filter (patterns, the local mode's default), our signature,
// the HTTP handler.
func localChain(b *testing.B) (*nixtest.Sample, *cache.Server) {
	f := nixtest.SharedSample(b)
	l, err := nixstore.Open(f.Store)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	filter, err := trust.NewFilter(trust.FilterOptions{Mode: trust.ModePatterns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { filter.Close() })
	key, err := signing.LoadSecretKeyFile(f.Key.SecretFile)
	if err != nil {
		b.Fatal(err)
	}
	st := signing.NewStore(filter.Wrap(l), key)
	return f, &cache.Server{Local: st, StoreDir: nixstore.StoreDir, Log: quietLog()}
}

// benchmarkRequests serves target over and over in-process and reports
// requests per second of handler time, as a regression guard for the
// per-request cost (docs/benchmarks.md, issue 15's local rows).
func benchmarkRequests(b *testing.B, s *cache.Server, target string, wantBytes int) {
	r, _ := request(b, "GET", target, "127.0.0.1:5", nil)
	r = r.WithContext(context.Background())
	w := &countingWriter{h: http.Header{}}
	s.ServeHTTP(w, r)
	if w.code != 0 && w.code != 200 || w.n != wantBytes {
		b.Fatalf("GET %s: status %d, %d bytes, want 200 and %d", target, w.code, w.n, wantBytes)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		w.code, w.n = 0, 0
		s.ServeHTTP(w, r)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkLocalNarInfo: a signed narinfo of the local store, through the
// filter and the signing store, as `peerix serve --mode local` answers it.
func BenchmarkLocalNarInfo(b *testing.B) {
	f, s := localChain(b)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/local/"+nixtest.HashPart(f.Leaf)+".narinfo", nil))
	benchmarkRequests(b, s, "/local/"+nixtest.HashPart(f.Leaf)+".narinfo", rec.Body.Len())
}

// BenchmarkLocalSmallNAR: the NAR of a small path (a directory and a file).
func BenchmarkLocalSmallNAR(b *testing.B) {
	f, s := localChain(b)
	ni, err := s.Local.NarInfo(context.Background(), nixtest.HashPart(f.Leaf))
	if err != nil {
		b.Fatal(err)
	}
	benchmarkRequests(b, s, "/local/"+ni.URL, int(ni.NarSize))
}

// countingWriter is a ResponseWriter that counts the body's bytes.
type countingWriter struct {
	h    http.Header
	code int
	n    int
}

func (c *countingWriter) Header() http.Header { return c.h }
func (c *countingWriter) Write(b []byte) (int, error) {
	c.n += len(b)
	return len(b), nil
}
func (c *countingWriter) WriteHeader(code int) { c.code = code }
