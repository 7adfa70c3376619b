package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// requestTimeout bounds one HTTP exchange with the daemon.
const requestTimeout = 60 * time.Second

// rawResponse is a response read off a raw connection.
type rawResponse struct {
	status int
	header http.Header
	body   []byte
	// trailing is whatever the server sent after the body it announced
	// (for HEAD: after the header); it should be nothing.
	trailing []byte
}

// rawHTTP sends one HTTP/1.1 request with the request target exactly as
// given: Go's client would clean or re-escape the paths these tests need.
func rawHTTP(t *testing.T, addr, method, target string, headers ...string) rawResponse {
	t.Helper()
	r, err := rawHTTPErr(addr, method, target, headers...)
	if err != nil {
		t.Fatalf("%s %.200s: %v", method, target, err)
	}
	return r
}

func rawHTTPErr(addr, method, target string, headers ...string) (rawResponse, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return rawResponse{}, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return rawResponse{}, err
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: peerix-e2e\r\nConnection: close\r\n", method, target, addr)
	for _, h := range headers {
		fmt.Fprintf(&req, "%s\r\n", h)
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return rawResponse{}, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return rawResponse{}, fmt.Errorf("reading response: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return rawResponse{}, fmt.Errorf("reading body: %w", err)
	}
	// With Connection: close the server closes after its response; anything
	// before that close is extra.
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	trailing, _ := io.ReadAll(br)
	return rawResponse{status: resp.StatusCode, header: resp.Header, body: body, trailing: trailing}, nil
}

// httpGet fetches url with Go's client (for well-formed URLs) and returns the
// response with its body read.
func httpGet(t *testing.T, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, body
}

// narInfo is a parsed narinfo.
type narInfo map[string]string

func parseNarInfo(t testing.TB, b []byte) narInfo {
	t.Helper()
	ni := narInfo{}
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("narinfo line %q is not 'Key: value':\n%s", line, b)
		}
		if k == "Sig" && ni[k] != "" {
			v = ni[k] + " " + v
		}
		ni[k] = v
	}
	return ni
}

// fetchNarInfo GETs /local/<hash>.narinfo of path and checks it against the
// source store's facts.
func fetchNarInfo(t *testing.T, d *peerixProc, fx *fixtureSet, path string) narInfo {
	t.Helper()
	resp, body := httpGet(t, d.url+"/local/"+hashPart(path)+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /local/%s.narinfo: %s\n%s", hashPart(path), resp.Status, body)
	}
	ni := parseNarInfo(t, body)
	want := fx.facts[path]
	var wantRefs []string
	for _, r := range want.refs {
		wantRefs = append(wantRefs, filepath.Base(r))
	}
	var gotRefs []string
	if ni["References"] != "" {
		gotRefs = strings.Split(ni["References"], " ")
	}
	slices.Sort(gotRefs)
	for _, c := range []struct{ field, got, want string }{
		{"StorePath", ni["StorePath"], path},
		{"NarHash", ni["NarHash"], want.narHash},
		{"NarSize", ni["NarSize"], strconv.FormatInt(want.narSize, 10)},
		{"Compression", ni["Compression"], "none"},
		{"References", strings.Join(gotRefs, " "), strings.Join(wantRefs, " ")},
	} {
		if c.got != c.want {
			t.Errorf("%s.narinfo: %s is %q, want %q", hashPart(path), c.field, c.got, c.want)
		}
	}
	u := ni["URL"]
	if !strings.HasPrefix(u, "nar/") || !strings.HasSuffix(u, ".nar") || strings.Contains(u, "..") {
		t.Fatalf("%s.narinfo: URL %q is not of the form nar/<something>.nar", hashPart(path), u)
	}
	return ni
}

