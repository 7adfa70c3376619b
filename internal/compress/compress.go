// Package compress is zstd on the peer link, chosen block by block by the
// sender, never what Nix sees.
//
// A body in the block format is a sequence of blocks, each
//
//	u8 kind (0 raw, 1 zstd), u32 NAR bytes (1..MaxBlock), u32 wire bytes,
//	then the wire bytes: the NAR bytes themselves (raw; wire == NAR), or
//	one zstd frame of them (zstd; wire < NAR).
//
// The Writer compresses a block only when that is faster than sending it
// raw: when the link (measured as wire bytes a second while its writes
// block) is slower than compressing saves, speed × (1 − ratio), with the
// speed and ratio measured on the content itself. So a 50 Mbit/s uplink
// carries binaries compressed and veth or 10 GbE carries them raw, and
// random bytes always go raw. A block now and then is compressed anyway
// to keep the ratio current as the content changes.
package compress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Block kinds.
const (
	kindRaw  = 0
	kindZstd = 1
)

const (
	// BlockSize is the NAR bytes of the blocks the Writer makes.
	BlockSize = 256 << 10
	// MaxBlock is the most NAR bytes a block may hold.
	MaxBlock = 1 << 20
	// headerSize is a block's header.
	headerSize = 9
	// worthRatio: a block is sent compressed only when it shrinks below
	// this.
	worthRatio = 0.9
	// probeEvery: while sending raw, every probeEvery-th block is
	// compressed anyway, to learn the content's ratio and speed.
	probeEvery = 16
)

// ErrFormat: a body that does not follow the block format.
var ErrFormat = errors.New("malformed compressed body")

var encoders = sync.Pool{New: func() any {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	return e
}}

var decoders = sync.Pool{New: func() any {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(MaxBlock))
	return d
}}

// Writer writes the block format to w. Close writes what is buffered; it
// does not close w.
type Writer struct {
	w   io.Writer
	buf []byte // NAR bytes of the next block
	out []byte // header and wire bytes of a block

	// What the Writer learned, over the last blocks: the link's wire
	// bytes and the time writing them took, the NAR bytes compressed and
	// the time that took, and the ratio (0: not known yet). Rates are
	// sums over sums, not means of per-block rates: a socket takes most
	// writes at once and makes one wait for all of them.
	link, speed rate
	ratio       float64
	sinceProbe  int

	nar, wire int64
	counted   func(nar int64) // told each block's NAR bytes once they went out
}

// NewWriter returns a Writer into w of a body of size NAR bytes (-1: not
// known), which only sizes its buffers: a 1 KiB NAR costs no 256 KiB
// block buffer.
func NewWriter(w io.Writer, size int64) *Writer {
	block := int64(BlockSize)
	if size >= 0 {
		block = max(1, min(block, size))
	}
	return &Writer{w: w, buf: make([]byte, 0, block), out: make([]byte, 0, headerSize+block),
		sinceProbe: probeEvery - 1} // the first block is a probe
}

