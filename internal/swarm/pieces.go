package swarm

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/peerix/peerix/internal/store"
)

// Several holders at once.
//
// On the internet the bottleneck of a transfer is the holder's uplink, not
// our downlink: a NAR that several holders have is fetched from up to
// maxSources of them at once, in pieces. Each holder takes the next piece
// in NAR order as soon as it finished the last, so fast holders take more
// and a slow one holds up at most a piece; a holder that breaks, stalls or
// crawls gives its piece back and leaves. The pieces are hashed in order
// as the prefix of finished ones grows, so the NarHash check at the end
// costs nothing extra, and bytes reach the reader in order, as trust
// allows (only whole and verified, or from proven holders). A NAR from
// several holders that fails its hash is fetched again from one holder at
// a time (each attempt then blames its sender, and the bytes of the failed
// attempt that differ from the verified NAR blame theirs).

const (
	// maxSources bounds the holders one transfer uses at once.
	maxSources = 4
	// multiSourceMin: smaller NARs come from one holder (a piece request
	// costs a round trip; for a small NAR it is most of the time).
	multiSourceMin = 4 << 20
	// Piece sizes: about piecesPerSource pieces for each holder, between
	// minPiece and maxPiece.
	piecesPerSource = 8
	minPiece        = 1 << 20
	maxPiece        = 16 << 20
)

// several returns up to maxSources holders to fetch from at once: those
// not under suspicion, best first.
func (t *transfer) several() []candidate {
	cands, others := t.x.sources(t.nar.NarHash)
	all := make([]candidate, 0, len(cands)+len(others))
	all = append(all, cands...)
	for _, h := range others {
		all = append(all, candidate{h: h})
	}
	ids := make([]string, 0, len(all))
	for _, c := range all {
		if !t.suspect[c.h.ID()] && t.f.rep.Available(c.h.ID()) {
			ids = append(ids, c.h.ID())
		}
	}
	var out []candidate
	for _, id := range t.f.rep.Rank(ids) {
		for _, c := range all {
			if c.h.ID() == id {
				out = append(out, c)
				break
			}
		}
		if len(out) == maxSources {
			break
		}
	}
	return out
}

// piece is [start, end) of the NAR.
type piece struct {
	start, end int64
	state      pieceState
	from       string // the holder that sent it, once done
}

type pieceState uint8

const (
	pending pieceState = iota
	taken
	done
)

// pieceSize for a NAR of size from n holders.
func pieceSize(size int64, n int) int64 {
	s := size / int64(n*piecesPerSource)
	s = max(minPiece, min(maxPiece, s))
	return (s + 64<<10 - 1) &^ (64<<10 - 1) // whole 64 KiB blocks
}

// fillPieces fetches the whole NAR (t.pos is 0) from srcs at once. It
// returns when every piece is done, or when every holder left with pieces
// still pending (the done ones are kept: t.pos is the prefix they make).
func (t *transfer) fillPieces(ctx context.Context, srcs []candidate) error {
	size := t.nar.Size
	ps := pieceSize(size, len(srcs))
	var pieces []piece
	for s := int64(0); s < size; s += ps {
		pieces = append(pieces, piece{start: s, end: min(s+ps, size)})
	}
	proven := size >= CutThroughMin
	for _, c := range srcs {
		proven = proven && t.f.rep.Proven(c.h.ID())
	}

	var mu sync.Mutex
	progress := make(chan struct{}, 1)
	notify := func() {
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	// take hands a holder the first pending piece, in NAR order.
	take := func() (int, piece, bool) {
		mu.Lock()
		defer mu.Unlock()
		for i := range pieces {
			if pieces[i].state == pending {
				pieces[i].state = taken
				return i, pieces[i], true
			}
		}
		return 0, piece{}, false
	}
	var wg sync.WaitGroup
	var errsMu sync.Mutex
	var errs []error
	for _, c := range srcs {
		t.opens[c.h.ID()]++
		t.nOpens++
		wg.Go(func() {
			defer notify()
			for {
				i, p, ok := take()
				if !ok {
					return
				}
				pos := p.start
				err := t.copyRange(ctx, c, p.start, p.end, func(b []byte) error {
					if _, err := t.spool.WriteAt(b, pos); err != nil {
						return fmt.Errorf("%w: %w", errSpool, err)
					}
					pos += int64(len(b))
					return nil
				})
				mu.Lock()
				if err != nil {
					pieces[i].state = pending
				} else {
					pieces[i].state, pieces[i].from = done, c.h.ID()
				}
				mu.Unlock()
				notify()
				if err != nil {
					if ctx.Err() == nil && !errors.Is(err, errSpool) {
						t.f.failed(ctx, c.h.ID(), t.x, err, "NAR")
					}
					errsMu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", c.h.ID(), err))
					errsMu.Unlock()
					return
				}
			}
		})
	}
	allGone := make(chan struct{})
	go func() { wg.Wait(); close(allGone) }()

	// Hash the prefix of done pieces as it grows, and hand it on.
	next := 0
	for {
		mu.Lock()
		var ready []piece
		for next < len(pieces) && pieces[next].state == done {
			ready = append(ready, pieces[next])
			next++
		}
		mu.Unlock()
		for _, p := range ready {
			if err := t.hashSpool(p.start, p.end); err != nil {
				return err
			}
			t.recordSpan(p.from, p.start, p.end)
			t.publish(proven)
		}
		if next == len(pieces) {
			<-allGone
			return nil
		}
		select {
		case <-progress:
		case <-allGone:
			// Every holder left; one more look at what they finished.
			mu.Lock()
			more := next < len(pieces) && pieces[next].state == done
			mu.Unlock()
			if !more {
				errsMu.Lock()
				defer errsMu.Unlock()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				for _, err := range errs {
					if errors.Is(err, errSpool) {
						return err
					}
				}
				return fmt.Errorf("every holder of %s left: %w (%w)", t.nar.Hash, store.ErrNotFound, errors.Join(errs...))
			}
		}
	}
}

// hashSpool hashes [from, to) of the spool, which must be the bytes right
// after those hashed so far.
func (t *transfer) hashSpool(from, to int64) error {
	if p := t.spool.direct(from, to-from); p != nil {
		t.h.Write(p)
		return nil
	}
	buf := make([]byte, 256<<10)
	for pos := from; pos < to; {
		n := min(int64(len(buf)), to-pos)
		if _, err := t.spool.ReadAt(buf[:n], pos); err != nil {
			return fmt.Errorf("%w: %w", errSpool, err)
		}
		t.h.Write(buf[:n])
		pos += n
	}
	return nil
}

// recordSpan notes that id sent [start, end), which comes right after the
// bytes recorded so far.
func (t *transfer) recordSpan(id string, start, end int64) {
	t.pos = start
	t.record(id, end-start)
}
