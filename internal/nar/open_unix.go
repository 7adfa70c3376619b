//go:build unix

package nar

import (
	"io/fs"
	"os"
	"syscall"
)

// openFlags open a file for reading without following a symbolic link that
// has replaced it since the walk, and without blocking on a FIFO that has.
const openFlags = syscall.O_RDONLY | syscall.O_CLOEXEC | syscall.O_NOFOLLOW | syscall.O_NONBLOCK

// open opens the regular file at path for reading. It bypasses os.Open,
// which on Linux costs five further system calls per file (setting
// O_NONBLOCK, trying epoll, which refuses regular files, and undoing
// it) that matter for trees of many small files.
func open(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, openFlags, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}

// readSmall reads the file at path from offset off into b, until b is full
// or the file ends, and returns the number of bytes read. b is one byte
// longer than the caller expects to read, to notice a file that has grown.
func readSmall(path string, b []byte, off int64) (int, error) {
	fd, err := open(path)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	n := 0
	for n < len(b) {
		m, err := syscall.Pread(fd, b[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
		// A short read of a regular file means its end: reading on to
		// see a 0 would cost a system call per file. If the short read
		// was spurious, which POSIX does not allow for regular files,
		// the caller reports a change rather than writing a wrong NAR.
		if n == len(b)-1 {
			break
		}
	}
	return n, nil
}

// openFile opens the regular file at path as an *os.File, which io.Copy
// can hand to sendfile, copy_file_range or splice.
func openFile(path string) (*os.File, error) {
	fd, err := open(path)
	if err != nil {
		return nil, err
	}
	// The descriptor has O_NONBLOCK set, which regular files ignore; as it
	// is not a pollable descriptor, os.NewFile leaves it out of the poller.
	return os.NewFile(uintptr(fd), path), nil
}
