package nar_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nar"
	"github.com/peerix/peerix/internal/nixtest"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// nixDump returns the output of `nix-store --dump path`. Without Nix the
// test is skipped, except under CI=true, where it fails.
func nixDump(t testing.TB, path string) []byte {
	t.Helper()
	nixtest.Require(t)
	return nixtest.Must(t, "nix-store", "--dump", path)
}

func write(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask
		t.Fatal(err)
	}
}

func symlink(t testing.TB, target, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t testing.TB, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// trees builds each test tree under dir and returns the path to archive.
var trees = []struct {
	name  string
	build func(t testing.TB, dir string) string
}{
	{"regular", func(t testing.TB, dir string) string {
		write(t, dir+"/a.txt", []byte("hello, world\n"), 0o644)
		write(t, dir+"/eight", []byte("12345678"), 0o644)
		write(t, dir+"/nine", []byte("123456789"), 0o444)
		write(t, dir+"/one", []byte("x"), 0o600)
		return dir
	}},
	{"executable", func(t testing.TB, dir string) string {
		for _, m := range []os.FileMode{0o755, 0o700, 0o744, 0o710, 0o701, 0o611, 0o511, 0o644} {
			write(t, fmt.Sprintf("%s/mode%o", dir, m), []byte("#!/bin/sh\necho hi\n"), m)
		}
		return dir
	}},
	{"empty file", func(t testing.TB, dir string) string {
		write(t, dir+"/empty", nil, 0o644)
		write(t, dir+"/empty-exec", nil, 0o755)
		return dir
	}},
	{"symlink", func(t testing.TB, dir string) string {
		write(t, dir+"/target", []byte("data"), 0o644)
		symlink(t, "target", dir+"/link")
		symlink(t, "/nix/store/00000000000000000000000000000000-x/bin/sh", dir+"/abs")
		symlink(t, "../"+strings.Repeat("long/", 200), dir+"/long")
		return dir
	}},
	{"dangling symlink", func(t testing.TB, dir string) string {
		symlink(t, "does/not/exist", dir+"/dangling")
		symlink(t, "loop", dir+"/loop")
		return dir
	}},
	{"empty directory", func(t testing.TB, dir string) string {
		return dir
	}},
	{"nested empty directories", func(t testing.TB, dir string) string {
		mkdir(t, dir+"/a/b/c")
		mkdir(t, dir+"/d")
		return dir
	}},
	{"deep", func(t testing.TB, dir string) string {
		p := dir
		for i := range 50 {
			p = filepath.Join(p, "level"+strconv.Itoa(i))
			write(t, p+"-file", []byte(strconv.Itoa(i)), 0o644)
		}
		write(t, p+"/bottom", []byte("bottom\n"), 0o755)
		return dir
	}},
	{"names", func(t testing.TB, dir string) string {
		names := []string{
			"with space", " leading", "trailing ", "ünïcødé", "日本語", "emoji😀",
			"raw\xff\xfebytes", "\x01ctl", "\x7fdel", "A", "a", "B", "b", "a.b",
			"a-b", "a_b", "~", "Z", "a\xc3", ".hidden", "..dots", "12345678",
			"123456789", strings.Repeat("n", 255), "é", "e\u0301",
		}
		for i, n := range names {
			write(t, filepath.Join(dir, n), []byte(n), 0o644)
			if i%3 == 0 {
				mkdir(t, filepath.Join(dir, "dir "+n))
				symlink(t, n, filepath.Join(dir, "dir "+n, "link "+n))
			}
		}
		return dir
	}},
	{"many small files", func(t testing.TB, dir string) string {
		r := rand.New(rand.NewPCG(1, 2))
		for i := range 2000 {
			p := fmt.Sprintf("%s/d%02d/f%04d", dir, i%37, i)
			write(t, p, randBytes(r, r.IntN(300)), 0o644)
		}
		return dir
	}},
	{"buffer boundaries", func(t testing.TB, dir string) string {
		r := rand.New(rand.NewPCG(3, 4))
		for _, n := range []int{32<<10 - 1, 32 << 10, 32<<10 + 1, 128<<10 - 1, 128 << 10, 128<<10 + 1, 100, 64 << 10, 300 << 10} {
			write(t, fmt.Sprintf("%s/f%07d", dir, n), randBytes(r, n), 0o644)
		}
		return dir
	}},
	{"large file", func(t testing.TB, dir string) string {
		// 20 MiB + 3 bytes: random blocks with holes between them.
		p := dir + "/large"
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r := rand.New(rand.NewPCG(5, 6))
		const size = 20<<20 + 3
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off < size; off += 3 << 20 {
			if _, err := f.WriteAt(randBytes(r, 1<<20), off); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.WriteAt([]byte("end"), size-3); err != nil {
			t.Fatal(err)
		}
		write(t, dir+"/small", []byte("after"), 0o644)
		return dir
	}},
	{"root file", func(t testing.TB, dir string) string {
		write(t, dir+"/f", randBytes(rand.New(rand.NewPCG(7, 8)), 100003), 0o644)
		return dir + "/f"
	}},
	{"root small executable", func(t testing.TB, dir string) string {
		write(t, dir+"/f", []byte("#!/bin/sh\n"), 0o755)
		return dir + "/f"
	}},
	{"root empty file", func(t testing.TB, dir string) string {
		write(t, dir+"/f", nil, 0o644)
		return dir + "/f"
	}},
	{"root symlink", func(t testing.TB, dir string) string {
		mkdir(t, dir+"/d")
		write(t, dir+"/d/x", []byte("x"), 0o644)
		symlink(t, "d", dir+"/l")
		return dir + "/l"
	}},
}

// offsets returns the offsets to check for an archive.
func offsets(want []byte) []int64 {
	size := int64(len(want))
	offs := []int64{0, 1, 7, 8, 9, 15, 16, size / 3, size / 2, 2 * size / 3, size - 9, size - 8, size - 1, size}
	// Inside file bodies: a few bytes into the body after each of the first
	// "contents" tokens, and just before its end.
	contents := []byte("\x08\x00\x00\x00\x00\x00\x00\x00contents")
	for i, start := 0, 0; i < 4; i++ {
		j := bytes.Index(want[start:], contents)
		if j < 0 {
			break
		}
		body := int64(start+j) + 16 + 8
		n := int64(0)
		for k := 7; k >= 0; k-- {
			n = n<<8 | int64(want[body-8+int64(k)])
		}
		offs = append(offs, body-8, body-1, body, body+1, body+n/2, body+n-1, body+n)
		start += j + 1
	}
	r := rand.New(rand.NewPCG(uint64(size), 0))
	for range 8 {
		offs = append(offs, r.Int64N(size+1))
	}
	var out []int64
	for _, o := range offs {
		if o >= 0 && o <= size {
			out = append(out, o)
		}
	}
	return out
}

func TestAgainstNix(t *testing.T) {
	for _, tc := range trees {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := tc.build(t, t.TempDir())
			want := nixDump(t, path)
			size := int64(len(want))

			got, err := nar.Size(path)
			if err != nil {
				t.Fatalf("Size: %v", err)
			}
			if got != size {
				t.Fatalf("Size = %d, nix-store --dump gave %d bytes", got, size)
			}

			for _, off := range offsets(want) {
				var buf bytes.Buffer
				n, err := nar.Dump(&buf, path, off)
				if err != nil {
					t.Fatalf("Dump(%d): %v", off, err)
				}
				if n != size-off || int64(buf.Len()) != n {
					t.Fatalf("Dump(%d) = %d, wrote %d bytes, want %d", off, n, buf.Len(), size-off)
				}
				if !bytes.Equal(buf.Bytes(), want[off:]) {
					t.Fatalf("Dump(%d) differs from nix-store --dump at byte %d", off, off+int64(firstDiff(buf.Bytes(), want[off:])))
				}

				// Read path (io.Pipe).
				r := nar.Open(path, off)
				b, err := io.ReadAll(r)
				if err != nil {
					t.Fatalf("Open(%d) ReadAll: %v", off, err)
				}
				if !bytes.Equal(b, want[off:]) {
					t.Fatalf("Open(%d) ReadAll differs at byte %d", off, off+int64(firstDiff(b, want[off:])))
				}
				r.Close()

				// WriterTo path, after a few Reads (which start the pipe).
				r = nar.Open(path, off)
				head := make([]byte, min(int64(13), size-off))
				if _, err := io.ReadFull(r, head); err != nil {
					t.Fatalf("Open(%d) ReadFull: %v", off, err)
				}
				buf.Reset()
				buf.Write(head)
				if _, err := io.Copy(&buf, r); err != nil {
					t.Fatalf("Open(%d) Read then WriteTo: %v", off, err)
				}
				if !bytes.Equal(buf.Bytes(), want[off:]) {
					t.Fatalf("Open(%d) Read then WriteTo differs at byte %d", off, off+int64(firstDiff(buf.Bytes(), want[off:])))
				}
				if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
					t.Fatalf("Read after WriteTo = %d, %v; want 0, EOF", n, err)
				}
				r.Close()
			}

			// Past the end.
			if _, err := nar.Dump(io.Discard, path, size+1); !errors.Is(err, nar.ErrOffset) {
				t.Errorf("Dump(size+1) error = %v, want ErrOffset", err)
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

// TestPathForms checks that a trailing slash, "..", or a relative path name
// the same thing to Dump as to nix-store --dump, which uses its argument as
// given: "link/" is the directory the link points to, and "link/.." is the
// parent of that directory.
func TestPathForms(t *testing.T) {
	dir := t.TempDir()
	write(t, dir+"/d/f", []byte("f"), 0o644)
	symlink(t, "d", dir+"/l")
	write(t, dir+"/x/y/z", []byte("z"), 0o755)
	symlink(t, "x/y", dir+"/deep")
	t.Chdir(dir)
	for _, p := range []string{"l", "l/", "d/", "./d/../l", "d//", ".", "deep/..", "deep/../", dir + "/deep/..", dir + "//"} {
		want := nixDump(t, p)
		var got bytes.Buffer
		if _, err := nar.Dump(&got, p, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("Dump(%q) differs from nix-store --dump", p)
		}
		if n, err := nar.Size(p); err != nil || n != int64(len(want)) {
			t.Errorf("Size(%q) = %d, %v; want %d", p, n, err, len(want))
		}
	}
}

func TestNegativeOffset(t *testing.T) {
	if _, err := nar.Dump(io.Discard, t.TempDir(), -1); !errors.Is(err, nar.ErrOffset) {
		t.Fatalf("Dump(-1) error = %v, want ErrOffset", err)
	}
}

func TestWriterToUsesNoPipe(t *testing.T) {
	dir := t.TempDir()
	write(t, dir+"/f", []byte("hi"), 0o644)
	before := runtime.NumGoroutine()
	r := nar.Open(dir, 0)
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		t.Fatal(err)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("goroutines %d -> %d after WriteTo", before, n)
	}
	r.Close()
	want, err := nar.Size(dir)
	if err != nil || int64(buf.Len()) != want {
		t.Fatalf("got %d bytes, Size = %d, %v", buf.Len(), want, err)
	}
}

// waitGoroutines waits for the goroutine count to fall to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseLeaksNothing(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(9, 9))
	write(t, dir+"/big", randBytes(r, 4<<20), 0o644)
	for i := range 100 {
		write(t, fmt.Sprintf("%s/s%d", dir, i), randBytes(r, 1000), 0o644)
	}
	before := runtime.NumGoroutine()

	// Never read.
	for range 10 {
		if err := nar.Open(dir, 0).Close(); err != nil {
			t.Fatal(err)
		}
	}
	waitGoroutines(t, before)

	// Partly read: the goroutine is blocked writing into the pipe.
	for _, off := range []int64{0, 100, 2 << 20} {
		rc := nar.Open(dir, off)
		b := make([]byte, 10)
		if _, err := io.ReadFull(rc, b); err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		if n, err := rc.Read(b); n != 0 || !errors.Is(err, nar.ErrClosed) {
			t.Fatalf("Read after Close = %d, %v", n, err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	waitGoroutines(t, before)

	// Close unblocks a concurrent Read... of a reader whose goroutine
	// is stuck behind a writer nobody drains: Close while Read is in
	// progress on another goroutine.
	rc := nar.Open(dir, 0)
	b := make([]byte, 1)
	if _, err := rc.Read(b); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error)
	go func() {
		var err error
		for err == nil {
			_, err = rc.Read(b)
		}
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	rc.Close()
	if err := <-errc; !errors.Is(err, nar.ErrClosed) && err != io.EOF {
		t.Fatalf("Read during Close: %v", err)
	}
	waitGoroutines(t, before)
}

func TestNotExist(t *testing.T) {
	p := t.TempDir() + "/nope"
	if _, err := nar.Size(p); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Errorf("Size error = %v", err)
	}
	if _, err := nar.Dump(io.Discard, p, 0); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Errorf("Dump error = %v", err)
	}
}

func TestUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads everything")
	}
	dir := t.TempDir()
	write(t, dir+"/secret", []byte("x"), 0o000)
	if _, err := nar.Dump(io.Discard, dir, 0); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Dump error = %v, want permission error", err)
	}
}

