package swarm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
)

// ErrBadNAR: no holder could send a NAR that matches its NarHash. It
// wraps store.ErrNotFound: for Nix the path is not on peers after all.
var ErrBadNAR = fmt.Errorf("NAR does not match its NarHash: %w", store.ErrNotFound)

// errSlow: a holder stalled or sent slower than MinRate.
var errSlow = errors.New("holder stalled or sent too slowly")

// errSpool: the spool could not be written.
var errSpool = errors.New("NAR spool")

// OpenNAR opens the NAR with NarHash narHash (Nix base-32) of the path x
// found, positioned at offset. The NAR is fetched whole into a spool and
// hashed as it arrives; OpenNAR returns once bytes from offset on may reach
// Nix (the whole NAR verified, or a proven holder's first bytes of a large
// one), so that "no holder could send a good NAR" is an error before any
// response is started. Reading blocks until more bytes may be handed out.
func (x *Found) OpenNAR(ctx context.Context, narHash string, offset int64) (*store.NAR, error) {
	select {
	case <-x.decided:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	size, ok := x.sizeOf(narHash)
	if !ok {
		return nil, fmt.Errorf("%s with NarHash %s on peers: %w", x.hash, narHash, store.ErrNotFound)
	}
	if offset < 0 || offset > size {
		return nil, fmt.Errorf("offset %d of %d: %w", offset, size, store.ErrOffset)
	}
	if nar, err := x.takePrefetched(ctx, narHash, offset); nar != nil || err != nil {
		return nar, err
	}
	return x.openNAR(ctx, narHash, size, offset)
}

// openNAR is OpenNAR without the prefetched NAR: a transfer from the
// holders.
func (x *Found) openNAR(ctx context.Context, narHash string, size, offset int64) (*store.NAR, error) {
	want, err := nixhash.ParseNixBase32("sha256:" + narHash)
	if err != nil {
		return nil, fmt.Errorf("NarHash %s: %w", narHash, store.ErrBadRequest)
	}
	f := x.f
	var sp spool
	if size >= CutThroughMin {
		// It may stream through memory (ring.go), until it may not.
		if r := f.newRing(offset); r != nil {
			sp = r
		}
	}
	if sp == nil {
		if sp, err = f.newSpool(size); err != nil {
			return nil, err
		}
	}
	tctx, cancel := context.WithCancel(ctx)
	t := &transfer{
		f: f, x: x, cancel: cancel,
		progress: f.progressOf(x.storePath(), size),
		nar:      NAR{Hash: x.hash, NarHash: narHash, Size: size},
		want:     want.Digest(),
		spool:    sp,
		spools:   []spool{sp},
		h:        sha256.New(),
		opens:    map[string]int{},
		suspect:  map[string]bool{},
		through:  true,
		changed:  make(chan struct{}),
		runDone:  make(chan struct{}),
	}
	go t.run(tctx)
	if _, _, err := t.wait(ctx, offset); err != nil && !(offset == size && errors.Is(err, io.EOF)) {
		t.Close()
		return nil, err
	}
	return &store.NAR{Size: size, ReadCloser: &narReader{t: t, pos: offset}}, nil
}

// storePath is the accepted narinfo's store path, or the hash part when
// there is none.
func (x *Found) storePath() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ni != nil && x.ni.StorePath != "" {
		return x.ni.StorePath
	}
	return x.hash
}

// sizeOf returns the size of the NAR with narHash, if a holder's narinfo
// named it.
func (x *Found) sizeOf(narHash string) (int64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.cands {
		if c.ni.NarHash.Format(nixhash.NixBase32, false) == narHash {
			return int64(c.ni.NarSize), true
		}
	}
	return 0, false
}

