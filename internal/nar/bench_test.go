package nar_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"

	"github.com/peerix/peerix/internal/nar"
	"github.com/peerix/peerix/internal/nixtest"
)

// sink is the receiving end of a loopback TCP connection that reads and
// discards everything with a large buffer.
type sink struct {
	conn  *net.TCPConn
	total chan int64 // bytes received, once the connection is closed
}

func newSink(b *testing.B) *sink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	k := &sink{conn: c.(*net.TCPConn), total: make(chan int64, 1)}
	go func() {
		defer s.Close()
		buf := make([]byte, 1<<20)
		var n int64
		for {
			m, err := s.Read(buf)
			n += int64(m)
			if err != nil {
				k.total <- n
				return
			}
		}
	}()
	return k
}

// close closes the sending side and waits for the receiver to drain it.
func (k *sink) close(b *testing.B, want int64) {
	k.conn.Close()
	if got := <-k.total; got != want {
		b.Fatalf("receiver got %d bytes, want %d", got, want)
	}
}

func bigFile(b *testing.B, size int64) string {
	p := b.TempDir() + "/big"
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{1})
	if _, err := io.CopyN(f, r, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

func smallTree(b *testing.B, files, maxSize int) string {
	dir := b.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range files {
		d := fmt.Sprintf("%s/d%03d", dir, i%100)
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s/f%05d", d, i), randBytes(r, r.IntN(maxSize)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// benchTargets runs the dump of path to each kind of destination.
func benchTargets(b *testing.B, path string) {
	size, err := nar.Size(path)
	if err != nil {
		b.Fatal(err)
	}
	check := func(b *testing.B, n int64, err error) {
		if err != nil {
			b.Fatal(err)
		}
		if n != size {
			b.Fatalf("wrote %d bytes, want %d", n, size)
		}
	}

	b.Run("discard", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			n, err := nar.Dump(io.Discard, path, 0)
			check(b, n, err)
		}
	})

	b.Run("tcp", func(b *testing.B) {
		k := newSink(b)
		b.SetBytes(size)
		var total int64
		for b.Loop() {
			n, err := nar.Dump(k.conn, path, 0)
			check(b, n, err)
			total += n
		}
		k.close(b, total)
	})

	b.Run("read-pipe-tcp", func(b *testing.B) {
		// The io.Pipe fallback: Read only, no WriterTo.
		k := newSink(b)
		b.SetBytes(size)
		buf := make([]byte, 256<<10)
		var total int64
		for b.Loop() {
			rc := nar.Open(path, 0)
			n, err := io.CopyBuffer(struct{ io.Writer }{k.conn}, struct{ io.Reader }{rc}, buf)
			rc.Close()
			check(b, n, err)
			total += n
		}
		k.close(b, total)
	})

	b.Run("http", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			size, err := nar.Size(path)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			rc := nar.Open(path, 0)
			defer rc.Close()
			w.Header().Set("Content-Type", "application/x-nix-nar")
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			io.Copy(w, rc)
		}))
		defer srv.Close()
		client := srv.Client()
		b.SetBytes(size)
		buf := make([]byte, 1<<20)
		for b.Loop() {
			resp, err := client.Get(srv.URL)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
			resp.Body.Close()
			check(b, n, err)
		}
	})
}

// BenchmarkDumpLargeFile dumps a NAR of one 256 MiB file.
func BenchmarkDumpLargeFile(b *testing.B) {
	const size = 256 << 20
	path := bigFile(b, size)
	benchTargets(b, path)

	// For comparison: the file alone, sent with sendfile as a static file
	// server would.
	b.Run("baseline-sendfile-tcp", func(b *testing.B) {
		k := newSink(b)
		b.SetBytes(size)
		var total int64
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(k.conn, f)
			f.Close()
			if err != nil || n != size {
				b.Fatal(n, err)
			}
			total += n
		}
		k.close(b, total)
	})
}

// BenchmarkDumpSmallFiles dumps a tree of 10000 files of 0-2 KiB in 100
// directories.
func BenchmarkDumpSmallFiles(b *testing.B) {
	path := smallTree(b, 10000, 2048)
	benchTargets(b, path)

	b.Run("size", func(b *testing.B) {
		for b.Loop() {
			if _, err := nar.Size(path); err != nil {
				b.Fatal(err)
			}
		}
	})

	// For comparison: nix-store --dump to /dev/null.
	b.Run("baseline-nix-store", func(b *testing.B) {
		if nixtest.Available() != nil {
			b.Skip("no Nix")
		}
		size, _ := nar.Size(path)
		b.SetBytes(size)
		for b.Loop() {
			cmd := nixtest.Command(context.Background(), "nix-store", "--dump", path)
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
