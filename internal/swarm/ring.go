package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A ring: a large NAR from one proven holder passes through memory.
//
// A NAR that may stream to Nix as it arrives (large, from a proven
// holder: see publish) need not be kept whole while it does: once the
// reader had a byte and the hash covered it, nothing reads it again, as
// long as that holder is the only one to send and every byte may go
// through. Such a transfer starts in a ringSpool, ringSize bytes of memory
// the holder's bytes are read into, hashed from and written to Nix's
// socket from, with no spool file written and read back. The holder waits
// for the reader when the ring is full (backpressure from Nix, which the
// holder's stall and rate watch does not count against it).
//
// The ring becomes a file (fallback) for the rest of the transfer as soon
// as its conditions end: another holder is to send (one joins, or takes
// over after the first failed), a byte may no longer go through (the
// holder is no longer proven), or the reader kept the holder waiting for
// StallTimeout. The file then holds the bytes from where the reader or the
// hash had reached on; the bytes before that are gone, but the transfer
// keeps the SHA-256 of the NAR up to the fallback (mark), so that if the
// NAR fails its hash, the next attempt still tells whether those bytes
// were right: all of them came from the ring's one holder, so a
// difference there blames it, and bytes Nix already had are judged by the
// same digest.

// ringSize is the memory a NAR streams through.
const ringSize = 8 << 20

// minLend: the writer waits for at least this much room (or the rest of
// its range, or up to the ring's end) before reading into the ring.
const minLend = 64 << 10

// maxRingWrite bounds one write to the reader's socket, so that room
// comes back to the holder while Nix reads.
const maxRingWrite = 1 << 20

type ringSpool struct {
	dir     string
	release func()

	mu      sync.Mutex
	buf     []byte // the ring: byte i of the NAR at buf[i%ringSize]; made by the first lend, dropped by toFile
	written int64  // bytes [0, written) arrived
	read    int64  // the reader is done with the bytes below
	hashed  int64  // the hash covers the bytes below
	file    *os.File
	kept    int64         // once a file: it holds the bytes from here on
	changed chan struct{} // closed and replaced when read, hashed or file change while waiting
	waiting bool          // a writer waits for changed
	// slow: the writer waited for the reader longer than it may; the
	// transfer falls back to a file.
	slow atomic.Bool
}

// newRing returns a ring spool for a NAR read from offset on, or nil when
// the memory budget has no room.
func (f *Finder) newRing(offset int64) *ringSpool {
	if !f.memory.TryAcquire(ringSize) {
		return nil
	}
	return &ringSpool{
		dir:     f.opt.SpoolDir,
		release: func() { f.memory.Release(ringSize) },
		read:    offset,
		changed: make(chan struct{}),
	}
}

var errRingGone = errors.New("bytes no longer in the spool")