// sources returns the holders that may send the NAR, candidates whose
// narinfo named it first, then holders asked by content; liars left out.
func (x *Found) sources(narHash string) (cands []candidate, others []Holder) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.cands {
		if !x.bad[c.h.ID()] && c.ni.NarHash.Format(nixhash.NixBase32, false) == narHash {
			cands = append(cands, c)
		}
	}
	for _, h := range x.others {
		if !x.bad[h.ID()] && !slices.ContainsFunc(cands, func(c candidate) bool { return c.h.ID() == h.ID() }) {
			others = append(others, h)
		}
	}
	return cands, others
}

// transfer assembles one NAR from holders.
type transfer struct {
	f      *Finder
	x      *Found
	cancel context.CancelFunc
	nar    NAR
	want   []byte
	// progress is told about the bytes as they arrive.
	progress Progress

	// Owned by run.
	spool   spool
	h       hash.Hash
	hashBuf []byte         // reads back from a spool file for h
	pos     int64          // bytes of the current attempt in the spool
	spans   []span         // who sent which bytes of the current attempt
	opens   map[string]int // sources opened, by holder
	nOpens  int
	suspect map[string]bool // holders that sent part of a NAR that failed its hash
	old     spool           // the failed attempt, kept to find the liar
	oldSpan []span
	// alone: a NAR from several holders at once failed its hash; from now
	// on one holder at a time, so that each attempt blames its sender.
	alone bool
	// ringHolder: the one holder whose bytes went through the ring.
	ringHolder string
	// mark, markSum: the ring of this attempt became a file at byte mark,
	// having hashed [0, mark) to markSum (ring.go); oldMark, oldMarkSum
	// the same of the failed attempt (the whole attempt when its ring
	// never became a file), and newMarkSum this attempt's hash of [0,
	// oldMark), to compare.
	mark                   int64
	markSum                []byte
	oldMark                int64
	oldMarkSum, newMarkSum []byte

	mu        sync.Mutex
	spools    []spool // every spool of the transfer, closed by Close (a reader may still read an old one)
	ready     int64   // bytes the reader may have
	forwarded int64   // bytes the reader has had
	through   bool    // every byte so far came from proven holders (cut-through allowed)
	done      bool    // the whole NAR is verified
	err       error   // why the transfer failed
	closed    bool
	changed   chan struct{} // closed and replaced when ready, done or err change
	runDone   chan struct{}
}

// span: bytes [start, end) of an attempt came from holder id.
type span struct {
	start, end int64
	id         string
}

// run fetches the NAR until it is verified, or no holder is left.
func (t *transfer) run(ctx context.Context) {
	defer close(t.runDone)
	defer func() {
		t.mu.Lock()
		err := t.err
		t.mu.Unlock()
		t.progress.Done(err)
	}()
	for attempt := 1; ; attempt++ {
		if err := t.fill(ctx); err != nil {
			t.fail(err)
			return
		}
		if bytes.Equal(t.h.Sum(nil), t.want) {
			t.verified()
			return
		}
		t.mismatch()
		if len(spanIDs(t.spans)) > 1 {
			t.alone = true
		}
		if attempt == maxAttempts {
			t.fail(fmt.Errorf("%s: %w after %d attempts", t.nar.Hash, ErrBadNAR, attempt))
			return
		}
		if err := t.restart(); err != nil {
			t.fail(err)
			return
		}
	}
}

// next picks the next source, not one of busy: holders not under
// suspicion first, each group in reputation order, none opened more than
// maxOpensPerHolder times. It counts nothing: opened does, once the
// source has something to send.
func (t *transfer) next(busy map[string]bool) (candidate, bool) {
	if t.nOpens >= maxOpens {
		return candidate{}, false
	}
	cands, others := t.x.sources(t.nar.NarHash)
	all := make([]candidate, 0, len(cands)+len(others))
	all = append(all, cands...)
	for _, h := range others {
		all = append(all, candidate{h: h})
	}
	ids := make([]string, len(all))
	for i, c := range all {
		ids[i] = c.h.ID()
	}
	ranked := t.f.rep.Rank(ids)
	for _, wantSuspect := range []bool{false, true} {
		for round := 0; round < maxOpensPerHolder; round++ {
			for _, id := range ranked {
				if busy[id] || t.suspect[id] != wantSuspect || t.opens[id] != round {
					continue
				}
				i := slices.IndexFunc(all, func(c candidate) bool { return c.h.ID() == id })
				return all[i], true
			}
		}
	}
	return candidate{}, false
}

