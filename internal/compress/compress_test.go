package compress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"
	"time"
)

// binaryLike is content that compresses about as well as binaries do.
func binaryLike(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := [][]byte{[]byte("\x00\x00\x00\x00"), []byte("libc.so.6"), []byte("GLIBC_2.34"), []byte("\x48\x89\xe5"), []byte("__cxa_finalize")}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(3) == 0 {
			b.WriteByte(byte(r.Uint32()))
		} else {
			b.Write(words[r.IntN(len(words))])
		}
	}
	return b.Bytes()[:n]
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// link is a writer that takes as long as a link of rate bytes a second
// would (0: instant).
type link struct {
	bytes.Buffer
	rate float64
}

func (l *link) Write(p []byte) (int, error) {
	if l.rate > 0 {
		time.Sleep(time.Duration(float64(len(p)) / l.rate * float64(time.Second)))
	}
	return l.Buffer.Write(p)
}

// The Writer compresses what shrinks on a slow link, sends raw on a fast
// one and random bytes always raw; the Reader gives back the NAR bytes.
// (The slow link is 250 kB/s; zstd's fastest level runs at hundreds of
// MB/s, and still at several MB/s under the race detector on a busy
// machine, but one encode the scheduler stalls counts in the Writer's
// speed for the blocks after it: CI failed once with a 4 MB/s link, a
// fresh-machine run beside benchmarks once with a 1 MB/s link.)
func TestWriterChoosesAndReaderRestores(t *testing.T) {
	bins, random := binaryLike(4<<20), randomBytes(4<<20)
	for _, tt := range []struct {
		name  string
		data  []byte
		rate  float64 // the link's bytes a second
		small bool    // want fewer wire bytes than half the NAR
	}{
		{"binaries on a slow link", bins[:1<<20], 250e3, true},
		{"binaries on memory", bins, 0, false},
		{"random on a slow link", random, 4e6, false},
		{"tiny", []byte("x"), 16e6, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &link{rate: tt.rate}
			w := NewWriter(l, -1)
			if _, err := io.Copy(w, bytes.NewReader(tt.data)); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			nar, wire := w.Counts()
			if nar != int64(len(tt.data)) || wire != int64(l.Len()) {
				t.Fatalf("counts %d, %d; want %d, %d", nar, wire, len(tt.data), l.Len())
			}
			if small := wire < nar/2; small != tt.small {
				t.Errorf("%d NAR bytes took %d on the wire; want compressed %v", nar, wire, tt.small)
			}
			if !tt.small && wire > nar+nar/50+headerSize {
				t.Errorf("%d NAR bytes took %d on the wire: raw blocks cost too much", nar, wire)
			}
			// DataErrReader: the last bytes come with io.EOF, as from a
			// stream the holder closed.
			r := NewReader(iotest.DataErrReader(bytes.NewReader(l.Bytes())))
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
			if r.WireBytes() != wire {
				t.Errorf("the reader counted %d wire bytes, want %d", r.WireBytes(), wire)
			}
			t.Logf("%d NAR bytes, %d on the wire", nar, wire)
		})
	}
}

func block(kind byte, nar, wire uint32, payload []byte) []byte {
	b := []byte{kind}
	b = binary.BigEndian.AppendUint32(b, nar)
	b = binary.BigEndian.AppendUint32(b, wire)
	return append(b, payload...)
}

func TestReaderRefusesMalformed(t *testing.T) {
	for _, tt := range []struct {
		name string
		body []byte
		want error
	}{
		{"empty block", block(0, 0, 0, nil), ErrFormat},
		{"block too large", block(0, MaxBlock+1, MaxBlock+1, nil), ErrFormat},
		{"raw with other wire size", block(0, 10, 9, make([]byte, 9)), ErrFormat},
		{"unknown kind", block(2, 10, 5, make([]byte, 5)), ErrFormat},
		{"zstd not smaller", block(1, 10, 10, make([]byte, 10)), ErrFormat},
		{"zstd garbage", block(1, 100, 10, make([]byte, 10)), ErrFormat},
		{"cut in a header", block(0, 10, 10, nil)[:5], io.ErrUnexpectedEOF},
		{"cut in a raw block", block(0, 10, 10, make([]byte, 4)), io.ErrUnexpectedEOF},
		{"cut in a zstd block", block(1, 100, 10, make([]byte, 4)), io.ErrUnexpectedEOF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := io.ReadAll(NewReader(bytes.NewReader(tt.body)))
			if !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzReader: compressed bodies come from peers. Garbage is an error,
// never a panic or more than MaxBlock of memory per block.
func FuzzReader(f *testing.F) {
	var b bytes.Buffer
	w := NewWriter(&b, -1)
	w.Write(bytes.Repeat([]byte("hello "), 1000))
	w.Close()
	f.Add(b.Bytes())
	f.Add(block(0, 3, 3, []byte("abc")))
	f.Add(block(1, 100, 4, []byte{0x28, 0xb5, 0x2f, 0xfd}))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		buf := make([]byte, 4096)
		for range 1 << 12 {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	})
}

func BenchmarkWriter(b *testing.B) {
	data := binaryLike(16 << 20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		w := NewWriter(io.Discard, -1)
		w.link = rate{bytes: 1, seconds: 1} // slow: every block compressed
		w.Write(data)
		w.Close()
	}
}

// dumper is a source with its own WriteTo, as a NAR dumped from the store:
// it writes a small piece, then a file body through the writer's ReadFrom.
type dumper struct {
	head, body []byte
	t          *testing.T
}

func (d *dumper) Read([]byte) (int, error) {
	d.t.Error("Copy read the source instead of letting it write")
	return 0, io.EOF
}

func (d *dumper) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(d.head)
	if err != nil {
		return int64(n), err
	}
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		d.t.Fatal("the block writer has no ReadFrom")
	}
	m, err := rf.ReadFrom(&io.LimitedReader{R: bytes.NewReader(d.body), N: int64(len(d.body))})
	return int64(n) + m, err
}

func TestCopyLetsTheSourceWriteAndCountsBlocks(t *testing.T) {
	head, body := []byte("nix-archive-1 framing"), randomBytes(3*BlockSize+123)
	want := append(append([]byte{}, head...), body...)
	var wire bytes.Buffer
	var counted []int64
	n, err := Copy(&wire, &dumper{head: head, body: body, t: t}, int64(len(want)), func(nar int64) { counted = append(counted, nar) })
	if err != nil || n != int64(len(want)) {
		t.Fatalf("Copy = %d, %v; want %d, nil", n, err, len(want))
	}
	got, err := io.ReadAll(NewReader(&wire))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes, %v; want the %d written", len(got), err, len(want))
	}
	// Blocks of BlockSize, then the rest, each counted once it went out.
	wantCounts := []int64{BlockSize, BlockSize, BlockSize, int64(len(want) - 3*BlockSize)}
	if !slices.Equal(counted, wantCounts) {
		t.Fatalf("counted %v, want %v", counted, wantCounts)
	}
}
