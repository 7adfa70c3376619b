package cache_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/compress"
	"github.com/peerix/peerix/internal/store"
)

const (
	localHash  = "0c0rb9s3h8cfihpfgl1qvlqbiz1s9f4w"
	remoteHash = "1m6xhzbkkmdvqm8gjvy1l8gkaclcfz4i"
	// localNAR is of the local NAR URL shape: one segment under nar/.
	localNAR  = "nar/" + localHash + "-1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0.nar"
	remoteNAR = "nar/lan/192.168.1.20/12304/" + remoteHash + "-1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0.nar"
	p2pNAR    = "nar/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp/" + remoteHash + ".nar"
)

var (
	loopbackAddrs = []string{"127.0.0.1:40000", "[::1]:40000", "127.8.9.10:1", "[::ffff:127.0.0.1]:5"}
	remoteAddrs   = []string{"192.168.1.20:40000", "[2001:db8::1]:40000", "10.0.0.1:1", "[::ffff:10.0.0.1]:5", "0.0.0.0:1", "", "garbage", "127.0.0.1"}
)

// narData is a NAR-sized byte pattern whose every window is distinct.
func narData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

type testServer struct {
	s             *cache.Server
	local, remote *fakeStore
	localNARData  []byte
	remoteNARData []byte
	events        *[]cache.Event
}

func newTestServer() *testServer {
	ts := &testServer{localNARData: narData(1000), remoteNARData: narData(3000)}
	localNI := &narinfo.NarInfo{StorePath: "/nix/store/" + localHash + "-local", URL: localNAR, Compression: "none", NarSize: 1000}
	remoteNI := &narinfo.NarInfo{StorePath: "/nix/store/" + remoteHash + "-remote", URL: remoteNAR, Compression: "none", NarSize: 3000}
	ts.local = &fakeStore{name: "local",
		narinfos: map[string]*narinfo.NarInfo{localHash: localNI},
		nars:     map[string][]byte{localNAR: ts.localNARData}}
	ts.remote = &fakeStore{name: "remote",
		narinfos: map[string]*narinfo.NarInfo{remoteHash: remoteNI},
		nars:     map[string][]byte{remoteNAR: ts.remoteNARData, p2pNAR: ts.remoteNARData}}
	var mu sync.Mutex
	events := []cache.Event{}
	ts.events = &events
	ts.s = &cache.Server{
		Local: ts.local, Remote: ts.remote, StoreDir: "/nix/store", Priority: 41,
		Next: nextHandler, Log: quietLog(),
		Observe: func(ev cache.Event) { mu.Lock(); events = append(events, ev); mu.Unlock() },
	}
	return ts
}