// opened counts a request to holder id against the transfer's bounds.
func (t *transfer) opened(id string) {
	t.opens[id]++
	t.nOpens++
}

// copyRange opens [from, to) at holder c and hands what arrives to sink,
// in order, in pieces of at most 256 KiB, until the sink's range is
// complete (its end may move closer meanwhile); a holder that sends
// nothing for StallTimeout, or less than MinRate, is dropped.
func (t *transfer) copyRange(ctx context.Context, c candidate, from, to int64, sink *segmentSink) error {
	spec := t.nar
	if c.ni != nil {
		spec.URL = c.ni.URL
	}
	id := c.h.ID()
	start := time.Now()
	body, err := c.h.OpenNAR(ctx, spec, from, to)
	if err != nil {
		return err
	}
	t.f.rep.Success(id, time.Since(start))
	var progress atomic.Int64
	var why atomic.Pointer[error]
	stop := context.AfterFunc(ctx, func() { body.Close() })
	defer stop()
	watchDone := make(chan struct{})
	defer close(watchDone)
	sink.ctx = ctx
	go t.f.watch(watchDone, &progress, &sink.wait.waits, func(err error) {
		why.Store(&err)
		body.Close()
	})
	defer body.Close()

	buf := make([]byte, max(1, min(to-from, 256<<10))) // a small NAR's range, no more
	var lastWire int64
	for {
		p, err := sink.next(buf)
		if err != nil {
			return err
		}
		if len(p) == 0 {
			return nil
		}
		m, err := body.Read(p)
		if m > 0 {
			if werr := sink.wrote(p[:m]); werr != nil {
				return werr
			}
			progress.Add(int64(m))
			wire := int64(m)
			if wb, ok := body.(interface{ WireBytes() int64 }); ok {
				now := wb.WireBytes()
				wire, lastWire = now-lastWire, now
			}
			t.progress.Add(id, int64(m), wire)
		}
		if err != nil {
			if e := why.Load(); e != nil {
				return *e
			}
			if errors.Is(err, io.EOF) {
				if sink.complete() {
					return nil
				}
				return fmt.Errorf("%w: NAR ended at byte %d of %d", ErrProtocol, from+progress.Load(), to)
			}
			return err
		}
	}
}

// record notes that id sent the next n bytes.
func (t *transfer) record(id string, n int64) {
	if k := len(t.spans) - 1; k >= 0 && t.spans[k].id == id && t.spans[k].end == t.pos {
		t.spans[k].end += n
	} else {
		t.spans = append(t.spans, span{start: t.pos, end: t.pos + n, id: id})
	}
	t.pos += n
}

// publish lets the reader have the bytes so far if every one of them came
// from a proven holder, all but the NAR's last byte: the reader never
// completes a NAR that fails its hash.
func (t *transfer) publish(proven bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !proven {
		t.through = false
	}
	if pos := min(t.pos, t.nar.Size-1); t.through && pos > t.ready {
		t.ready = pos
		t.wake()
	}
}

