// Package store defines the one contract every source of store paths in peerix
// implements: the machine's own Nix store, LAN peers, P2P peers, and the filter
// and verifier that wrap them. A Store answers narinfo by hash part and NARs by
// the reference (URL) its narinfo handed out.
package store

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

// Sentinel errors callers branch on. HTTP maps ErrNotFound to 404 and
// ErrRefused to 404 too (a refused path must look exactly like an absent one
// to the outside), ErrBadRequest to 400.
var (
	ErrNotFound   = errors.New("not found")
	ErrRefused    = errors.New("refused")
	ErrBadRequest = errors.New("bad request")
	// ErrOffset: a NAR was asked for from beyond its end (HTTP 416).
	ErrOffset = errors.New("offset beyond the end of the NAR")
)

// Store is a source of store paths.
type Store interface {
	// NarInfo returns the path whose 32-character hash part is hash, or an
	// error wrapping ErrNotFound. hash has been checked with ValidHash.
	// The narinfo is never modified once returned, by the store or by its
	// callers; a store may return the same one again while the path is
	// unchanged, and callers may memoise on that (NarInfoMemo).
	NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error)

	// NAR opens the NAR that a narinfo of this store named in its URL field
	// (the "nar/..." form), positioned at offset. An unknown or malformed url
	// is an error wrapping ErrNotFound or ErrBadRequest.
	NAR(ctx context.Context, url string, offset int64) (*NAR, error)
}

// NAROpener is implemented by a store that can open a NAR for a narinfo
// it has just returned without looking the path up again (the local
// store): a wrapper that asked NarInfo to judge the path, the filter,
// opens the NAR with it. ni must come from the store's own NarInfo; when
// it is no longer the store's current narinfo of the path, NAROf is NAR.
type NAROpener interface {
	NAROf(ctx context.Context, ni *narinfo.NarInfo, url string, offset int64) (*NAR, error)
}

// NAR is an open NAR stream, positioned at the offset it was opened at.
// Reader may implement io.WriterTo; the local store's does, so that file
// contents go to a socket with sendfile.
type NAR struct {
	// Size is the size of the whole NAR, not of what remains after the
	// offset. Every store knows it (narinfos carry NarSize), so HTTP can
	// always answer Content-Length and ranges.
	Size int64
	io.ReadCloser
}

// WriteTo lets io.Copy reach the stream's own WriteTo (the local store's
// goes to sendfile); embedding alone would hide it.
func (n *NAR) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := n.ReadCloser.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return pipeline(w, n.ReadCloser)
}

// pipeline copies src to w with reading (and whatever the reader does on
// the way: hashing, for verified peer streams) in one goroutine and writing
// in another, so the two overlap; buffers are large, so syscalls are few.
func pipeline(w io.Writer, src io.Reader) (int64, error) {
	const depth = 4
	type chunk struct {
		buf *[]byte
		n   int
	}
	full := make(chan chunk, depth)
	free := make(chan *[]byte, depth)
	for range depth {
		free <- copyBuffers.Get().(*[]byte)
	}
	stop := make(chan struct{})
	var readErr error
	go func() {
		defer close(full)
		for {
			var buf *[]byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			n, err := io.ReadFull(src, *buf)
			if n > 0 {
				full <- chunk{buf, n}
			} else {
				free <- buf
			}
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					readErr = err
				}
				return
			}
		}
	}()
	var written int64
	var writeErr error
	for c := range full {
		if writeErr == nil {
			n, err := w.Write((*c.buf)[:c.n])
			written += int64(n)
			if err == nil && n < c.n {
				err = io.ErrShortWrite
			}
			if err != nil {
				writeErr = err
				close(stop)
			}
		}
		free <- c.buf
	}
	// The reader has returned (full is closed); every buffer is back.
	for range depth {
		copyBuffers.Put(<-free)
	}
	if writeErr != nil {
		return written, writeErr
	}
	return written, readErr
}

var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 256<<10)
	return &b
}}

// HashLen is the length of a store path's hash part.
const HashLen = 32

// ValidHash reports whether s is a 32-character Nix base-32 hash part
// (alphabet 0123456789abcdfghijklmnpqrsvwxyz).
func ValidHash(s string) bool {
	return len(s) == HashLen && ValidBase32(s)
}

// ValidBase32 reports whether s is non-empty and all Nix base-32 characters.
func ValidBase32(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBase32[s[i]] {
			return false
		}
	}
	return true
}

var isBase32 = func() (t [256]bool) {
	for _, c := range "0123456789abcdfghijklmnpqrsvwxyz" {
		t[c] = true
	}
	return t
}()

// FirstOf combines the peer sources of a daemon (LAN, P2P) into one store:
// all sources are asked for a narinfo at once and the first that has the
// path answers (so a LAN miss, which waits for broadcast answers, does not
// delay a P2P hit); a NAR comes from the source whose URL shape it has
// (every source hands out URLs of its own and refuses others with
// ErrBadRequest).
func FirstOf(sources ...Store) Store {
	if len(sources) == 1 {
		return sources[0]
	}
	return firstOf(sources)
}

type firstOf []Store

func (f firstOf) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		ni  *narinfo.NarInfo
		err error
	}
	results := make(chan result, len(f))
	for _, s := range f {
		go func() {
			ni, err := s.NarInfo(ctx, hash)
			results <- result{ni, err}
		}()
	}
	var errs []error
	for range f {
		r := <-results
		if r.err == nil {
			return r.ni, nil
		}
		errs = append(errs, r.err)
	}
	return nil, errors.Join(errs...)
}

func (f firstOf) NAR(ctx context.Context, url string, offset int64) (*NAR, error) {
	var errs []error
	for _, s := range f {
		n, err := s.NAR(ctx, url, offset)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, ErrBadRequest) {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}