// TestRoutes: every route of the SPEC's table, from this machine and from
// elsewhere.
func TestRoutes(t *testing.T) {
	type want struct {
		loopback, remote int
		store            string // "local", "remote", "next" or "" (none)
	}
	routes := []struct {
		method, target string
		want
	}{
		{"GET", "/nix-cache-info", want{200, 403, ""}},
		{"HEAD", "/nix-cache-info", want{200, 403, ""}},
		{"GET", "/" + remoteHash + ".narinfo", want{200, 403, "remote"}},
		{"HEAD", "/" + remoteHash + ".narinfo", want{200, 403, "remote"}},
		// The remote route never serves local paths (Nix has those already).
		{"GET", "/" + localHash + ".narinfo", want{404, 403, "remote"}},
		{"GET", "/" + remoteNAR, want{200, 403, "remote"}},
		{"HEAD", "/" + remoteNAR, want{200, 403, "remote"}},
		{"GET", "/" + p2pNAR, want{200, 403, "remote"}},
		{"GET", "/local/nix-cache-info", want{200, 200, ""}},
		{"GET", "/local/" + localHash + ".narinfo", want{200, 200, "local"}},
		{"HEAD", "/local/" + localHash + ".narinfo", want{200, 200, "local"}},
		{"GET", "/local/" + remoteHash + ".narinfo", want{404, 404, "local"}},
		{"GET", "/" + localNAR, want{200, 200, "local"}},
		{"HEAD", "/" + localNAR, want{200, 200, "local"}},
		{"GET", "/local/" + localNAR, want{200, 200, "local"}},
		{"HEAD", "/local/" + localNAR, want{200, 200, "local"}},
		// Peers' NAR URLs are never served under /local/.
		{"GET", "/local/" + remoteNAR, want{404, 404, ""}},
		{"GET", "/local/" + p2pNAR, want{404, 404, ""}},
		// Operator routes go to the daemon's handler, which decides.
		{"GET", "/health", want{200, 200, "next"}},
		{"GET", "/metrics", want{200, 200, "next"}},
		{"GET", "/dashboard", want{200, 200, "next"}},
		{"GET", "/api/status", want{200, 200, "next"}},
		{"GET", "/api/peers", want{200, 200, "next"}},
	}
	for _, rt := range routes {
		for _, loop := range []bool{true, false} {
			addrs, wantCode := loopbackAddrs, rt.loopback
			if !loop {
				addrs, wantCode = remoteAddrs, rt.remote
			}
			for _, addr := range addrs {
				t.Run(fmt.Sprintf("%s %s from %s", rt.method, rt.target, addr), func(t *testing.T) {
					ts := newTestServer()
					rec := do(t, ts.s, rt.method, rt.target, addr, nil)
					if rec.Code != wantCode {
						t.Fatalf("status %d, want %d: %s", rec.Code, wantCode, rec.Body)
					}
					if rec.Code == 403 {
						if len(ts.local.Calls())+len(ts.remote.Calls()) != 0 || rec.Header().Get("X-Next") != "" {
							t.Fatalf("a refused request reached a store: local %v remote %v", ts.local.Calls(), ts.remote.Calls())
						}
						return
					}
					gotLocal, gotRemote, gotNext := len(ts.local.Calls()) > 0, len(ts.remote.Calls()) > 0, rec.Header().Get("X-Next") != ""
					if gotLocal != (rt.store == "local") || gotRemote != (rt.store == "remote") || gotNext != (rt.store == "next") {
						t.Fatalf("served by local=%v remote=%v next=%v, want %s", gotLocal, gotRemote, gotNext, rt.store)
					}
					if rt.method == "HEAD" && rec.Body.Len() != 0 && !strings.HasSuffix(rt.target, "nix-cache-info") {
						t.Errorf("HEAD answered a body of %d bytes", rec.Body.Len())
					}
				})
			}
		}
	}
}

func TestNixCacheInfo(t *testing.T) {
	ts := newTestServer()
	for _, target := range []string{"/nix-cache-info", "/local/nix-cache-info"} {
		rec := do(t, ts.s, "GET", target, "127.0.0.1:1", nil)
		if rec.Code != 200 {
			t.Fatalf("%s: %d", target, rec.Code)
		}
		fields := map[string]string{}
		for _, line := range strings.Split(strings.TrimSuffix(rec.Body.String(), "\n"), "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				t.Fatalf("%s: line %q", target, line)
			}
			fields[k] = v
		}
		if fields["StoreDir"] != "/nix/store" || fields["WantMassQuery"] != "1" || fields["Priority"] != "41" || len(fields) != 3 {
			t.Errorf("%s: %q", target, rec.Body.String())
		}
		if ct := rec.Header().Get("Content-Type"); ct != "text/x-nix-cache-info" {
			t.Errorf("%s: Content-Type %q", target, ct)
		}
	}
}

