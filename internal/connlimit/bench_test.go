package connlimit

import (
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkReadFromFile: a 64 MiB file sent as a NAR is (a limited reader
// over the file, handed to the connection's ReadFrom) to a loopback
// reader, through a Conn of this machine (local) and of a peer, against
// the bare TCP connection (sendfile) in the same iterations. x-raw is a
// rate over the bare connection's: 1.04–1.06 here, where a Conn that
// lost sendfile (as one did until session 7, wrapping the reader in a
// second LimitedReader, so the file went through a 32 KiB buffer) was at
// 0.69–0.71 in the same run.
//
//	go test -run '^$' -bench ReadFromFile -benchtime 20x ./internal/connlimit/
func BenchmarkReadFromFile(b *testing.B) {
	const size = 64 << 20
	path := filepath.Join(b.TempDir(), "nar")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	arms := []struct {
		name  string
		local func(netip.Addr) bool // nil: the bare connection
	}{
		{"raw", nil},
		{"local", func(netip.Addr) bool { return true }},
		{"peer", func(netip.Addr) bool { return false }},
	}
	took := make([]time.Duration, len(arms))
	for b.Loop() {
		for i, arm := range arms {
			took[i] += sendFile(b, f, size, arm.local)
		}
	}
	rate := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	for i, arm := range arms {
		b.ReportMetric(rate(took[i]), arm.name+"-MB/s")
		if i > 0 {
			b.ReportMetric(float64(took[0])/float64(took[i]), arm.name+"-x-raw")
		}
	}
	b.ReportMetric(0, "ns/op")
}

// sendFile sends size bytes of f over a new loopback connection accepted
// through a Listener whose Local is local (nil: no Listener), and returns
// how long until the reader had them all.
func sendFile(b *testing.B, f *os.File, size int64, local func(netip.Addr) bool) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var accept net.Listener = ln
	if local != nil {
		accept = NewListener(ln, Options{Local: local})
	}
	got := make(chan int64, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	c, err := accept.Accept()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := c.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: size}); err != nil {
		b.Fatal(err)
	}
	c.Close()
	if n := <-got; n != size {
		b.Fatalf("the reader got %d bytes, want %d", n, size)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