func (w *Writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p, n = p[k:], n+k
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// Copy writes src, a body of size NAR bytes (-1: not known), to w in the
// block format, and returns the NAR bytes written. counted, if not nil,
// is told the NAR bytes of each block once it went out. A src with its
// own WriteTo (a NAR dumped from the store) writes into the blocks
// itself, its file bodies read straight into a block's buffer (through
// ReadFrom), with no pipe or copy in between.
func Copy(w io.Writer, src io.Reader, size int64, counted func(nar int64)) (int64, error) {
	bw := NewWriter(w, size)
	bw.counted = counted
	n, err := io.Copy(bw, src)
	if cerr := bw.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// ReadFrom fills blocks straight from r. A whole raw block of a file (r an
// *io.LimitedReader over an *os.File, as the NAR dumper hands out for
// file bodies) is not read at all: its header is written and the block's
// bytes handed on as an *io.LimitedReader over the file to the
// destination's own ReadFrom (an HTTP response's, down to sendfile). The
// blocks are the same as when read: only where a block starts empty and
// the file holds a whole one, and only while sending raw and no probe is
// due.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var rf io.ReaderFrom
	lr, limited := r.(*io.LimitedReader)
	if limited {
		if _, file := lr.R.(*os.File); file {
			rf, _ = w.w.(io.ReaderFrom)
		}
	}
	var total int64
	for {
		if rf != nil && len(w.buf) == 0 {
			n, err := w.sendFile(rf, lr)
			total += n
			if err != nil || lr.N <= 0 {
				return total, err
			}
		}
		k, err := r.Read(w.buf[len(w.buf):cap(w.buf)])
		w.buf = w.buf[:len(w.buf)+k]
		total += int64(k)
		if len(w.buf) == cap(w.buf) {
			if ferr := w.flush(); ferr != nil {
				return total, ferr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// sendFile sends the whole raw blocks of lr (over a file) that can go
// straight from the file, while the buffer is empty: a block header, then
// the block's bytes through rf. It stops at the first block that cannot
// (a part block, a probe or compressing), for ReadFrom to read. A
// block's header goes out only if the file holds the block: lr.N is a
// bound, and a file may end before it (io.LimitReader(f, huge)).
func (w *Writer) sendFile(rf io.ReaderFrom, lr *io.LimitedReader) (int64, error) {
	var total int64
	block := cap(w.buf)
	left := int64(-1) // what the file holds from its offset on, once asked
	for len(w.buf) == 0 && lr.N >= int64(block) && w.sinceProbe+1 < probeEvery && !w.compressing() {
		if left < 0 {
			left = fileLeft(lr.R.(*os.File))
		}
		if left < int64(block) {
			break
		}
		left -= int64(block)
		w.sinceProbe++
		hdr := w.out[:headerSize]
		hdr[0] = kindRaw
		binary.BigEndian.PutUint32(hdr[1:], uint32(block))
		binary.BigEndian.PutUint32(hdr[5:], uint32(block))
		start := time.Now()
		if _, err := w.w.Write(hdr); err != nil {
			return total, err
		}
		part := &io.LimitedReader{R: lr.R, N: int64(block)}
		n, err := rf.ReadFrom(part)
		lr.N -= n
		total += n
		if err == nil && n < int64(block) {
			// The file ended inside a block whose header went out: the
			// body is broken.
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return total, err
		}
		w.link.add(headerSize+block, time.Since(start).Seconds())
		w.nar += int64(block)
		w.wire += int64(headerSize + block)
		if w.counted != nil {
			w.counted(int64(block))
		}
	}
	return total, nil
}

// fileLeft is how many bytes f holds from its offset on (0 if it is not a
// regular file, or cannot tell).
func fileLeft(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0
	}
	return max(fi.Size()-off, 0)
}

// Close writes the last, partial block.
func (w *Writer) Close() error {
	if len(w.buf) == 0 {
		return nil
	}
	return w.flush()
}

// Counts returns the NAR bytes written so far and the wire bytes they
// took.
func (w *Writer) Counts() (nar, wire int64) { return w.nar, w.wire }

// flush sends the buffered block, compressed if that is faster.
func (w *Writer) flush() error {
	block := w.buf
	w.buf = w.buf[:0]
	kind := byte(kindRaw)
	payload := block
	w.out = w.out[:headerSize]
	w.sinceProbe++
	if w.compressing() || w.sinceProbe >= probeEvery {
		w.sinceProbe = 0
		e := encoders.Get().(*zstd.Encoder)
		start := time.Now()
		w.out = e.EncodeAll(block, w.out)
		took := time.Since(start).Seconds()
		encoders.Put(e)
		z := w.out[headerSize:]
		w.ratio = ewma(w.ratio, float64(len(z))/float64(len(block)))
		w.speed.add(len(block), took)
		if float64(len(z)) < worthRatio*float64(len(block)) {
			kind, payload = kindZstd, z
		}
	}
	hdr := w.out[:headerSize]
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(block)))
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(payload)))
	start := time.Now()
	var err error
	if kind == kindZstd {
		_, err = w.w.Write(w.out)
	} else {
		if _, err = w.w.Write(hdr); err == nil {
			_, err = w.w.Write(payload)
		}
	}
	if err != nil {
		return err
	}
	w.link.add(headerSize+len(payload), time.Since(start).Seconds())
	w.nar += int64(len(block))
	w.wire += int64(headerSize + len(payload))
	if w.counted != nil {
		w.counted(int64(len(block)))
	}
	return nil
}