// TestHeadNarInfo over a real connection: HEAD answers 200 with the
// Content-Length a GET has, and no body.
func TestHeadNarInfo(t *testing.T) {
	ts := newTestServer()
	srv := httptest.NewServer(ts.s)
	defer srv.Close()
	for _, path := range []string{"/local/" + localHash + ".narinfo", "/" + remoteHash + ".narinfo"} {
		get, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(get.Body)
		get.Body.Close()
		resp, err := http.Head(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		headBody, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || get.StatusCode != 200 {
			t.Fatalf("%s: HEAD %d, GET %d", path, resp.StatusCode, get.StatusCode)
		}
		if resp.ContentLength != int64(len(body)) || len(body) == 0 {
			t.Errorf("%s: HEAD Content-Length %d, GET body %d bytes", path, resp.ContentLength, len(body))
		}
		if len(headBody) != 0 {
			t.Errorf("%s: HEAD body %q", path, headBody)
		}
		if resp.Header.Get("Content-Type") != "text/x-nix-narinfo" {
			t.Errorf("%s: Content-Type %q", path, resp.Header.Get("Content-Type"))
		}
	}
	// Absent: 404 for HEAD too.
	resp, err := http.Head(srv.URL + "/local/" + remoteHash + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("HEAD of an absent path: %d", resp.StatusCode)
	}
}

var errBroken = errors.New("database on fire")

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err                              error
		localNarInfo, remoteNarInfo, nar int
		remoteNAR                        int
	}{
		{store.ErrNotFound, 404, 404, 404, 404},
		{fmt.Errorf("x: %w", store.ErrNotFound), 404, 404, 404, 404},
		{store.ErrRefused, 404, 404, 404, 404},
		{fmt.Errorf("filter: %w", store.ErrRefused), 404, 404, 404, 404},
		{store.ErrBadRequest, 400, 400, 400, 400},
		{fmt.Errorf("url: %w", store.ErrBadRequest), 400, 400, 400, 400},
		{errBroken, 500, 404, 500, 500},
		{context.DeadlineExceeded, 500, 404, 500, 500},
		{fmt.Errorf("peers: %w", errBroken), 500, 404, 500, 500},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			ts := newTestServer()
			ts.local.err, ts.remote.err = tc.err, tc.err
			check := func(target string, want int) {
				t.Helper()
				for _, method := range []string{"GET", "HEAD"} {
					rec := do(t, ts.s, method, target, "127.0.0.1:1", nil)
					if rec.Code != want {
						t.Errorf("%s %s: %d, want %d", method, target, rec.Code, want)
					}
				}
			}
			check("/local/"+localHash+".narinfo", tc.localNarInfo)
			check("/"+remoteHash+".narinfo", tc.remoteNarInfo)
			check("/"+localNAR, tc.nar)
			check("/local/"+localNAR, tc.nar)
			check("/"+remoteNAR, tc.remoteNAR)
			for _, rangeHeader := range []string{"bytes=-10", "bytes=10-", "bytes=-0"} {
				rec := do(t, ts.s, "GET", "/"+localNAR, "127.0.0.1:1", http.Header{"Range": {rangeHeader}})
				if rec.Code != tc.nar {
					t.Errorf("Range %s: %d, want %d", rangeHeader, rec.Code, tc.nar)
				}
			}
		})
	}

	// ErrRefused looks exactly like ErrNotFound from outside, on every
	// route a peer may use, with and without a Range, with and without the
	// block format asked for.
	for _, target := range []string{"/local/" + localHash + ".narinfo", "/" + localNAR, "/local/" + localNAR} {
		for _, method := range []string{"GET", "HEAD"} {
			for _, rng := range []string{"", "bytes=10-", "bytes=-10", "bytes=5000-"} {
				for _, enc := range []string{"", cache.BlocksEncoding} {
					answer := func(err error) (int, string, http.Header) {
						ts := newTestServer()
						ts.local.err = err
						hdr := http.Header{"Range": {rng}}
						if enc != "" {
							hdr.Set(cache.AcceptEncodingHeader, enc)
						}
						rec := do(t, ts.s, method, target, "192.0.2.1:1", hdr)
						return rec.Code, rec.Body.String(), rec.Header()
					}
					c1, b1, h1 := answer(store.ErrNotFound)
					c2, b2, h2 := answer(fmt.Errorf("path is private: %w", store.ErrRefused))
					if c1 != 404 || c1 != c2 || b1 != b2 || fmt.Sprint(h1) != fmt.Sprint(h2) {
						t.Errorf("%s %s (Range %q, encoding %q): refused differs from not found:\n%d %q %v\n%d %q %v", method, target, rng, enc, c1, b1, h1, c2, b2, h2)
					}
				}
			}
		}
	}

	// No remote store (local mode): 404s, not 5xx.
	ts := newTestServer()
	ts.s.Remote = nil
	for _, target := range []string{"/" + remoteHash + ".narinfo", "/" + remoteNAR} {
		if rec := do(t, ts.s, "GET", target, "127.0.0.1:1", nil); rec.Code != 404 {
			t.Errorf("%s without a remote store: %d", target, rec.Code)
		}
	}
}

