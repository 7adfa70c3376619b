// Package nar writes Nix archives of file system trees, streaming.
//
// The output is byte-identical to `nix-store --dump`. Nothing is held in
// memory beyond one small buffer and one directory listing per level: framing
// and small files are batched into a buffer, larger file bodies go to the
// destination with io.Copy over an *io.LimitedReader wrapping the *os.File,
// which net.TCPConn (and hence net/http's response writer) turns into
// sendfile(2), and *os.File into copy_file_range(2) or splice(2).
//
// The format (nix-archive-1): str(s) is the length of s as a little-endian
// uint64, s, and zero padding to a multiple of 8. The archive is
// str("nix-archive-1") followed by the root node, where a node is
//
//	str("(") str("type") TYPE str(")")
//
// and TYPE is one of
//
//	str("regular") [str("executable") str("")] str("contents") str(CONTENTS)
//	str("symlink") str("target") str(TARGET)
//	str("directory") { str("entry") str("(") str("name") str(NAME) str("node") NODE str(")") }
//
// with directory entries in bytewise order of name. A file is executable
// when its owner execute bit (S_IXUSR) is set, exactly as Nix decides it;
// the group and other execute bits are ignored.
package nar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
)

// ErrChanged is wrapped by the error returned when a file changes size, or
// the tree otherwise changes under the serialiser, during a dump. The
// archive written so far is then unusable.
var ErrChanged = errors.New("file changed during dump")

// ErrUnsupported is wrapped by the error returned for a file that is neither
// a regular file, a directory nor a symbolic link (a socket, FIFO, device).
var ErrUnsupported = errors.New("unsupported file type")

// ErrOffset is wrapped by the error returned when the offset asked for is
// negative or beyond the end of the archive.
var ErrOffset = errors.New("offset out of range")

const (
	magic = "nix-archive-1"

	// bufSize is the size of the buffer framing and small files are
	// gathered in before being written.
	bufSize = 128 << 10

	// smallFile is the largest (remaining part of a) file body that is read
	// into the buffer rather than copied to the destination with io.Copy.
	// Copying lets a socket destination use sendfile, but costs a flush and
	// a few system calls per file, which is a bad trade for small files.
	smallFile = 32 << 10
)

// Framing token lengths, each a str() of a fixed string.
var (
	lenMagic   = strLen(int64(len(magic)))
	lenOpen    = strLen(1) // "("
	lenClose   = strLen(1) // ")"
	lenType    = strLen(4) // "type"
	lenRegular = strLen(7) // "regular"
	lenExec    = strLen(10) + strLen(0)
	lenContent = strLen(8) // "contents"
	lenSymlink = strLen(7) // "symlink"
	lenTarget  = strLen(6) // "target"
	lenDir     = strLen(9) // "directory"
	lenEntry   = strLen(5) // "entry"
	lenName    = strLen(4) // "name"
	lenNode    = strLen(4) // "node"
)

var zeros [8]byte

// pad returns the number of zero bytes that follow n bytes of string data.
func pad(n int64) int64 { return -n & 7 }

// strLen returns the encoded length of a string of n bytes.
func strLen(n int64) int64 { return 8 + n + pad(n) }

// testHookOpen, when set by tests, runs just before a regular file's body is
// opened.
var testHookOpen func(path string)

// Size returns the length in bytes of the NAR of the tree at path. It walks
// the tree with lstat (and readlink for symbolic links) only; no file
// contents are read.
func Size(path string) (int64, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, fmt.Errorf("nar: %w", err)
	}
	n, err := nodeSize(path, fi)
	if err != nil {
		return 0, err
	}
	return lenMagic + n, nil
}

func nodeSize(path string, fi fs.FileInfo) (int64, error) {
	n := lenOpen + lenType + lenClose
	mode := fi.Mode()
	switch {
	case mode.IsRegular():
		n += lenRegular + lenContent + strLen(fi.Size())
		if mode&0o100 != 0 {
			n += lenExec
		}
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return 0, fmt.Errorf("nar: %w", err)
		}
		n += lenSymlink + lenTarget + strLen(int64(len(target)))
	case mode.IsDir():
		n += lenDir
		entries, err := os.ReadDir(path)
		if err != nil {
			return 0, fmt.Errorf("nar: %w", err)
		}
		for _, e := range entries {
			child := join(path, e.Name())
			info, err := e.Info()
			if err != nil {
				return 0, fmt.Errorf("nar: lstat %s: %w", child, err)
			}
			m, err := nodeSize(child, info)
			if err != nil {
				return 0, err
			}
			n += lenEntry + lenOpen + lenName + strLen(int64(len(e.Name()))) + lenNode + m + lenClose
		}
	default:
		return 0, unsupported(path, mode)
	}
	return n, nil
}