// watch drops a source that sends nothing for StallTimeout, or less than
// MinRate over RateWindow, by calling drop once. Time the source waited
// for our reader does not count: when it waited since the last tick
// (waits, odd while it waits, changed), the watch starts over.
func (f *Finder) watch(done <-chan struct{}, progress *atomic.Int64, waits *atomic.Int64, drop func(error)) {
	tick := min(time.Second, f.opt.StallTimeout/4, f.opt.RateWindow/4)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	start := time.Now()
	lastChange, last, lastWaits := start, int64(0), int64(0)
	// samples[i]: progress at the i-th tick, for the rate over RateWindow.
	window := int(f.opt.RateWindow / tick)
	samples := make([]int64, 0, window+1)
	for {
		select {
		case <-done:
			return
		case now := <-ticker.C:
			p := progress.Load()
			if w := waits.Load(); w != lastWaits || w%2 == 1 {
				// It waited for us since the last tick.
				last, lastChange, samples, lastWaits = p, now, samples[:0], w
			}
			if p != last {
				last, lastChange = p, now
			}
			if now.Sub(lastChange) >= f.opt.StallTimeout {
				drop(fmt.Errorf("%w: nothing for %v", errSlow, now.Sub(lastChange).Round(time.Millisecond)))
				return
			}
			samples = append(samples, p)
			if len(samples) > window {
				got := p - samples[0]
				samples = samples[1:]
				if got < f.opt.MinRate*int64(f.opt.RateWindow/time.Second) {
					drop(fmt.Errorf("%w: %d bytes in %v, less than %d B/s", errSlow, got, f.opt.RateWindow, f.opt.MinRate))
					return
				}
			}
		}
	}
}

// mismatch handles a NAR that failed its hash: a holder that sent all of
// it lied; when several sent parts, they become suspects and the next
// attempt (from other holders first) tells which.
func (t *transfer) mismatch() {
	ids := spanIDs(t.spans)
	if len(ids) == 1 {
		t.blame(ids[0], "its NAR does not match the NarHash")
	}
	for _, id := range ids {
		t.suspect[id] = true
	}
	t.mu.Lock()
	t.through = false
	t.mu.Unlock()
}

// restart keeps the failed attempt for comparison and starts over.
func (t *transfer) restart() error {
	sp, err := t.f.newSpool(t.nar.Size)
	if err != nil {
		return err
	}
	// A ring's bytes before its mark are gone: the failed attempt's hash
	// of them stands for them.
	t.oldMark, t.oldMarkSum, t.newMarkSum = 0, nil, nil
	if r, ok := t.spool.(*ringSpool); ok {
		t.oldMark, t.oldMarkSum = t.mark, t.markSum
		if !r.isFile() {
			t.oldMark, t.oldMarkSum = t.pos, t.h.Sum(nil)
		}
	}
	t.mark, t.markSum, t.ringHolder = 0, nil, ""
	t.mu.Lock()
	t.spools = append(t.spools, sp)
	t.old, t.oldSpan = t.spool, t.spans
	t.spool, t.spans, t.pos = sp, nil, 0
	// What the reader has not had yet must come from the new attempt,
	// once it is verified.
	t.ready = t.forwarded
	t.mu.Unlock()
	t.h.Reset()
	t.opens = map[string]int{}
	return nil
}

// verified completes the transfer: the holders whose bytes in a failed
// attempt differ from the verified NAR are blamed, those who sent the
// verified one credited, and the reader may have it all, unless bytes it
// already had differ from it.
func (t *transfer) verified() {
	// The failed attempt's bytes before oldMark are compared by their
	// hash: they all came from one holder, its ring's.
	prefixSame := t.oldMark == 0 || bytes.Equal(t.oldMarkSum, t.newMarkSum)
	if t.old != nil {
		for _, s := range t.oldSpan {
			if t.x.isBad(s.id) {
				continue
			}
			start := s.start
			if start < t.oldMark {
				if !prefixSame {
					t.blame(s.id, "its part of a NAR differs from the verified NAR")
					continue
				}
				start = t.oldMark
			}
			if start < s.end && !sameBytes(t.old, t.spool, start, s.end) {
				t.blame(s.id, "its part of a NAR differs from the verified NAR")
			}
		}
	}
	sent := map[string]int64{}
	for _, s := range t.spans {
		sent[s.id] += s.end - s.start
	}
	for id, n := range sent {
		t.f.rep.Delivered(id, n)
	}
	t.mu.Lock()
	fwd := t.forwarded
	t.mu.Unlock()
	if t.old != nil && fwd > 0 && (!prefixSame || fwd > t.oldMark && !sameBytes(t.old, t.spool, t.oldMark, fwd)) {
		t.fail(fmt.Errorf("%s: bytes already sent came from a holder that lied: %w", t.nar.Hash, ErrBadNAR))
		return
	}
	t.mu.Lock()
	t.ready, t.done = t.nar.Size, true
	t.wake()
	t.mu.Unlock()
}