// TestBadInput: what no legitimate cache URL looks like is refused before
// any store is asked.
func TestBadInput(t *testing.T) {
	h := localHash
	long := "/local/nar/" + strings.Repeat("a", 2048) + ".nar"
	// Clean paths that are no cache route: the operator handler decides.
	delegated := map[string]bool{"absolute store path": true, "upper NARINFO": true, "double local": true, "narinfo dir": true}
	for _, tc := range []struct {
		name, method, target string
		want                 []int
	}{
		{"31 chars", "GET", "/local/" + h[:31] + ".narinfo", []int{400}},
		{"33 chars", "GET", "/local/" + h + "0.narinfo", []int{400}},
		{"31 chars remote", "GET", "/" + h[:31] + ".narinfo", []int{400}},
		{"33 chars remote", "GET", "/" + h + "a.narinfo", []int{400}},
		{"e", "GET", "/local/" + h[:31] + "e.narinfo", []int{400}},
		{"o", "GET", "/local/" + h[:31] + "o.narinfo", []int{400}},
		{"u", "GET", "/local/" + h[:31] + "u.narinfo", []int{400}},
		{"t", "GET", "/local/" + h[:31] + "t.narinfo", []int{400}},
		{"upper case", "GET", "/local/" + strings.ToUpper(h) + ".narinfo", []int{400}},
		{"upper case remote", "GET", "/" + strings.ToUpper(h) + ".narinfo", []int{400}},
		{"empty hash", "GET", "/local/.narinfo", []int{400}},
		{"dotdot narinfo", "GET", "/local/../" + h + ".narinfo", []int{400, 404}},
		{"dotdot nar", "GET", "/nar/../" + localNAR, []int{400}},
		{"dotdot local nar", "GET", "/local/nar/../../etc/passwd", []int{400}},
		{"dotdot end", "GET", "/nar/..", []int{400}},
		{"dot segment", "GET", "/nar/./" + localNAR[4:], []int{400}},
		{"dotdot next", "GET", "/local/../health", []int{400, 404}},
		{"%2f", "GET", "/local/nar/" + h + "%2f" + localNAR[37:], []int{400}},
		{"%2F nar", "GET", "/nar/%2Fetc%2Fpasswd", []int{400}},
		{"%2e%2e", "GET", "/nar/%2e%2e/%2e%2e/etc/passwd", []int{400}},
		{"%00 narinfo", "GET", "/local/" + h[:31] + "%00.narinfo", []int{400}},
		{"%00 nar", "GET", "/" + localNAR + "%00", []int{400}},
		{"encoded letter", "GET", "/local/%30" + h[1:] + ".narinfo", []int{400}},
		{"encoded next", "GET", "/%68ealth", []int{400, 404}},
		{"//", "GET", "//" + localNAR, []int{400, 404}},
		{"// inside nar", "GET", "/nar//" + localNAR[4:], []int{400}},
		{"// after local", "GET", "/local//" + h + ".narinfo", []int{400, 404}},
		{"// nix store", "GET", "/nar//nix/store/" + h + "-x", []int{400}},
		{"backslash", "GET", "/local/" + h[:31] + "\\.narinfo", []int{400}},
		{"backslash nar", "GET", "/nar/..\\..\\etc\\passwd", []int{400}},
		{"absolute store path", "GET", "/local/nix/store/" + h + ".narinfo", []int{404}},
		{"store path as nar", "GET", "/local/nar/nix/store/" + h + "-x", []int{404}},
		{"NUL raw", "GET", "/local/" + h[:31] + "\x00.narinfo", []int{400}},
		{"control raw", "GET", "/local/" + h[:31] + "\x01.narinfo", []int{400}},
		{"DEL raw", "GET", "/local/" + h[:31] + "\x7f.narinfo", []int{400}},
		{"tab", "GET", "/local/" + h[:31] + "\t.narinfo", []int{400}},
		{"2 KiB URI", "GET", long, []int{414}},
		{"2 KiB remote URI", "GET", "/nar/lan/" + strings.Repeat("a", 2048), []int{414}},
		{"2 KiB query", "GET", "/local/" + h + ".narinfo?" + strings.Repeat("a", 2048), []int{414}},
		{"POST", "POST", "/local/" + h + ".narinfo", []int{405}},
		{"PUT", "PUT", "/" + localNAR, []int{405}},
		{"DELETE", "DELETE", "/local/" + localNAR, []int{405}},
		{"OPTIONS", "OPTIONS", "/local/nix-cache-info", []int{405}},
		{"POST remote", "POST", "/" + h + ".narinfo", []int{405}},
		{"upper NARINFO", "GET", "/local/" + h + ".NARINFO", []int{404}},
		{"double local", "GET", "/local/local/" + h + ".narinfo", []int{404}},
		{"narinfo dir", "GET", "/local/x/" + h + ".narinfo", []int{404}},
	} {
		for _, addr := range []string{"127.0.0.1:1", "203.0.113.9:1"} {
			t.Run(tc.name+" from "+addr, func(t *testing.T) {
				ts := newTestServer()
				ts.s.Next = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("X-Next", "1")
					http.NotFound(w, r)
				})
				rec := do(t, ts.s, tc.method, tc.target, addr, nil)
				want := tc.want
				if addr != "127.0.0.1:1" && rec.Code == 403 {
					// A remote route from elsewhere may be refused first.
					want = append(want, 403)
				}
				if !slices.Contains(want, rec.Code) {
					t.Fatalf("status %d, want one of %v", rec.Code, want)
				}
				if c := append(ts.local.Calls(), ts.remote.Calls()...); len(c) != 0 {
					t.Fatalf("reached a store: %v", c)
				}
				if (rec.Header().Get("X-Next") != "") != delegated[tc.name] {
					t.Fatalf("reached the operator handler: %v, want %v", rec.Header().Get("X-Next") != "", delegated[tc.name])
				}
				if rec.Code == 405 && rec.Header().Get("Allow") != "GET, HEAD" {
					t.Errorf("405 with Allow %q", rec.Header().Get("Allow"))
				}
			})
		}
	}

	// Exactly at the limit is fine.
	ts := newTestServer()
	target := "/local/" + h + ".narinfo?"
	target += strings.Repeat("a", cache.MaxURILength-len(target))
	if rec := do(t, ts.s, "GET", target, "127.0.0.1:1", nil); rec.Code != 200 {
		t.Fatalf("URI of %d bytes: %d", len(target), rec.Code)
	}
}