// join returns the path of the entry name in the directory dir. Unlike
// filepath.Join it does not clean dir: "link/.." must mean what the kernel
// makes of it, as it does to Nix.
func join(dir, name string) string {
	if len(dir) > 0 && os.IsPathSeparator(dir[len(dir)-1]) {
		return dir + name
	}
	return dir + string(os.PathSeparator) + name
}

func unsupported(path string, mode fs.FileMode) error {
	return fmt.Errorf("nar: %s: %w (%v)", path, ErrUnsupported, mode.Type())
}

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, bufSize)
	return &b
}}

// Dump writes the NAR of the tree at path to w, omitting its first offset
// bytes. It returns the number of bytes written to w.
//
// Framing bytes before offset are skipped arithmetically, files that lie
// wholly before offset are not opened, and a file that offset falls inside
// is read from that point on. Every regular file contributes exactly the
// size lstat reported for it while walking, or Dump fails with an error
// wrapping ErrChanged. An offset beyond the end of the archive is an error
// wrapping ErrOffset (an offset equal to its length writes nothing).
//
// When w is a *net.TCPConn, an http.ResponseWriter for a response with a
// Content-Length, or an *os.File, large file bodies are transferred by the
// kernel (sendfile, copy_file_range, splice) without passing through user
// space.
func Dump(w io.Writer, path string, offset int64) (int64, error) {
	if offset < 0 {
		return 0, fmt.Errorf("nar: dump %s at %d: %w", path, offset, ErrOffset)
	}
	bp := bufPool.Get().(*[]byte)
	d := dumper{w: w, root: path, buf: (*bp)[:0], skip: offset}
	err := d.dump(path)
	if err == nil {
		err = d.flush()
	}
	*bp = d.buf[:0]
	bufPool.Put(bp)
	if err == nil && offset > d.pos {
		err = fmt.Errorf("nar: dump %s at %d: %w (archive is %d bytes)", path, offset, ErrOffset, d.pos)
	}
	return d.n, err
}

// dumper serialises one tree. pos is the position in the archive of the next
// byte produced; bytes before skip are produced only by advancing pos.
type dumper struct {
	w    io.Writer
	root string
	buf  []byte // pending output, cap bufSize
	pos  int64  // archive position of the next byte
	skip int64  // archive offset where output starts
	n    int64  // bytes written to w
}

func (d *dumper) dump(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("nar: %w", err)
	}
	if err := d.str(magic); err != nil {
		return err
	}
	return d.node(path, fi)
}

func (d *dumper) node(path string, fi fs.FileInfo) error {
	if err := d.strs("(", "type"); err != nil {
		return err
	}
	mode := fi.Mode()
	switch {
	case mode.IsRegular():
		if err := d.str("regular"); err != nil {
			return err
		}
		if mode&0o100 != 0 {
			if err := d.strs("executable", ""); err != nil {
				return err
			}
		}
		if err := d.str("contents"); err != nil {
			return err
		}
		if err := d.file(path, fi.Size()); err != nil {
			return err
		}
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("nar: %w", err)
		}
		if err := d.strs("symlink", "target", target); err != nil {
			return err
		}
	case mode.IsDir():
		if err := d.str("directory"); err != nil {
			return err
		}
		// os.ReadDir sorts by name with Go string comparison, which is
		// bytewise, as is the std::string ordering Nix uses.
		entries, err := os.ReadDir(path)
		if err != nil {
			return fmt.Errorf("nar: %w", err)
		}
		for _, e := range entries {
			child := join(path, e.Name())
			info, err := e.Info()
			if err != nil {
				return fmt.Errorf("nar: lstat %s: %w", child, markChange(err))
			}
			if err := d.strs("entry", "(", "name", e.Name(), "node"); err != nil {
				return err
			}
			if err := d.node(child, info); err != nil {
				return err
			}
			if err := d.str(")"); err != nil {
				return err
			}
		}
	default:
		return unsupported(path, mode)
	}
	return d.str(")")
}

// file writes str(contents) of the regular file at path, which lstat said
// is size bytes long.
func (d *dumper) file(path string, size int64) error {
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	if err := d.emit(hdr[:]); err != nil {
		return err
	}
	body := d.pos
	end := body + size
	if end > d.skip {
		start := max(d.skip-body, 0) // first byte of the body to write
		if err := d.body(path, size, start); err != nil {
			return err
		}
		d.pos = end
	} else {
		d.pos = end
	}
	return d.emit(zeros[:pad(size)])
}