// streamDigest GETs url and returns the hex SHA-256 and size of the body and
// the Content-Length the server announced.
func streamDigest(url string, headers ...string) (status int, digest string, n, contentLength int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", 0, 0, err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", 0, 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err = io.Copy(h, resp.Body)
	if err != nil {
		return resp.StatusCode, "", n, resp.ContentLength, fmt.Errorf("GET %s: reading body after %d bytes: %w", url, n, err)
	}
	return resp.StatusCode, hex.EncodeToString(h.Sum(nil)), n, resp.ContentLength, nil
}

// TestServedNARsMatchStore checks the narinfo of every fixture against the
// source store and that the NAR behind it, at both /local/nar/... and
// /nar/..., is byte for byte what nix-store --dump writes.
func TestServedNARsMatchStore(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	d := startPeerix(t, localDaemon(t, fx.src))

	resp, body := httpGet(t, d.url+"/local/nix-cache-info")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "StoreDir: /nix/store\n") {
		t.Errorf("GET /local/nix-cache-info: %s\n%s", resp.Status, body)
	}
	resp, body = httpGet(t, d.url+"/nix-cache-info")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "StoreDir: /nix/store\n") {
		t.Errorf("GET /nix-cache-info from loopback: %s\n%s", resp.Status, body)
	}

	for _, p := range fx.paths {
		t.Run(filepath.Base(p)[33:], func(t *testing.T) {
			ni := fetchNarInfo(t, d, fx, p)
			want := fx.facts[p]
			for _, url := range []string{d.url + "/local/" + ni["URL"], d.url + "/" + ni["URL"]} {
				status, digest, n, cl, err := streamDigest(url)
				if err != nil {
					t.Errorf("%v", err)
					continue
				}
				if status != http.StatusOK {
					t.Errorf("GET %s: status %d", url, status)
					continue
				}
				if digest != want.narDigest || n != want.narSize {
					t.Errorf("GET %s: %d bytes sha256 %s; nix-store --dump gives %d bytes sha256 %s",
						url, n, digest, want.narSize, want.narDigest)
				}
				if cl != want.narSize {
					t.Errorf("GET %s: Content-Length %d, want %d", url, cl, want.narSize)
				}
			}

			// HEAD: the narinfo's headers and not one byte of body.
			r := rawHTTP(t, d.addr, http.MethodHead, "/local/"+hashPart(p)+".narinfo")
			if r.status != http.StatusOK {
				t.Errorf("HEAD /local/%s.narinfo: status %d, want 200", hashPart(p), r.status)
			}
			if len(r.body) != 0 || len(r.trailing) != 0 {
				t.Errorf("HEAD /local/%s.narinfo sent a body: %q", hashPart(p), append(r.body, r.trailing...))
			}
			// HEAD on the NAR: its size, no body.
			r = rawHTTP(t, d.addr, http.MethodHead, "/local/"+ni["URL"])
			if r.status != http.StatusOK {
				t.Errorf("HEAD /local/%s: status %d, want 200", ni["URL"], r.status)
			} else if cl := r.header.Get("Content-Length"); cl != strconv.FormatInt(want.narSize, 10) {
				t.Errorf("HEAD /local/%s: Content-Length %q, want %d", ni["URL"], cl, want.narSize)
			}
			if len(r.body) != 0 || len(r.trailing) != 0 {
				t.Errorf("HEAD /local/%s sent %d bytes of body", ni["URL"], len(r.body)+len(r.trailing))
			}
		})
	}
	d.alive(t)
}

