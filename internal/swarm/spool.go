package swarm

import (
	"fmt"
	"io"
	"os"
)

// spool holds a NAR while it arrives: the transfer writes at the byte it
// reached, the reader reads what may be handed out.
type spool interface {
	io.ReaderAt
	io.WriterAt
	// direct returns the spool's own memory for [off, off+n), to read
	// into without a copy, or nil when the spool is a file.
	direct(off, n int64) []byte
	// writeTo writes [off, off+n) to w (only one reader of a spool at a
	// time: a file spool's offset is the reader's).
	writeTo(w io.Writer, off, n int64) (int64, error)
	Close() error
}

// newSpool returns a spool for a NAR of size bytes: memory when it is
// small and the memory budget allows, else an unlinked temporary file.
func (f *Finder) newSpool(size int64) (spool, error) {
	if size <= MemorySpoolMax && f.memory.TryAcquire(size) {
		return &memSpool{b: make([]byte, size), release: func() { f.memory.Release(size) }}, nil
	}
	file, err := os.CreateTemp(f.opt.SpoolDir, "nar-*.spool")
	if err != nil {
		return nil, fmt.Errorf("spool file: %w", err)
	}
	// Unlinked at once: nothing is left behind, whatever happens.
	os.Remove(file.Name())
	return fileSpool{file}, nil
}

type memSpool struct {
	b       []byte
	release func()
}

func (m *memSpool) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memSpool) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	// A write of the spool's own memory (direct) is already in place.
	if len(p) > 0 && &p[0] == &m.b[off] {
		return len(p), nil
	}
	return copy(m.b[off:], p), nil
}

func (m *memSpool) direct(off, n int64) []byte { return m.b[off : off+n] }

func (m *memSpool) writeTo(w io.Writer, off, n int64) (int64, error) {
	k, err := w.Write(m.b[off : off+n])
	if err == nil && int64(k) < n {
		err = io.ErrShortWrite
	}
	return int64(k), err
}

func (m *memSpool) Close() error {
	if m.release != nil {
		m.release()
		m.release = nil
	}
	m.b = nil
	return nil
}

type fileSpool struct{ *os.File }

func (fileSpool) direct(int64, int64) []byte { return nil }

// writeTo hands w the file itself, limited: a socket's ReadFrom (net/http's
// too) sends it with sendfile.
func (f fileSpool) writeTo(w io.Writer, off, n int64) (int64, error) {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	k, err := io.Copy(w, &io.LimitedReader{R: f.File, N: n})
	if err == nil && k < n {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}