func (t *transfer) blame(id, why string) { t.f.caught(t.x, id, "NAR", why) }

// sameBytes compares [start, end) of two spools.
func sameBytes(a, b spool, start, end int64) bool {
	const chunk = 64 << 10
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := start; off < end; off += chunk {
		n := min(chunk, end-off)
		na, _ := a.ReadAt(ba[:n], off)
		nb, _ := b.ReadAt(bb[:n], off)
		if int64(na) != n || int64(nb) != n || !bytes.Equal(ba[:n], bb[:n]) {
			return false
		}
	}
	return true
}

func spanIDs(spans []span) []string {
	var ids []string
	for _, s := range spans {
		if !slices.Contains(ids, s.id) {
			ids = append(ids, s.id)
		}
	}
	return ids
}

func (t *transfer) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil && !t.done {
		t.err = err
		t.wake()
	}
}

// wake tells waiting readers that something changed. t.mu is held.
func (t *transfer) wake() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// wait blocks until bytes beyond pos may be read, and returns how far and
// the spool that holds them.
func (t *transfer) wait(ctx context.Context, pos int64) (int64, spool, error) {
	for {
		t.mu.Lock()
		ready, sp, done, err, ch := t.ready, t.spool, t.done, t.err, t.changed
		t.mu.Unlock()
		switch {
		case ready > pos:
			return ready, sp, nil
		case done:
			return ready, sp, io.EOF
		case err != nil:
			return 0, nil, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// Close stops the transfer and frees its spool.
func (t *transfer) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	t.cancel()
	<-t.runDone
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, sp := range t.spools {
		sp.Close()
	}
	return nil
}

// narReader hands the transfer's bytes out as they may be.
type narReader struct {
	t   *transfer
	pos int64
}

func (r *narReader) Read(p []byte) (int, error) {
	t := r.t
	if r.pos >= t.nar.Size {
		return 0, io.EOF
	}
	ready, sp, err := t.wait(context.Background(), r.pos)
	if err != nil {
		return 0, err
	}
	n := min(int64(len(p)), ready-r.pos)
	got, err := sp.ReadAt(p[:n], r.pos)
	r.pos += int64(got)
	if ring, ok := sp.(*ringSpool); ok {
		ring.consumed(r.pos)
	}
	t.mu.Lock()
	t.forwarded = max(t.forwarded, r.pos)
	t.mu.Unlock()
	if err != nil && !errors.Is(err, io.EOF) {
		return got, err
	}
	return got, nil
}

// WriteTo hands the NAR to w as trust allows, without a copy through a
// buffer of ours: from a file spool as an *io.LimitedReader over the file,
// which net/http's ReaderFrom sends to Nix's socket with sendfile; from a
// memory spool or a ring straight from its memory.
func (r *narReader) WriteTo(w io.Writer) (int64, error) {
	t := r.t
	var total int64
	for r.pos < t.nar.Size {
		ready, sp, err := t.wait(context.Background(), r.pos)
		if err != nil {
			return total, err
		}
		// The bytes count as forwarded before they go: a NAR that fails
		// its hash while they are on their way must be checked against
		// them (verified), or Nix could get a lie whole.
		t.mu.Lock()
		t.forwarded = max(t.forwarded, ready)
		t.mu.Unlock()
		n, err := sp.writeTo(w, r.pos, ready-r.pos)
		r.pos += n
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (r *narReader) Close() error { return r.t.Close() }