// TestNARConcurrentDownloads fetches the biggest NAR many times at once.
func TestNARConcurrentDownloads(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	d := startPeerix(t, localDaemon(t, fx.src))
	p := fx.byName["big"]
	ni := fetchNarInfo(t, d, fx, p)
	want := fx.facts[p]

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < cap(errs); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := d.url + "/local/" + ni["URL"]
			if i%2 == 1 {
				url = d.url + "/" + ni["URL"]
			}
			status, digest, n, _, err := streamDigest(url)
			switch {
			case err != nil:
				errs <- err
			case status != http.StatusOK || digest != want.narDigest || n != want.narSize:
				errs <- fmt.Errorf("GET %s: status %d, %d bytes sha256 %s; want 200, %d bytes sha256 %s",
					url, status, n, digest, want.narSize, want.narDigest)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d.alive(t)
}

// TestNARRange checks HTTP Range on a NAR, which Nix uses to resume.
func TestNARRange(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	d := startPeerix(t, localDaemon(t, fx.src))
	p := fx.byName["big"]
	ni := fetchNarInfo(t, d, fx, p)
	full := dumpBytes(t, fx.src, p)
	n := len(full)

	tests := []struct {
		rangeHdr  string
		wantStart int // first byte expected; the body runs to wantEnd (exclusive)
		wantEnd   int
	}{
		{"bytes=100-", 100, n},
		{"bytes=0-99", 0, 100},
		{"bytes=-50", n - 50, n},
		{"bytes=5000000-5000099", 5000000, 5000100},
		{fmt.Sprintf("bytes=%d-%d", n-10, n+1000), n - 10, n},
		{fmt.Sprintf("bytes=%d-", n-1), n - 1, n},
	}
	for _, prefix := range []string{"/local/", "/"} {
		url := d.url + prefix + ni["URL"]
		for _, tc := range tests {
			resp, body := httpGet(t, url, "Range: "+tc.rangeHdr)
			if resp.StatusCode != http.StatusPartialContent {
				t.Errorf("GET %s Range %s: %s, want 206", url, tc.rangeHdr, resp.Status)
				continue
			}
			if !bytes.Equal(body, full[tc.wantStart:tc.wantEnd]) {
				t.Errorf("GET %s Range %s: got %d bytes, want bytes %d-%d of the NAR (%d bytes)",
					url, tc.rangeHdr, len(body), tc.wantStart, tc.wantEnd-1, tc.wantEnd-tc.wantStart)
			}
			wantCR := fmt.Sprintf("bytes %d-%d/%d", tc.wantStart, tc.wantEnd-1, n)
			if cr := resp.Header.Get("Content-Range"); cr != wantCR {
				t.Errorf("GET %s Range %s: Content-Range %q, want %q", url, tc.rangeHdr, cr, wantCR)
			}
		}
		for _, unsat := range []string{fmt.Sprintf("bytes=%d-", n), fmt.Sprintf("bytes=%d-%d", n+100, n+200)} {
			resp, _ := httpGet(t, url, "Range: "+unsat)
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Errorf("GET %s Range %s (NAR is %d bytes): %s, want 416", url, unsat, n, resp.Status)
				continue
			}
			// RFC 9110 section 14.4: a 416 names the current length.
			if cr, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", n); cr != want {
				t.Errorf("GET %s Range %s: 416 with Content-Range %q, want %q", url, unsat, cr, want)
			}
		}
	}
	d.alive(t)
}

const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

func randomNix32(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = nix32Alphabet[rand.IntN(len(nix32Alphabet))]
	}
	return string(b)
}

// nix32Runs returns the [start, end) spans of maximal runs of Nix base-32
// characters in s that are exactly n long.
func nix32Runs(s string, n int) [][2]int {
	var spans [][2]int
	for i := 0; i < len(s); {
		if !strings.ContainsRune(nix32Alphabet, rune(s[i])) {
			i++
			continue
		}
		j := i
		for j < len(s) && strings.ContainsRune(nix32Alphabet, rune(s[j])) {
			j++
		}
		if j-i == n {
			spans = append(spans, [2]int{i, j})
		}
		i = j
	}
	return spans
}