// body writes bytes [start, size) of the file at path.
func (d *dumper) body(path string, size, start int64) error {
	if testHookOpen != nil {
		testHookOpen(path)
	}
	rem := size - start

	if rem <= smallFile {
		// Read the body into the buffer, asking for one byte more than
		// expected so that a file that has grown is noticed.
		if int64(cap(d.buf)-len(d.buf)) < rem+1 {
			if err := d.flush(); err != nil {
				return err
			}
		}
		b := d.buf[len(d.buf) : len(d.buf)+int(rem)+1]
		n, err := readSmall(path, b, start)
		if err != nil {
			return fmt.Errorf("nar: %w", markChange(err))
		}
		if int64(n) != rem {
			return changed(path, size, start+int64(n), n > int(rem))
		}
		d.buf = d.buf[:len(d.buf)+n]
		return nil
	}

	f, err := openFile(path)
	if err != nil {
		return fmt.Errorf("nar: %w", markChange(err))
	}
	defer f.Close()
	if err := d.flush(); err != nil {
		return err
	}
	if start > 0 {
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("nar: %w", markChange(err))
		}
	}
	// An *io.LimitedReader over an *os.File is what net.TCPConn.ReadFrom
	// hands to sendfile, and *os.File.ReadFrom to copy_file_range and
	// splice. The buffer is empty now, so it serves as the copy buffer when
	// w has no such fast path.
	lr := &io.LimitedReader{R: f, N: rem}
	n, err := io.CopyBuffer(d.w, lr, d.buf[:cap(d.buf)])
	d.n += n
	if err != nil {
		return fmt.Errorf("nar: copying %s: %w", path, markChange(err))
	}
	if n != rem {
		return changed(path, size, start+n, false)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("nar: %w", err)
	}
	if fi.Size() != size {
		return changed(path, size, fi.Size(), true)
	}
	return nil
}

// markChange additionally wraps ErrChanged around the error of a file
// operation that failed because the file is no longer what the walk found:
// gone, or replaced by a directory, a symbolic link or a FIFO.
func markChange(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EISDIR) ||
		errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENOTDIR) ||
		errors.Is(err, syscall.ESPIPE) {
		return fmt.Errorf("%w: %w", ErrChanged, err)
	}
	return err
}

func changed(path string, size, now int64, grown bool) error {
	how := "shrunk"
	if grown {
		how = "grown"
	}
	return fmt.Errorf("nar: %s: %w: %s from %d bytes (got %d)", path, ErrChanged, how, size, now)
}

// strs writes str(s) for each of ss.
func (d *dumper) strs(ss ...string) error {
	for _, s := range ss {
		if err := d.str(s); err != nil {
			return err
		}
	}
	return nil
}

// str writes str(s).
func (d *dumper) str(s string) error {
	n := int64(len(s))
	total := strLen(n)
	if d.pos+total <= d.skip {
		d.pos += total
		return nil
	}
	if d.pos >= d.skip && int64(cap(d.buf)-len(d.buf)) >= total {
		d.buf = binary.LittleEndian.AppendUint64(d.buf, uint64(n))
		d.buf = append(d.buf, s...)
		d.buf = append(d.buf, zeros[:pad(n)]...)
		d.pos += total
		return nil
	}
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(n))
	if err := d.emit(hdr[:]); err != nil {
		return err
	}
	if err := d.emit([]byte(s)); err != nil {
		return err
	}
	return d.emit(zeros[:pad(n)])
}

// emit writes p at the current position, leaving out whatever lies before
// skip.
func (d *dumper) emit(p []byte) error {
	end := d.pos + int64(len(p))
	if end <= d.skip {
		d.pos = end
		return nil
	}
	if d.pos < d.skip {
		p = p[d.skip-d.pos:]
		d.pos = d.skip
	}
	for len(p) > 0 {
		if len(d.buf) == cap(d.buf) {
			if err := d.flush(); err != nil {
				return err
			}
		}
		m := copy(d.buf[len(d.buf):cap(d.buf)], p)
		d.buf = d.buf[:len(d.buf)+m]
		p = p[m:]
		d.pos += int64(m)
	}
	return nil
}

func (d *dumper) flush() error {
	if len(d.buf) == 0 {
		return nil
	}
	n, err := d.w.Write(d.buf)
	d.n += int64(n)
	if err == nil && n != len(d.buf) {
		err = io.ErrShortWrite
	}
	d.buf = d.buf[:0]
	if err != nil {
		return fmt.Errorf("nar: writing NAR of %s: %w", d.root, err)
	}
	return nil
}