// TestBadInputOverTheWire sends raw request lines to a real server, where
// net/http parses them first.
func TestBadInputOverTheWire(t *testing.T) {
	ts := newTestServer()
	ts.s.Next = nil
	srv := httptest.NewServer(ts.s)
	defer srv.Close()
	for _, tc := range []struct {
		target string
		want   []int
	}{
		{"/local/" + localHash + ".narinfo", []int{200}},
		{"/local/../" + localHash + ".narinfo", []int{400, 404}},
		{"/nar/../../etc/passwd", []int{400}},
		{"/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd", []int{400}},
		{"//" + localNAR, []int{400, 404}},
		{"/local/" + localHash[:31] + "\\.narinfo", []int{400}},
		{"/local/" + localHash[:31] + "\x00.narinfo", []int{400}},
		{"http://evil.example/local/" + localHash + ".narinfo", []int{200}}, // absolute-form: the path is what counts
		{"http://evil.example/../../etc/passwd", []int{400, 404}},
		{"*", []int{400, 404}},
		{"/local/" + strings.Repeat("x", 2048), []int{414}},
	} {
		code := rawRequest(t, srv.Listener.Addr().String(), "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if !slices.Contains(tc.want, code) {
			t.Errorf("GET %q: %d, want one of %v", tc.target, code, tc.want)
		}
	}
	if c := ts.local.Calls(); len(c) != 2 {
		t.Errorf("the store was asked %v; want only the two valid requests", c)
	}
}