// TestBadRequests throws malformed and hostile requests at a running daemon:
// each must get a 4xx (never a 5xx, never the data), and the daemon must stay
// healthy.
func TestBadRequests(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	d := startPeerix(t, localDaemon(t, fx.src))

	leaf := fx.byName["leaf"]
	h := hashPart(leaf)
	ni := fetchNarInfo(t, d, fx, leaf)
	narURL := ni["URL"] // nar/<something>.nar
	absent := randomNix32(32)
	long := strings.Repeat("a", 8192)

	type badRequest struct {
		method, target string
		want           int // 0: any 4xx
	}
	var cases []badRequest
	add := func(want int, targets ...string) {
		for _, tg := range targets {
			cases = append(cases, badRequest{http.MethodGet, tg, want})
		}
	}
	// Invalid hashes.
	add(0,
		"/local/"+h[:31]+".narinfo",
		"/local/"+h+"a.narinfo",
		"/local/"+strings.ToUpper(h)+".narinfo",
		"/local/"+h+".narinfo/",
		"/local/"+h+".narinfox",
		"/local/"+h,
		"/local/.narinfo",
		"/local/"+h[:31]+"%2f.narinfo",
	)
	for _, c := range "eout" {
		add(0, "/local/"+string(c)+h[1:]+".narinfo")
	}
	// A well-formed hash that is not in the store: exactly 404, so Nix
	// records a miss instead of switching the cache off.
	add(http.StatusNotFound, "/local/"+absent+".narinfo")
	cases = append(cases, badRequest{http.MethodHead, "/local/" + absent + ".narinfo", http.StatusNotFound})

	// Traversal, NUL bytes, absolute paths.
	add(0,
		"/local/../etc/passwd",
		"/local/nar/../../etc/passwd",
		"/local/nar/..%2f..%2fetc%2fpasswd.nar",
		"/nar/..%2f..%2fetc%2fpasswd.nar",
		"/local/nar/%2e%2e/%2e%2e/etc/passwd.nar",
		"/local/nar/..%5c..%5cetc%5cpasswd.nar",
		"/local/..%2f..%2fetc%2fpasswd.narinfo",
		"/local/nar/"+h+"/../../../../etc/passwd.nar",
		"/local/"+h+"%00.narinfo",
		"/local/nar/%00.nar",
		"/local/"+narURL+"%00",
		"/local/"+strings.TrimSuffix(narURL, ".nar")+"%00.nar",
		"/local/%00",
		"/local/nar//etc/passwd.nar",
		"/local/nar/%2fetc%2fpasswd.nar",
		"/nar/%2fetc%2fpasswd.nar",
		"/local/nar/"+slashEscape(leaf)+".nar",
		"/local/nar/"+strings.TrimPrefix(leaf, "/")+".nar",
		"/nar/"+strings.TrimPrefix(leaf, "/")+".nar",
		"//etc/passwd",
		"///etc/passwd",
		"/etc/passwd",
		"/local/"+long+".narinfo",
		"/local/nar/"+long+".nar",
		"/"+long,
	)
	// NAR URLs of the right shape for things this store does not have.
	add(0,
		"/local/nar/"+absent+".nar",
		"/local/nar/"+randomNix32(52)+".nar",
		"/local/nar/"+absent+"-"+randomNix32(52)+".nar",
		"/nar/"+absent+".nar",
	)
	if spans := nix32Runs(narURL, 32); len(spans) > 0 {
		s := spans[0]
		mutated := narURL[:s[0]] + absent + narURL[s[1]:]
		add(0, "/local/"+mutated, "/"+mutated)
	}
	if spans := nix32Runs(narURL, 52); len(spans) > 0 {
		// The store hash stays, the NAR hash is wrong.
		s := spans[0]
		mutated := narURL[:s[0]] + randomNix32(52) + narURL[s[1]:]
		add(0, "/local/"+mutated, "/"+mutated)
	} else {
		t.Logf("NAR URL %q carries no 52-character NAR hash; skipping the wrong-NAR-hash case", narURL)
	}
	if strings.Contains(narURL, h) {
		add(0, "/local/"+strings.Replace(narURL, h, strings.ToUpper(h), 1))
	}
	// Peer NAR URLs and the peer narinfo route mean nothing in local mode.
	add(http.StatusNotFound,
		"/nar/lan/"+h+".nar",
		"/nar/lan/"+narURL,
		"/nar/lan/10.0.0.1/12304/"+narURL,
		"/nar/p2p/"+h+".nar",
		"/"+h+".narinfo",
	)
	cases = append(cases, badRequest{http.MethodHead, "/" + h + ".narinfo", http.StatusNotFound})
	// Methods a cache does not take.
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		cases = append(cases, badRequest{m, "/local/" + h + ".narinfo", 0})
	}

	for _, c := range cases {
		r, err := rawHTTPErr(d.addr, c.method, c.target)
		name := fmt.Sprintf("%s %.120s", c.method, c.target)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		switch {
		case c.want != 0 && r.status != c.want:
			t.Errorf("%s: status %d, want %d", name, r.status, c.want)
		case r.status < 400 || r.status > 499:
			t.Errorf("%s: status %d, want 4xx", name, r.status)
		}
		if bytes.Contains(r.body, []byte("root:x:0:0")) || bytes.Contains(r.body, []byte("nix-archive-1")) {
			t.Errorf("%s: body leaks data: %.200q", name, r.body)
		}
	}

	// A client that hangs up in the middle of a NAR.
	big := fetchNarInfo(t, d, fx, fx.byName["big"])
	for i := 0; i < 5; i++ {
		conn, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(requestTimeout))
		fmt.Fprintf(conn, "GET /local/%s HTTP/1.1\r\nHost: %s\r\n\r\n", big["URL"], d.addr)
		_, _ = io.ReadFull(conn, make([]byte, 4096))
		conn.Close()
	}
	// Garbage that is not HTTP at all.
	for _, junk := range []string{"\x00\x01\x02\r\n\r\n", "GET\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", strings.Repeat("A", 70000) + "\r\n\r\n"} {
		conn, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte(junk))
		_, _ = io.ReadAll(conn)
		conn.Close()
	}

	// Still healthy.
	d.alive(t)
	resp, body := httpGet(t, d.url+"/local/nix-cache-info")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after the bad requests: GET /local/nix-cache-info: %s\n%s", resp.Status, body)
	}
	fetchNarInfo(t, d, fx, leaf)
	status, digest, _, _, err := streamDigest(d.url + "/local/" + narURL)
	if err != nil || status != http.StatusOK || digest != fx.facts[leaf].narDigest {
		t.Errorf("after the bad requests: GET /local/%s: status %d, digest %s, err %v; want the leaf's NAR", narURL, status, digest, err)
	}
}