// wake tells a waiting writer that room may have come. r.mu is held.
func (r *ringSpool) wake() {
	if r.waiting {
		r.waiting = false
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// isFile reports whether the ring fell back to a file.
func (r *ringSpool) isFile() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.file != nil
}

// ringWait is what a writer needs to wait for a ring's room.
type ringWait struct {
	// waits goes up by one when the writer starts waiting and when it
	// stops (odd while it waits), for the holder's watch.
	waits   atomic.Int64
	maxWait time.Duration // after waiting this long, slow is called once
	slow    func()
	timer   *time.Timer // reused from wait to wait
}

// lend returns ring memory to read the next at most n bytes at off into,
// once the reader and the hash are done with what was there, or nil once
// the ring is a file.
func (r *ringSpool) lend(ctx context.Context, off, n int64, w *ringWait) ([]byte, error) {
	waited := false
	var expired <-chan time.Time
	defer func() {
		if waited {
			w.timer.Stop()
			w.waits.Add(1)
		}
	}()
	for {
		r.mu.Lock()
		if r.file != nil {
			r.mu.Unlock()
			return nil, nil
		}
		if r.buf == nil {
			r.buf = make([]byte, ringSize)
		}
		size := int64(ringSize)
		i := off % size
		want := min(n, size-i)
		room := min(r.read, r.hashed) + size - off
		if room >= min(want, minLend) {
			p := r.buf[i : i+min(want, room)]
			r.mu.Unlock()
			return p, nil
		}
		r.waiting = true
		ch := r.changed
		r.mu.Unlock()
		if !waited {
			waited = true
			w.waits.Add(1)
			if w.timer == nil {
				w.timer = time.NewTimer(w.maxWait)
			} else {
				w.timer.Reset(w.maxWait)
			}
			expired = w.timer.C
		}
		select {
		case <-ch:
		case <-expired:
			expired = nil
			r.slow.Store(true)
			w.slow()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// consumed tells the ring the reader is done with the bytes below pos.
func (r *ringSpool) consumed(pos int64) { r.advance(&r.read, pos) }

// hashedTo tells the ring the hash covers the bytes below pos.
func (r *ringSpool) hashedTo(pos int64) { r.advance(&r.hashed, pos) }

// advance moves mark (r.read or r.hashed) up to pos, waking a writer
// waiting for the room.
func (r *ringSpool) advance(mark *int64, pos int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pos > *mark {
		*mark = pos
		r.wake()
	}
}

// toFile makes the ring a file for the rest of the transfer: the bytes
// arrived from where both the reader and the hash (at hashed) had reached
// on are written to it, those before are gone.
func (r *ringSpool) toFile(hashed int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		return nil
	}
	file, err := os.CreateTemp(r.dir, "nar-*.spool")
	if err != nil {
		return fmt.Errorf("spool file: %w", err)
	}
	os.Remove(file.Name()) // unlinked at once, as newSpool's
	r.hashed = hashed
	keep := min(r.read, r.hashed)
	size := int64(ringSize)
	for off := keep; off < r.written; {
		i := off % size
		p := r.buf[i : i+min(r.written-off, size-i)]
		if _, err := file.WriteAt(p, off); err != nil {
			file.Close()
			return fmt.Errorf("spool file: %w", err)
		}
		off += int64(len(p))
	}
	r.file, r.kept = file, keep
	// A writer may still read into memory it was lent, and the reader
	// write from it: the garbage collector frees it after them; what the
	// writer reads goes to the file by WriteAt.
	r.buf = nil
	if r.release != nil {
		r.release()
		r.release = nil
	}
	r.wake()
	return nil
}

func (r *ringSpool) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	if r.file != nil {
		file, kept := r.file, r.kept
		r.mu.Unlock()
		if off < kept {
			return 0, errRingGone
		}
		return file.ReadAt(p, off)
	}
	defer r.mu.Unlock()
	size := int64(ringSize)
	if off < min(r.read, r.hashed) || off+int64(len(p)) > r.written {
		return 0, errRingGone
	}
	n := 0
	for n < len(p) {
		i := (off + int64(n)) % size
		n += copy(p[n:], r.buf[i:])
	}
	return n, nil
}

func (r *ringSpool) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	if r.file != nil {
		file := r.file
		r.mu.Unlock()
		return file.WriteAt(p, off)
	}
	defer r.mu.Unlock()
	size := int64(ringSize)
	if len(p) > 0 && (off != r.written || &p[0] != &r.buf[off%size]) {
		return 0, fmt.Errorf("a ring takes only the memory it lent, in order")
	}
	r.written += int64(len(p))
	return len(p), nil
}

// direct returns the ring's memory of [off, off+n) up to the ring's end
// (the hash reads from it), or nil once it is a file.
func (r *ringSpool) direct(off, n int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		return nil
	}
	size := int64(ringSize)
	i := off % size
	return r.buf[i : i+min(n, size-i)]
}

// writeTo writes [off, off+n) to w from the ring's memory, a piece at a
// time, giving the holder room as it goes; from the file once it is one.
func (r *ringSpool) writeTo(w io.Writer, off, n int64) (int64, error) {
	var total int64
	for total < n {
		r.mu.Lock()
		if r.file != nil {
			file := r.file
			r.mu.Unlock()
			k, err := fileSpool{file}.writeTo(w, off+total, n-total)
			return total + k, err
		}
		size := int64(ringSize)
		i := (off + total) % size
		p := r.buf[i : i+min(n-total, size-i, maxRingWrite)]
		r.mu.Unlock()
		k, err := w.Write(p)
		total += int64(k)
		r.consumed(off + total)
		if err == nil && k < len(p) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (r *ringSpool) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.release != nil {
		r.release()
		r.release = nil
	}
	r.buf = nil
	if r.file != nil {
		return r.file.Close()
	}
	return nil
}