func rawRequest(t *testing.T, addr, req string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRange(t *testing.T) {
	ts := newTestServer()
	data := ts.localNARData
	size := len(data)
	for _, tc := range []struct {
		rng          string
		status       int
		start, end   int // expected body data[start:end]
		contentRange string
	}{
		{"", 200, 0, size, ""},
		{"bytes=0-99", 206, 0, 100, "bytes 0-99/1000"},
		{"bytes=100-", 206, 100, size, "bytes 100-999/1000"},
		{"bytes=-50", 206, 950, size, "bytes 950-999/1000"},
		{"bytes=0-0", 206, 0, 1, "bytes 0-0/1000"},
		{"bytes=999-", 206, 999, size, "bytes 999-999/1000"},
		{"bytes=999-999", 206, 999, size, "bytes 999-999/1000"},
		{"bytes=990-5000", 206, 990, size, "bytes 990-999/1000"},
		{"bytes=500-599", 206, 500, 600, "bytes 500-599/1000"},
		{"bytes=0-", 200, 0, size, ""},
		{"bytes=0-999", 200, 0, size, ""},
		{"bytes=-1000", 200, 0, size, ""},
		{"bytes=-5000", 200, 0, size, ""},
		// Unsatisfiable.
		{"bytes=1000-", 416, 0, 0, "bytes */1000"},
		{"bytes=1000-2000", 416, 0, 0, "bytes */1000"},
		{"bytes=5000-", 416, 0, 0, "bytes */1000"},
		{"bytes=-0", 416, 0, 0, "bytes */1000"},
		// Several ranges: the whole NAR.
		{"bytes=0-99,200-299", 200, 0, size, ""},
		{"bytes=0-1,-5", 200, 0, size, ""},
		// Malformed: ignored.
		{"bytes=abc", 200, 0, size, ""},
		{"bytes=5-1", 200, 0, size, ""},
		{"bytes=", 200, 0, size, ""},
		{"bytes=-", 200, 0, size, ""},
		{"bytes=--5", 200, 0, size, ""},
		{"bytes=-5-", 200, 0, size, ""},
		{"items=0-5", 200, 0, size, ""},
		{"bytes 0-5", 200, 0, size, ""},
		{"bytes=99999999999999999999-", 200, 0, size, ""},
	} {
		for _, target := range []string{"/" + localNAR, "/local/" + localNAR} {
			t.Run(target[:6]+" "+tc.rng, func(t *testing.T) {
				var hdr http.Header
				if tc.rng != "" {
					hdr = http.Header{"Range": {tc.rng}}
				}
				rec := do(t, ts.s, "GET", target, "198.51.100.3:1", hdr)
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d: %q", rec.Code, tc.status, rec.Body.String())
				}
				if got := rec.Header().Get("Content-Range"); got != tc.contentRange {
					t.Errorf("Content-Range %q, want %q", got, tc.contentRange)
				}
				if tc.status == 416 {
					return
				}
				if !slices.Equal(rec.Body.Bytes(), data[tc.start:tc.end]) {
					t.Errorf("body of %d bytes, want data[%d:%d]", rec.Body.Len(), tc.start, tc.end)
				}
				if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(tc.end-tc.start) {
					t.Errorf("Content-Length %q, want %d", cl, tc.end-tc.start)
				}
				if rec.Header().Get("Accept-Ranges") != "bytes" {
					t.Errorf("Accept-Ranges %q", rec.Header().Get("Accept-Ranges"))
				}
				if rec.Header().Get("Content-Type") != "application/x-nix-nar" {
					t.Errorf("Content-Type %q", rec.Header().Get("Content-Type"))
				}

				// HEAD: the same headers, no body.
				head := do(t, ts.s, "HEAD", target, "198.51.100.3:1", hdr)
				if head.Code != rec.Code || head.Body.Len() != 0 ||
					head.Header().Get("Content-Length") != rec.Header().Get("Content-Length") ||
					head.Header().Get("Content-Range") != rec.Header().Get("Content-Range") {
					t.Errorf("HEAD: %d, %d bytes, %v", head.Code, head.Body.Len(), head.Header())
				}
			})
		}
	}
}

// TestBrokenTransfer: a NAR stream that fails part-way must reach the
// client as a broken transfer, never as a complete-looking short body.
func TestBrokenTransfer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failAfter int64
		shortBy   int64
		rng       string
		unknown   bool // size unknown: chunked, where only an abort shows the break
	}{
		{"error midway", 500, 0, "", false},
		{"error at once", 1, 0, "", false},
		{"error in range", 600, 0, "bytes=100-899", false},
		{"error in open range", 600, 0, "bytes=100-", false},
		{"clean EOF short", 0, 300, "", false},
		{"clean EOF short in range", 0, 300, "bytes=100-899", false},
		{"clean EOF one byte short", 0, 1, "", false},
		{"chunked error midway", 500, 0, "", true},
		{"chunked error at once", 1, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer()
			ts.local.failAfter, ts.local.shortBy, ts.local.unknownSize = tc.failAfter, tc.shortBy, tc.unknown
			srv := httptest.NewServer(ts.s)
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+"/"+localNAR, nil)
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				return // broken before the headers: fine
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("status %d, a clean body of %d bytes (Content-Length %d) from a stream that failed",
					resp.StatusCode, len(body), resp.ContentLength)
			}
			if resp.ContentLength >= 0 && int64(len(body)) >= resp.ContentLength {
				t.Fatalf("got %d bytes of %d", len(body), resp.ContentLength)
			}
			if tc.unknown && resp.ContentLength != -1 {
				t.Fatalf("Content-Length %d for a NAR of unknown size", resp.ContentLength)
			}
		})
	}
}