// slashEscape percent-encodes every slash of an absolute path.
func slashEscape(p string) string {
	return strings.ReplaceAll(p, "/", "%2f")
}

// TestHTTPFraming sends pipelined requests on one connection, as a peer
// could: plain ones (the fast loop's), one with a body that holds another
// request (net/http's from then on: the body is read and dropped, never
// answered as a request). Exactly the expected responses come back, in
// order.
func TestHTTPFraming(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	d := startPeerix(t, localDaemon(t, fx.src))
	h := hashPart(fx.byName["leaf"])
	absent := randomNix32(32)

	conn, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(requestTimeout))
	br := bufio.NewReader(conn)
	get := func(target string, extra ...string) string {
		return "GET " + target + " HTTP/1.1\r\nHost: peer\r\n" + strings.Join(extra, "") + "\r\n"
	}
	smuggled := get("/local/" + absent + ".narinfo")
	pipeline := get("/local/"+h+".narinfo") +
		get("/local/nix-cache-info") +
		get("/local/"+h+".narinfo", fmt.Sprintf("Content-Length: %d\r\n", len(smuggled))) + smuggled +
		get("/local/nix-cache-info")
	if _, err := io.WriteString(conn, pipeline); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"narinfo", "cache-info", "narinfo", "cache-info"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := "narinfo"
		if strings.HasPrefix(string(body), "StoreDir:") {
			got = "cache-info"
		}
		if resp.StatusCode != http.StatusOK || got != want {
			t.Fatalf("response %d: %d %q, want 200 and a %s", i+1, resp.StatusCode, body, want)
		}
	}
	// And nothing else: the request in the body was never answered.
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Fatalf("after the four answers: %q", rest)
	}
}
