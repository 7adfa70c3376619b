package nar

import (
	"errors"
	"io"
	"sync"
)

// ErrClosed is returned by a reader from Open once it has been closed.
var ErrClosed = errors.New("nar: reader closed")

// errRestart stops a Read goroutine that WriteTo replaces.
var errRestart = errors.New("nar: dump restarted")

// Open returns a reader of the NAR of the tree at path, starting at offset.
// Nothing is done until it is first read.
//
// The reader implements io.WriterTo by calling Dump, so io.Copy to a
// net.Conn, an http.ResponseWriter or an *os.File reaches the kernel's
// zero-copy paths for file contents. Read serves the archive through an
// io.Pipe fed by a goroutine started on the first Read. A WriteTo after some
// Reads stops that goroutine and dumps the rest directly, from the first byte
// not yet returned. Close stops the goroutine, waits for it, and releases
// everything; it may be called while a Read is blocked, which it unblocks.
// Reads and WriteTo must not be called concurrently with each other.
func Open(path string, offset int64) io.ReadCloser {
	return &reader{path: path, off: offset}
}

type reader struct {
	path string

	mu     sync.Mutex
	off    int64 // archive offset of the next byte the caller gets
	pr     *io.PipeReader
	done   chan struct{} // closed when the Read goroutine has returned
	err    error         // sticky: io.EOF after a complete WriteTo, or its error
	closed bool
}

func (r *reader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrClosed
	}
	if r.err != nil {
		r.mu.Unlock()
		return 0, r.err
	}
	if r.pr == nil {
		pr, pw := io.Pipe()
		done := make(chan struct{})
		r.pr, r.done = pr, done
		go func(path string, off int64) {
			defer close(done)
			_, err := Dump(pw, path, off)
			pw.CloseWithError(err) // nil: EOF
		}(r.path, r.off)
	}
	pr := r.pr
	r.mu.Unlock()

	n, err := pr.Read(p)

	r.mu.Lock()
	r.off += int64(n)
	if r.closed {
		err = ErrClosed
	}
	r.mu.Unlock()
	return n, err
}

// stop ends the Read goroutine, if any, and waits for it. r.mu is held.
func (r *reader) stop(cause error) {
	if r.pr == nil {
		return
	}
	r.pr.CloseWithError(cause)
	<-r.done
	r.pr, r.done = nil, nil
}

// WriteTo writes the rest of the archive to w with Dump.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrClosed
	}
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		if err == io.EOF {
			return 0, nil
		}
		return 0, err
	}
	r.stop(errRestart)
	off := r.off
	r.mu.Unlock()

	n, err := Dump(w, r.path, off)

	r.mu.Lock()
	r.off += n
	if err != nil {
		r.err = err
	} else {
		r.err = io.EOF
	}
	r.mu.Unlock()
	return n, err
}

// Close stops the Read goroutine, if one was started, and waits for it to
// return.
func (r *reader) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	pr, done := r.pr, r.done
	r.pr, r.done = nil, nil
	r.mu.Unlock()
	if pr != nil {
		pr.CloseWithError(ErrClosed)
		<-done
	}
	return nil
}
