// Package compress is zstd on the peer link: chosen per transfer, never
// what Nix sees. The asker offers it when its link to the holder is slower
// than compression (AcceptBelow, measured as wire bytes a second); the
// holder takes it when a sample of the bytes compresses (Sample). Both
// sides pool their coders, so a transfer costs no allocation of encoder
// state.
package compress

import (
	"bytes"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// AcceptBelow: an asker whose link to a holder carries fewer wire bytes a
// second than this offers compression (one core compresses binaries at
// several times this with the fastest level, and decompresses faster
// still); on a faster link the CPU would be the bottleneck.
const AcceptBelow = 100 << 20

// SampleSize is how much of a NAR Sample reads to judge it.
const SampleSize = 128 << 10

// worthRatio: compression is used when the sample shrinks below this.
const worthRatio = 0.9

var encoders = sync.Pool{New: func() any {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	return e
}}

var decoders = sync.Pool{New: func() any {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	return d
}}

// Sample reads up to SampleSize bytes of r and tells whether compressing
// them pays. It returns r again as a reader of everything, sample
// included.
func Sample(r io.Reader) (io.Reader, bool, error) {
	head := make([]byte, SampleSize)
	n, err := io.ReadFull(r, head)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	if err != nil {
		return nil, false, err
	}
	head = head[:n]
	whole := io.MultiReader(bytes.NewReader(head), r)
	if n < 4<<10 {
		return whole, false, nil // not worth a frame
	}
	e := encoders.Get().(*zstd.Encoder)
	out := e.EncodeAll(head, make([]byte, 0, n))
	encoders.Put(e)
	return whole, float64(len(out)) < worthRatio*float64(n), nil
}

// Writer compresses into w; Close flushes the stream (it does not close w)
// and returns the encoder to the pool.
type Writer struct{ e *zstd.Encoder }

// NewWriter returns a Writer into w.
func NewWriter(w io.Writer) *Writer {
	e := encoders.Get().(*zstd.Encoder)
	e.Reset(w)
	return &Writer{e}
}

func (w *Writer) Write(p []byte) (int, error) { return w.e.Write(p) }

// ReadFrom lets io.Copy hand the encoder large blocks.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) { return w.e.ReadFrom(r) }

// Close ends the stream.
func (w *Writer) Close() error {
	if w.e == nil {
		return nil
	}
	err := w.e.Close()
	encoders.Put(w.e)
	w.e = nil
	return err
}

// Reader decompresses r; Close returns the decoder to the pool and closes
// r if it is a Closer.
type Reader struct {
	d *zstd.Decoder
	r io.Reader
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) (*Reader, error) {
	d := decoders.Get().(*zstd.Decoder)
	if err := d.Reset(r); err != nil {
		decoders.Put(d)
		return nil, err
	}
	return &Reader{d: d, r: r}, nil
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.d == nil {
		return 0, io.ErrClosedPipe
	}
	return r.d.Read(p)
}

// Close releases the decoder and closes the underlying reader.
func (r *Reader) Close() error {
	if r.d != nil {
		r.d.Reset(nil)
		decoders.Put(r.d)
		r.d = nil
	}
	if c, ok := r.r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Counter counts the bytes read through it: the wire bytes of a transfer.
type Counter struct {
	R io.Reader
	N int64
}

func (c *Counter) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