// hookWriter calls fn on its first Write.
type hookWriter struct {
	w    io.Writer
	fn   func()
	done bool
}

func (h *hookWriter) Write(p []byte) (int, error) {
	if !h.done {
		h.done = true
		h.fn()
	}
	return h.w.Write(p)
}

func TestFileChangesDuringDump(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, path string)
	}{
		{"grow", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("more"))
			f.Close()
		}},
		{"shrink", func(t *testing.T, path string) {
			if err := os.Truncate(path, 1000); err != nil {
				t.Fatal(err)
			}
		}},
		{"remove", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		for _, size := range []int{100 << 10, 4 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				// "a" is large, so its framing is flushed before its body
				// is copied: the first Write changes it under the copy.
				// (Changes to files not yet reached are not errors: they
				// are lstat'd when reached. See also TestChangeAfterLstat.)
				dir := t.TempDir()
				r := rand.New(rand.NewPCG(1, 1))
				for _, dst := range []string{"buffer", "file", "tcp"} {
					write(t, dir+"/a", randBytes(r, size), 0o644)
					write(t, dir+"/b", randBytes(r, 10), 0o644)
					var w io.Writer = &bytes.Buffer{}
					switch dst {
					case "file":
						f, err := os.Create(t.TempDir() + "/out")
						if err != nil {
							t.Fatal(err)
						}
						defer f.Close()
						w = f
					case "tcp":
						c, got := tcpPair(t)
						defer func() { c.Close(); <-got }()
						w = c
					}
					// The hook writer hides w's ReadFrom; use a TCP
					// connection or file directly, changing the file
					// after the first (framing) write instead.
					hw := &hookWriter{w: w, fn: func() { tc.change(t, dir+"/a") }}
					var err error
					if dst == "buffer" {
						_, err = nar.Dump(hw, dir, 0)
					} else {
						_, err = nar.Dump(struct {
							io.Writer
							io.ReaderFrom
						}{hw, w.(io.ReaderFrom)}, dir, 0)
					}
					if tc.name == "remove" {
						// An open file that is unlinked is still read whole.
						if err != nil {
							t.Errorf("%s: %v", dst, err)
						}
						continue
					}
					if !errors.Is(err, nar.ErrChanged) {
						t.Errorf("%s: error = %v, want ErrChanged", dst, err)
					} else if !strings.Contains(err.Error(), dir+"/a") {
						t.Errorf("%s: error %q does not name the file", dst, err)
					}
				}
			})
		}
	}
}

