package compress

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fileDest is a destination with its own ReadFrom (as an HTTP response's,
// down to sendfile); it counts the bytes that came through it from a
// file.
type fileDest struct {
	bytes.Buffer
	fromFile, calls int64
	rate            float64 // as link's: 0 instant
}

func (d *fileDest) Write(p []byte) (int, error) {
	if d.rate > 0 {
		time.Sleep(time.Duration(float64(len(p)) / d.rate * float64(time.Second)))
	}
	return d.Buffer.Write(p)
}

func (d *fileDest) ReadFrom(r io.Reader) (int64, error) {
	lr, ok := r.(*io.LimitedReader)
	if !ok {
		panic("ReadFrom without an *io.LimitedReader")
	}
	if _, ok := lr.R.(*os.File); !ok {
		panic("ReadFrom of something but a file")
	}
	d.calls++
	n, err := d.Buffer.ReadFrom(r)
	d.fromFile += n
	return n, err
}

type writerOnly struct{ io.Writer }

// writeFiles writes a NAR-like stream into w: prefix bytes of framing,
// then each file's body as the NAR dumper does (an *io.LimitedReader over
// the *os.File, to w's ReadFrom), each followed by 8 bytes of framing.
func writeFiles(t *testing.T, w *Writer, prefix []byte, files []string) int64 {
	t.Helper()
	n, err := w.Write(prefix)
	if err != nil {
		t.Fatal(err)
	}
	total := int64(n)
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		m, err := io.CopyBuffer(w, &io.LimitedReader{R: f, N: fi.Size()}, make([]byte, 1<<10))
		f.Close()
		if err != nil || m != fi.Size() {
			t.Fatalf("copying %s: %d of %d bytes, %v", p, m, fi.Size(), err)
		}
		total += m
		k, _ := w.Write([]byte("framing!"))
		total += int64(k)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return total
}

// A file body's whole raw blocks go out through the destination's
// ReadFrom, and the block stream is byte for byte the one of reading them
// into the buffer: around block boundaries, with framing before, across
// probe blocks, and with the counts and the counted callback the same.
func TestFileBlocksMatchReadBlocks(t *testing.T) {
	dir := t.TempDir()
	file := func(size int) string {
		p := filepath.Join(dir, fmt.Sprint(size))
		if err := os.WriteFile(p, randomBytes(size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const B = BlockSize
	for _, tt := range []struct {
		prefix int
		sizes  []int
		size   int64 // what NewWriter is told (-1: not known)
	}{
		{0, []int{1}, -1},
		{0, []int{B - 1}, -1},
		{0, []int{B}, -1},
		{0, []int{B}, B},
		{0, []int{B + 1}, -1},
		{0, []int{2*B - 1}, -1},
		{0, []int{2 * B}, -1},
		{0, []int{2*B + 1}, -1},
		{0, []int{100}, 100},
		{112, []int{B}, -1},
		{112, []int{2*B - 112}, -1},
		{112, []int{3 * B}, -1},
		{B - 1, []int{B + 1, 1, B}, -1},
		{9, []int{16<<10 - 9, 5 * B, B + 7}, -1},
		{0, []int{35*B + 3}, -1}, // probes at the 1st, 17th and 33rd block
		{48, []int{B, B - 48 - 8, B, 20 * B}, -1},
	} {
		t.Run(fmt.Sprint(tt.prefix, tt.sizes), func(t *testing.T) {
			var files []string
			for _, s := range tt.sizes {
				files = append(files, file(s))
			}
			prefix := randomBytes(tt.prefix + 1)[1:] // random: the probes find the blocks do not shrink

			var plain bytes.Buffer
			var plainCounted []int64
			pw := NewWriter(writerOnly{&plain}, tt.size)
			pw.counted = func(n int64) { plainCounted = append(plainCounted, n) }
			total := writeFiles(t, pw, prefix, files)

			fast := &fileDest{}
			var fastCounted []int64
			fw := NewWriter(fast, tt.size)
			fw.counted = func(n int64) { fastCounted = append(fastCounted, n) }
			if got := writeFiles(t, fw, prefix, files); got != total {
				t.Fatalf("wrote %d NAR bytes through ReadFrom, %d without", got, total)
			}

			if !bytes.Equal(fast.Bytes(), plain.Bytes()) {
				t.Fatalf("block streams differ: %d bytes with the file path, %d without", fast.Len(), plain.Len())
			}
			if !slices.Equal(fastCounted, plainCounted) {
				t.Fatalf("counted %v with the file path, %v without", fastCounted, plainCounted)
			}
			fn, fwire := fw.Counts()
			pn, pwire := pw.Counts()
			if fn != pn || fwire != pwire || fn != total {
				t.Fatalf("counts %d/%d with the file path, %d/%d without; %d NAR bytes", fn, fwire, pn, pwire, total)
			}
			got, err := io.ReadAll(NewReader(bytes.NewReader(fast.Bytes())))
			if err != nil || int64(len(got)) != total {
				t.Fatalf("read back %d bytes, %v; want %d", len(got), err, total)
			}
			// Every block that started empty, held a whole block of a
			// file and was no probe went through ReadFrom.
			if fast.fromFile != fast.calls*int64(cap(fw.buf)) {
				t.Fatalf("%d bytes in %d ReadFroms: not whole blocks", fast.fromFile, fast.calls)
			}
			if want := wantFromFile(tt.prefix, tt.sizes, cap(fw.buf)); fast.calls != want {
				t.Fatalf("%d blocks through ReadFrom, want %d", fast.calls, want)
			}
		})
	}
}

// wantFromFile is how many blocks go through ReadFrom: those that start
// empty inside a file holding a whole block, and are no probe (the 1st,
// then every probeEvery-th block).
func wantFromFile(prefix int, sizes []int, block int) int64 {
	var calls int64
	pos, blocks := prefix, 0 // bytes in the buffer, blocks sent
	for _, s := range sizes {
		for s > 0 {
			if pos == 0 && s >= block && (blocks+1)%probeEvery != 1 {
				calls++
				blocks++
				s -= block
				continue
			}
			k := min(s, block-pos)
			pos, s = pos+k, s-k
			if pos == block {
				pos, blocks = 0, blocks+1
			}
		}
		pos += 8 // framing
		if pos >= block {
			pos, blocks = pos-block, blocks+1
		}
	}
	return calls
}

// A Writer that compresses (a slow link, content that shrinks) reads
// every block into memory: nothing goes through ReadFrom.
func TestCompressingReadsFileBlocks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bin")
	data := binaryLike(4 * BlockSize)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dest := &fileDest{rate: 1e6}
	w := NewWriter(dest, -1)
	writeFiles(t, w, nil, []string{p})
	if dest.calls != 0 {
		t.Fatalf("%d blocks went through ReadFrom while compressing", dest.calls)
	}
	nar, wire := w.Counts()
	if wire >= nar/2 {
		t.Fatalf("%d NAR bytes took %d on the wire: not compressed", nar, wire)
	}
	got, err := io.ReadAll(NewReader(bytes.NewReader(dest.Bytes())))
	if err != nil || !bytes.Equal(got, append(data, "framing!"...)) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}

// shortDest's ReadFrom sends less than asked, as sendfile of a file that
// shrank.
type shortDest struct{ bytes.Buffer }

func (d *shortDest) ReadFrom(r io.Reader) (int64, error) {
	lr := r.(*io.LimitedReader)
	return d.Buffer.ReadFrom(io.LimitReader(lr.R, lr.N-1))
}

// A file that ends inside a block whose header went out is an error:
// the body is broken.
func TestFileShorterThanItsBlockFails(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, randomBytes(3*BlockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := NewWriter(&shortDest{}, -1)
	w.sinceProbe = 0 // no probe due
	if _, err := w.ReadFrom(&io.LimitedReader{R: f, N: 3 * BlockSize}); err != io.ErrUnexpectedEOF {
		t.Fatalf("ReadFrom = %v, want io.ErrUnexpectedEOF", err)
	}
}

// An *io.LimitedReader's N is a bound, not a length: a file that ends
// before it (io.LimitReader(f, huge)) is sent whole, in the blocks that
// reading it gives, and no block header promises bytes the file lacks.
func TestFileEndingBeforeItsLimit(t *testing.T) {
	for _, size := range []int{BlockSize / 2, BlockSize + BlockSize/2, 3*BlockSize + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := randomBytes(size)
			p := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(p, body, 0o644); err != nil {
				t.Fatal(err)
			}
			send := func(dst io.Writer) {
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				w := NewWriter(dst, -1)
				w.sinceProbe = 0 // the first block is no probe, as in the middle of a NAR
				n, err := w.ReadFrom(io.LimitReader(f, 1<<40))
				if err != nil || n != int64(size) {
					t.Fatalf("ReadFrom = %d, %v; want %d bytes", n, err, size)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			}
			var viaFile fileDest
			send(&viaFile)
			var read bytes.Buffer
			send(writerOnly{&read})
			if !bytes.Equal(viaFile.Bytes(), read.Bytes()) {
				t.Fatalf("the block stream through ReadFrom (%d bytes) differs from the one of reading the file (%d bytes)", viaFile.Len(), read.Len())
			}
			got, err := io.ReadAll(NewReader(bytes.NewReader(viaFile.Bytes())))
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("decoded %d bytes, %v; want the file's %d", len(got), err, size)
			}
		})
	}
}