// compressing reports whether the next block is faster compressed: per
// NAR byte, compressing and sending the rest (1/speed + ratio/link) takes
// less than sending it raw (1/link).
func (w *Writer) compressing() bool {
	if w.ratio == 0 || w.ratio >= worthRatio {
		return false
	}
	link, known := w.link.perSecond()
	if !known {
		return true // nothing measured yet: the probe said it shrinks
	}
	speed, _ := w.speed.perSecond()
	return link < speed*(1-w.ratio)
}

// rate is bytes a second over the last blocks: decayed sums of bytes and
// of the seconds they took.
type rate struct{ bytes, seconds float64 }

func (r *rate) add(n int, seconds float64) {
	const keep = 0.9 // about the last ten blocks count
	r.bytes = keep*r.bytes + float64(n)
	r.seconds = keep*r.seconds + seconds
}

func (r *rate) perSecond() (float64, bool) {
	if r.seconds <= 0 {
		return 0, false
	}
	return r.bytes / r.seconds, true
}

// ewma folds x into an average that weighs recent blocks most (0: none
// yet).
func ewma(avg, x float64) float64 {
	if avg == 0 {
		return x
	}
	return 0.75*avg + 0.25*x
}

// Reader reads NAR bytes from a body in the block format. A body may end
// only between blocks; whether it ended where it should is the caller's to
// judge (it knows how many bytes it asked for).
type Reader struct {
	r    io.Reader
	left int64  // NAR bytes left of the raw block being read
	out  []byte // decoded bytes of a zstd block not yet read
	in   []byte // a zstd block
	dec  []byte // its decoded bytes
	wire int64
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

func (r *Reader) Read(p []byte) (int, error) {
	for {
		switch {
		case len(r.out) > 0:
			n := copy(p, r.out)
			r.out = r.out[n:]
			return n, nil
		case r.left > 0:
			n, err := r.r.Read(p[:min(int64(len(p)), r.left)])
			r.left -= int64(n)
			r.wire += int64(n)
			if err == io.EOF {
				if r.left == 0 {
					err = nil // the body ends with this block; the next Read says so
				} else {
					err = io.ErrUnexpectedEOF
				}
			}
			return n, err
		}
		if err := r.nextBlock(); err != nil {
			return 0, err
		}
	}
}

// nextBlock reads a block's header, and a zstd block whole.
func (r *Reader) nextBlock() error {
	var hdr [headerSize]byte
	n, err := io.ReadFull(r.r, hdr[:])
	r.wire += int64(n)
	if err == io.EOF {
		return io.EOF // between blocks
	}
	if err != nil {
		return unexpected(err)
	}
	kind := hdr[0]
	nar := binary.BigEndian.Uint32(hdr[1:])
	wire := binary.BigEndian.Uint32(hdr[5:])
	switch {
	case nar == 0 || nar > MaxBlock:
		return fmt.Errorf("%w: a block of %d bytes", ErrFormat, nar)
	case kind == kindRaw && wire == nar:
		r.left = int64(nar)
		return nil
	case kind != kindZstd || wire == 0 || wire >= nar:
		return fmt.Errorf("%w: block kind %d, %d bytes in %d", ErrFormat, kind, nar, wire)
	}
	if cap(r.in) < int(wire) {
		r.in = make([]byte, wire)
	}
	if cap(r.dec) < int(nar) {
		r.dec = make([]byte, 0, nar)
	}
	r.in = r.in[:wire]
	n, err = io.ReadFull(r.r, r.in)
	r.wire += int64(n)
	if err != nil {
		return unexpected(err)
	}
	d := decoders.Get().(*zstd.Decoder)
	out, err := d.DecodeAll(r.in, r.dec[:0])
	decoders.Put(d)
	if err != nil || len(out) != int(nar) {
		return fmt.Errorf("%w: a zstd block of %d bytes decodes to %d (%v)", ErrFormat, nar, len(out), err)
	}
	r.dec, r.out = out, out
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// WireBytes is how many bytes came over the wire so far.
func (r *Reader) WireBytes() int64 { return r.wire }