// TestHTTP serves a NAR over HTTP the way the daemon will: Content-Length
// from Size, body with io.Copy from Open.
func TestHTTP(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(2, 2))
	write(t, dir+"/big", randBytes(r, 3<<20+5), 0o755)
	write(t, dir+"/small", randBytes(r, 100), 0o644)
	var want bytes.Buffer
	if _, err := nar.Dump(&want, dir, 0); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		off, _ := strconv.ParseInt(req.URL.Query().Get("off"), 10, 64)
		size, err := nar.Size(dir)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		rc := nar.Open(dir, off)
		defer rc.Close()
		w.Header().Set("Content-Type", "application/x-nix-nar")
		w.Header().Set("Content-Length", strconv.FormatInt(size-off, 10))
		if _, err := io.Copy(w, rc); err != nil {
			t.Errorf("serving: %v", err)
		}
	}))
	defer srv.Close()
	for _, off := range []int64{0, 10, 300, 1 << 20, int64(want.Len()) - 1} {
		resp, err := http.Get(srv.URL + "/?off=" + strconv.FormatInt(off, 10))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()[off:]) {
			t.Fatalf("offset %d: body differs at %d", off, firstDiff(got, want.Bytes()[off:]))
		}
	}
}

// TestTCP dumps straight into a TCP connection (the sendfile path).
func TestTCP(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 3))
	write(t, dir+"/big", randBytes(r, 5<<20+1), 0o644)
	write(t, dir+"/c", randBytes(r, 40<<10), 0o644)
	var want bytes.Buffer
	if _, err := nar.Dump(&want, dir, 0); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 200, 3 << 20} {
		conn, got := tcpPair(t)
		n, err := nar.Dump(conn, dir, off)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		b := <-got
		if n != int64(len(b)) || !bytes.Equal(b, want.Bytes()[off:]) {
			t.Fatalf("offset %d: got %d bytes (n=%d), differs at %d", off, len(b), n, firstDiff(b, want.Bytes()[off:]))
		}
	}
}

// tcpPair returns the client side of a loopback TCP connection and a channel
// delivering everything the server side reads.
func tcpPair(t testing.TB) (*net.TCPConn, <-chan []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		defer s.Close()
		b, _ := io.ReadAll(s)
		got <- b
	}()
	return c.(*net.TCPConn), got
}
