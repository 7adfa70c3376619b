package httploop_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/compress"
	"github.com/peerix/peerix/internal/httploop"
	"github.com/peerix/peerix/internal/nar"
)

// narSource is a NAR dumped from the store: it writes itself (file
// bodies through the writer's ReadFrom, as *io.LimitedReaders over the
// files).
type narSource struct{ path string }

func (s narSource) Read([]byte) (int, error)           { panic("narSource is written, never read") }
func (s narSource) WriteTo(w io.Writer) (int64, error) { return nar.Dump(w, s.path, 0) }

// countingWriter passes ReadFrom on (as the daemon's metrics writer does)
// and counts the calls with a file.
type countingWriter struct {
	http.ResponseWriter
	files *atomic.Int64
}

func (c countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if _, ok := lr.R.(*os.File); ok {
			c.files.Add(1)
		}
	}
	return c.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
}

type writeOnly struct{ http.ResponseWriter }

func (w writeOnly) Write(p []byte) (int, error) { return w.ResponseWriter.Write(p) }

func randomFile(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A NAR in the block format, chunked: the bytes on the wire (block stream
// and chunk framing) are the same whether raw blocks of file bodies go
// from the file through the response's ReadFrom (sendfile) or are read
// and written, for NARs around block and chunk boundaries; both read back
// to the NAR, and so does net/http's answer (a request handed off), which
// copies.
func TestChunkedFileBlocksMatchWrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const B = compress.BlockSize
	// A NAR of one regular file is its body and 120 bytes of framing
	// (112 before it).
	sizes := []int{1, 16<<10 - 120, 16 << 10, 32<<10 + 1, B - 121, B - 120, B - 119, B - 112, B, B + 1,
		2*B - 120, 2 * B, 3*B + 5, 5*B - 112} // (probes: the compress tests)
	files := &atomic.Int64{}
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/") // "", fast?, how, size
		path := filepath.Join(dir, parts[len(parts)-1])
		w.Header().Set("Content-Type", "application/x-nix-nar")
		w.WriteHeader(http.StatusOK)
		var to io.Writer = writeOnly{w}
		if parts[len(parts)-2] == "file" {
			to = countingWriter{w, files}
		}
		if _, err := compress.Copy(to, narSource{path}, -1, nil); err != nil {
			panic(http.ErrAbortHandler)
		}
	}))
	dateRe := regexp.MustCompile(`(?m)^Date: .*\r\n`)
	get := func(path string) []byte {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", path)
		raw, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return dateRe.ReplaceAll(raw, nil)
	}
	decode := func(raw []byte) ([]byte, error) {
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
		if err != nil {
			return nil, err
		}
		if resp.ContentLength > 16<<10 || resp.ContentLength < 0 && (len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked") {
			return nil, fmt.Errorf("transfer encoding %q, want chunked", resp.TransferEncoding)
		}
		return io.ReadAll(compress.NewReader(resp.Body))
	}
	for _, size := range sizes {
		name := strconv.Itoa(size)
		randomFile(t, filepath.Join(dir, name), size)
		var want bytes.Buffer
		if _, err := nar.Dump(&want, filepath.Join(dir, name), 0); err != nil {
			t.Fatal(err)
		}
		before := files.Load()
		fast, plain := get("/fast/file/"+name), get("/fast/read/"+name)
		if !bytes.Equal(fast, plain) {
			t.Errorf("NAR of %d bytes: %d bytes on the wire from the file, %d read:\n%q\n%q", want.Len(), len(fast), len(plain),
				fast[:min(len(fast), 400)], plain[:min(len(plain), 400)])
		}
		for what, raw := range map[string][]byte{"loop": fast, "net/http": get("/file/" + name)} {
			if got, err := decode(raw); err != nil || !bytes.Equal(got, want.Bytes()) {
				t.Errorf("NAR of %d bytes from %s: read back %d bytes, %v", want.Len(), what, len(got), err)
			}
		}
		// The first block is a probe; of the others, whole ones of the
		// file went through ReadFrom.
		if n := files.Load() - before; size >= 3*B && n == 0 {
			t.Errorf("NAR of %d bytes: no block through ReadFrom", want.Len())
		}
	}
}

// A chunk sent from a file that ends short of it (the file shrank after
// it was checked) cannot be finished: the connection closes, as with a
// body shorter than its Content-Length. (Not parallel: it replaces the
// check.)
func TestChunkedShortFileCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	randomFile(t, path, 500)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		io.WriteString(w, "hello")
		w.(http.Flusher).Flush()
		w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: 1000})
	})
	ts := start(t, handler)
	for _, tt := range []struct {
		name  string
		holds func(*os.File, int64) bool
		short bool
	}{
		// The check finds the file short: its bytes are copied, in
		// chunks of what there is, as net/http does.
		{"checked", nil, false},
		{"shrank", func(*os.File, int64) bool { return true }, true},
	} {
		if tt.holds != nil {
			defer httploop.SetFileHolds(tt.holds)()
		}
		c, br := dial(t, ts)
		io.WriteString(c, "GET /fast/x HTTP/1.1\r\nHost: h\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if tt.short {
			if err == nil || n > 505 {
				t.Fatalf("%s: read %d bytes, err %v; want at most 505 and an error", tt.name, n, err)
			}
			continue
		}
		if err != nil || n != 505 {
			t.Fatalf("%s: read %d bytes, err %v; want 505", tt.name, n, err)
		}
		// The connection is still good.
		if resp, _ := exchange(t, c, br, "GET /fast/x HTTP/1.1\r\nHost: h\r\n\r\n"); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: second response %s", tt.name, resp.Status)
		}
	}
}