func TestObserve(t *testing.T) {
	ts := newTestServer()
	do(t, ts.s, "GET", "/local/"+localHash+".narinfo", "192.0.2.1:1", nil)
	do(t, ts.s, "GET", "/"+remoteHash+".narinfo", "127.0.0.1:1", nil)
	do(t, ts.s, "GET", "/local/"+remoteHash+".narinfo", "192.0.2.1:1", nil)
	do(t, ts.s, "GET", "/"+localNAR, "192.0.2.1:1", http.Header{"Range": {"bytes=100-"}})
	do(t, ts.s, "GET", "/"+remoteNAR, "127.0.0.1:1", nil)
	want := []cache.Event{
		{Route: cache.RouteLocalNarInfo, Hash: localHash, Status: 200},
		{Route: cache.RouteRemoteNarInfo, Hash: remoteHash, Status: 200},
		{Route: cache.RouteLocalNarInfo, Hash: remoteHash, Status: 404},
		{Route: cache.RouteLocalNAR, URL: localNAR, Status: 206, Bytes: 900},
		{Route: cache.RouteRemoteNAR, URL: remoteNAR, Status: 200, Bytes: 3000},
	}
	if !slices.Equal(*ts.events, want) {
		t.Fatalf("events\n%+v\nwant\n%+v", *ts.events, want)
	}
}

// notFoundStore answers every request with ErrNotFound.
type notFoundStore struct{}

func (notFoundStore) NarInfo(context.Context, string) (*narinfo.NarInfo, error) {
	return nil, store.ErrNotFound
}
func (notFoundStore) NAR(context.Context, string, int64) (*store.NAR, error) {
	return nil, store.ErrNotFound
}

