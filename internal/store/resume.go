package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Opener opens a source of a NAR positioned at offset. Each call may pick
// another source (the next peer); when none is left it returns an error.
type Opener func(ctx context.Context, offset int64) (io.ReadCloser, error)

// StallTimeout is how long a source may send nothing before it is dropped
// and the transfer resumes elsewhere.
var StallTimeout = 30 * time.Second

// MaxResumes bounds how often one transfer switches sources.
const MaxResumes = 8

// Resuming opens the bytes [offset, size) of a NAR through open, and when the
// source breaks, stalls or ends early, reopens at the byte reached, so the
// reader sees one clean stream. The first source is opened before Resuming
// returns, so "nobody has it" is known before any response is started.
func Resuming(ctx context.Context, size, offset int64, open Opener) (io.ReadCloser, error) {
	r := &resuming{ctx: ctx, open: open, size: size, pos: offset}
	if err := r.next(); err != nil {
		return nil, err
	}
	return r, nil
}

type resuming struct {
	ctx       context.Context
	open      Opener
	size, pos int64
	opens     int

	mu  sync.Mutex
	cur io.ReadCloser
	idl *time.Timer
	err error // why the last source was dropped
}

func (r *resuming) next() error {
	if r.opens > MaxResumes {
		return fmt.Errorf("NAR transfer gave up after %d sources at byte %d: %w", r.opens, r.pos, r.err)
	}
	r.opens++
	src, err := r.open(r.ctx, r.pos)
	if err != nil {
		if r.err != nil {
			return fmt.Errorf("resuming at byte %d after %v: %w", r.pos, r.err, err)
		}
		return err
	}
	r.mu.Lock()
	r.cur = src
	// A stalled source is closed under the reader, which then fails and
	// resumes from another source.
	r.idl = time.AfterFunc(StallTimeout, func() { src.Close() })
	r.mu.Unlock()
	return nil
}

func (r *resuming) drop(err error) {
	r.mu.Lock()
	if r.cur != nil {
		r.idl.Stop()
		r.cur.Close()
		r.cur = nil
	}
	r.mu.Unlock()
	r.err = err
}

func (r *resuming) Read(p []byte) (int, error) {
	for {
		if r.pos >= r.size {
			r.drop(nil)
			return 0, io.EOF
		}
		if r.cur == nil {
			if err := r.ctx.Err(); err != nil {
				return 0, err
			}
			if err := r.next(); err != nil {
				return 0, err
			}
		}
		if rest := r.size - r.pos; int64(len(p)) > rest {
			p = p[:rest]
		}
		n, err := r.cur.Read(p)
		r.pos += int64(n)
		if n > 0 {
			r.idl.Reset(StallTimeout)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the source ended before the NAR did
			}
			r.drop(err)
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resuming) Close() error {
	r.drop(nil)
	return nil
}