// FuzzRoute: no request path makes ServeHTTP panic or answer 5xx when the
// stores simply do not have the path.
func FuzzRoute(f *testing.F) {
	for _, s := range []string{
		"/nix-cache-info", "/local/nix-cache-info", "/" + localHash + ".narinfo", "/local/" + localHash + ".narinfo",
		"/" + localNAR, "/local/" + localNAR, "/" + remoteNAR, "/local/" + p2pNAR, "/nar/", "/local/nar/", "/nar",
		"/local/", "/local", "/", "//", "/nar/..", "/local/../x.narinfo", "/%2e%2e/", "/nar/%00", "*",
		"http://x/local/nix-cache-info", "/.narinfo", "/local/.narinfo", "/nar/lan", "/nar/lan/",
	} {
		f.Add(s, byte(0), true)
		f.Add(s, byte(1), false)
	}
	methods := []string{"GET", "HEAD", "POST", "PUT", "OPTIONS", "DELETE", "CONNECT", "get"}
	s := &cache.Server{Local: notFoundStore{}, Remote: notFoundStore{}, StoreDir: "/nix/store", Log: quietLog()}
	f.Fuzz(func(t *testing.T, target string, method byte, loopback bool) {
		if strings.ContainsAny(target, " \r\n") {
			return // not one request target
		}
		addr := "203.0.113.5:1"
		if loopback {
			addr = "127.0.0.1:1"
		}
		for _, rng := range []string{"", "bytes=5-", "bytes=-3"} {
			var hdr http.Header
			if rng != "" {
				hdr = http.Header{"Range": {rng}}
			}
			rec := do(t, s, methods[int(method)%len(methods)], target, addr, hdr)
			if rec.Code >= 500 {
				t.Fatalf("%s %q: %d", methods[int(method)%len(methods)], target, rec.Code)
			}
			if rec.Code == 200 {
				r, _ := request(t, "GET", target, addr, nil)
				if p := r.URL.Path; p != "/local/nix-cache-info" && !(loopback && p == "/nix-cache-info") {
					t.Fatalf("%q: 200 from stores that hold nothing", target)
				}
			}
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-99", "bytes=100-", "bytes=-50", "bytes=-0", "bytes=0-99,200-299",
		"bytes=abc", "bytes=5-1", "bytes= 1-2 ", "bytes=+1-+2", "bytes=9223372036854775807-", "bytes=-9223372036854775808"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		start, end, suffix, err := cache.ParseRange(h)
		if h == "" && (err != nil || start != 0 || end != -1 || suffix != 0) {
			t.Fatalf("empty header: %d %d %d %v", start, end, suffix, err)
		}
		if err != nil {
			if start != 0 || end != -1 || suffix != 0 {
				t.Fatalf("%q: error %v with range %d-%d suffix %d; want the whole NAR", h, err, start, end, suffix)
			}
			return
		}
		switch {
		case suffix > 0:
			if start != 0 || end != -1 {
				t.Fatalf("%q: suffix %d with %d-%d", h, suffix, start, end)
			}
		case suffix == 0:
			if start < 0 || (end != -1 && end < start) {
				t.Fatalf("%q: range %d-%d", h, start, end)
			}
		default:
			t.Fatalf("%q: negative suffix %d", h, suffix)
		}
		if h != "" && (!strings.HasPrefix(h, "bytes=") || strings.Contains(h, ",")) {
			t.Fatalf("%q accepted", h)
		}
	})
}

// A 404 to a peer leaves no sooner than MissFloor after its request came:
// a refused path (a little more work) takes as long as an absent one. This
// machine's Nix is not delayed.
func TestMissPadding(t *testing.T) {
	old := cache.MissFloor
	cache.MissFloor = 50 * time.Millisecond
	defer func() { cache.MissFloor = old }()
	for _, err := range []error{store.ErrNotFound, store.ErrRefused} {
		for _, target := range []string{"/local/" + localHash + ".narinfo", "/" + localNAR} {
			ts := newTestServer()
			ts.local.err = err
			start := time.Now()
			if rec := do(t, ts.s, "GET", target, "192.0.2.1:1", nil); rec.Code != 404 {
				t.Fatalf("%s: %d", target, rec.Code)
			}
			if took := time.Since(start); took < cache.MissFloor {
				t.Errorf("%v for %s from a peer answered after %v, want at least %v", err, target, took, cache.MissFloor)
			}
			start = time.Now()
			do(t, ts.s, "GET", target, "127.0.0.1:1", nil)
			if took := time.Since(start); took >= cache.MissFloor {
				t.Errorf("%v for %s from loopback answered after %v: padded", err, target, took)
			}
		}
	}
	// Hits are not padded.
	ts := newTestServer()
	start := time.Now()
	if rec := do(t, ts.s, "GET", "/local/"+localHash+".narinfo", "192.0.2.1:1", nil); rec.Code != 200 || time.Since(start) >= cache.MissFloor {
		t.Errorf("a hit: %d after %v", rec.Code, time.Since(start))
	}
}

// A peer that takes the block format gets it (the first block tried
// compressed, so text shrinks), with no Content-Length; any other client
// gets the raw bytes with their Content-Length.
func TestBlocksForPeers(t *testing.T) {
	ts := newTestServer()
	text := bytes.Repeat([]byte("compressible NAR bytes\n"), 20000)
	ts.local.nars[localNAR] = text
	ts.local.narinfos[localHash].NarSize = uint64(len(text))
	for _, tc := range []struct {
		name, rng  string
		accept     bool
		start, end int
	}{
		{"whole", "", true, 0, len(text)},
		{"range", "bytes=1000-300999", true, 1000, 301000},
		{"not asked", "", false, 0, len(text)},
		{"tiny range", "bytes=10-99", true, 10, 100},
	} {
		req := httptest.NewRequest(http.MethodGet, "/local/"+localNAR, nil)
		req.RemoteAddr = "192.0.2.7:5000"
		if tc.rng != "" {
			req.Header.Set("Range", tc.rng)
		}
		if tc.accept {
			req.Header.Set(cache.AcceptEncodingHeader, cache.BlocksEncoding)
		}
		w := httptest.NewRecorder()
		ts.s.ServeHTTP(w, req)
		body := w.Body.Bytes()
		if got := w.Header().Get(cache.EncodingHeader) == cache.BlocksEncoding; got != tc.accept {
			t.Fatalf("%s: encoding header %q", tc.name, w.Header().Get(cache.EncodingHeader))
		}
		if tc.accept {
			if w.Header().Get("Content-Length") != "" {
				t.Errorf("%s: Content-Length with the block format", tc.name)
			}
			wire := len(body)
			var err error
			if body, err = io.ReadAll(compress.NewReader(bytes.NewReader(body))); err != nil {
				t.Fatal(err)
			}
			if len(body) > 4096 && wire >= len(body) {
				t.Errorf("%s: %d wire bytes for %d of text", tc.name, wire, len(body))
			}
		} else if w.Header().Get("Content-Length") != strconv.Itoa(tc.end-tc.start) {
			t.Errorf("%s: Content-Length %q", tc.name, w.Header().Get("Content-Length"))
		}
		if !bytes.Equal(body, text[tc.start:tc.end]) {
			t.Errorf("%s: %d bytes, want bytes %d-%d of the NAR", tc.name, len(body), tc.start, tc.end)
		}
	}
}
