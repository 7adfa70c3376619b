package swarm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/peerix/peerix/internal/store"
)

// Several holders at once.
//
// On the internet the bottleneck of a transfer is the holder's uplink, not
// our downlink: a NAR that several holders have comes from up to
// maxSources of them at once. The NAR is a set of segments, each sent by
// one holder. The first holder asks for the whole NAR, as if it were
// alone; each holder that joins (at the start, or when a later answer to
// the lookup names it) takes the second half of the largest part still to
// come, and a holder that finished its segment does the same, so fast
// holders end up sending more and the transfer ends when the slowest
// holder's last segment does. A holder whose segment was cut short stops
// reading at the new end. A holder that breaks, stalls or crawls leaves;
// the rest of its segment goes to the next holder free.
//
// The bytes are hashed in NAR order as the prefix of arrived bytes grows,
// so the NarHash check at the end costs nothing extra, and reach the reader
// in order as trust allows (only whole and verified, or from proven
// holders). A NAR from several holders that fails its hash is fetched
// again from one holder at a time (each attempt then blames its sender,
// and the bytes of the failed attempt that differ from the verified NAR
// blame theirs).

const (
	// maxSources bounds the holders one transfer uses at once.
	maxSources = 4
	// multiSourceMin: smaller NARs come from one holder at a time (a
	// request costs a round trip; for a small NAR it is most of the time).
	multiSourceMin = 4 << 20
	// minSteal: a holder takes the tail of another's segment only when it
	// is at least this long (each is a request: a round trip).
	minSteal = 256 << 10
)

// segment is bytes [start, end) of the NAR, sent by one holder; [start,
// pos) arrived. Its end moves closer when another holder takes its tail.
type segment struct {
	start, pos, end int64
	// writing: the holder is writing the bytes up to here (pos <= writing
	// <= end); a holder taking the tail takes it from here.
	writing int64
	from    string // the holder that sends, or sent, it
	active  bool   // from is still sending it
	// claimed: when from began at byte claimedAt, for its rate.
	claimed   time.Time
	claimedAt int64
}

// rate is the bytes a second the segment's holder sends (0: not known yet).
func (s *segment) rate(now time.Time) float64 {
	d := now.Sub(s.claimed).Seconds()
	if s.pos == s.claimedAt || d <= 0 {
		return 0
	}
	return float64(s.pos-s.claimedAt) / d
}

// segments is the NAR of one attempt, from the transfer's position on, as
// contiguous segments in NAR order.
type segments struct {
	mu   sync.Mutex
	segs []*segment
}

// claim gives holder id a segment to send, and the bytes [from, to) to
// ask for: the first one no holder is sending (its arrived prefix stays
// its first sender's), else, if steal, the tail of the active segment
// that will take longest to finish, cut where both would finish together
// at their rates (rate: id's own, from its last segment; 0: not known,
// cut in half). It returns nil when there is nothing for id to do.
func (r *segments) claim(id string, steal bool, rate float64, now time.Time) (s *segment, from, to int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, seg := range r.segs {
		s := seg
		if s.active || s.pos == s.end {
			continue
		}
		if s.pos > s.start {
			// The arrived prefix stays its sender's.
			rest := &segment{start: s.pos, pos: s.pos, writing: s.pos, end: s.end}
			s.end = s.pos
			r.segs = insertAt(r.segs, i+1, rest)
			s = rest
		}
		s.from, s.active, s.claimed, s.claimedAt = id, true, now, s.pos
		return s, s.pos, s.end
	}
	if !steal {
		return nil, 0, 0
	}
	// A holder whose rate is not known yet counts at the others' mean.
	var sum float64
	var known int
	for _, s := range r.segs {
		if v := s.rate(now); s.active && v > 0 {
			sum, known = sum+v, known+1
		}
	}
	mean := 0.0
	if known > 0 {
		mean = sum / float64(known)
	}
	var best *segment
	at, bestLeft, bestRate := 0, -1.0, 0.0
	for i, s := range r.segs {
		if !s.active {
			continue
		}
		v := s.rate(now)
		if v == 0 {
			v = mean
		}
		left := float64(s.end - s.writing) // seconds, or bytes when no rate is known
		if v > 0 {
			left /= v
		}
		if left > bestLeft {
			best, at, bestLeft, bestRate = s, i, left, v
		}
	}
	if best == nil {
		return nil, 0, 0
	}
	rest := best.end - best.writing
	keep := rest / 2
	if bestRate > 0 && rate > 0 {
		keep = int64(float64(rest) * bestRate / (bestRate + rate))
	}
	const block = 64 << 10
	mid := (best.writing + keep + block - 1) &^ (block - 1) // whole 64 KiB blocks
	if best.end-mid < minSteal {
		return nil, 0, 0
	}
	tail := &segment{start: mid, pos: mid, writing: mid, end: best.end, from: id, active: true, claimed: now, claimedAt: mid}
	best.end = mid
	r.segs = insertAt(r.segs, at+1, tail)
	return tail, tail.start, tail.end
}

func insertAt(segs []*segment, i int, s *segment) []*segment {
	segs = append(segs, nil)
	copy(segs[i+1:], segs[i:])
	segs[i] = s
	return segs
}

// release ends its holder's work on s (done, or it left) and returns the
// holder's rate on it.
func (r *segments) release(s *segment, now time.Time) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.active, s.writing = false, s.pos
	return s.rate(now)
}

// arrived returns the spans of contiguous arrived bytes from pos on, with
// their senders.
func (r *segments) arrived(pos int64) []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []span
	for _, s := range r.segs {
		if s.end <= pos {
			continue
		}
		if s.pos > pos {
			out = append(out, span{start: pos, end: s.pos, id: s.from})
			pos = s.pos
		}
		if s.pos < s.end {
			break
		}
	}
	return out
}

// segmentSink takes the bytes of one holder's segment into the spool.
type segmentSink struct {
	r      *segments
	s      *segment
	spool  spool
	notify func()
	// For a ring: the transfer's context (set by copyRange), and the
	// holder's waits for the reader.
	ctx  context.Context
	wait ringWait
}

// next returns where the next at most len(buf) bytes of the segment go
// (the spool's own memory, or buf), or nothing once the segment is
// complete. Into a ring, it waits for room.
func (k *segmentSink) next(buf []byte) ([]byte, error) {
	k.r.mu.Lock()
	pos := k.s.pos
	n := min(int64(len(buf)), k.s.end-pos)
	if n > 0 {
		// Marked before the lock is let go: a steal (claim) meanwhile
		// cuts the segment after these bytes, never inside them. (If
		// fewer come, the mark only makes a thief's piece smaller.)
		k.s.writing = max(k.s.writing, pos+n)
	}
	k.r.mu.Unlock()
	if n <= 0 {
		return nil, nil
	}
	var p []byte
	if r, ok := k.spool.(*ringSpool); ok {
		var err error
		if p, err = r.lend(k.ctx, pos, n, &k.wait); err != nil {
			return nil, err
		}
	} else {
		p = k.spool.direct(pos, n)
	}
	if p == nil {
		p = buf[:n]
	}
	return p, nil
}

// complete reports whether every byte of the segment arrived.
func (k *segmentSink) complete() bool {
	k.r.mu.Lock()
	defer k.r.mu.Unlock()
	return k.s.pos >= k.s.end
}

// wrote records that p, the start of what next returned, arrived.
func (k *segmentSink) wrote(p []byte) error {
	if _, err := k.spool.WriteAt(p, k.s.pos); err != nil { // only this holder moves pos
		return fmt.Errorf("%w: %w", errSpool, err)
	}
	k.r.mu.Lock()
	k.s.pos += int64(len(p))
	k.s.writing = max(k.s.writing, k.s.pos)
	k.r.mu.Unlock()
	k.notify()
	return nil
}

// fill fetches [pos, size) of the NAR: from up to maxSources holders at
// once for a large NAR (unless a NAR from several failed its hash), else
// from one holder at a time, moving on at each failure.
func (t *transfer) fill(ctx context.Context) error {
	workers := 1
	if !t.alone && t.nar.Size-t.pos >= multiSourceMin {
		workers = maxSources
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	r := &segments{segs: []*segment{{start: t.pos, pos: t.pos, writing: t.pos, end: t.nar.Size}}}
	progress := make(chan struct{}, 1)
	notify := func() {
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	type exit struct {
		id  string
		err error
	}
	var exitsMu sync.Mutex
	var exits []exit
	active := map[string]bool{}
	// start sets holder c to work on s, its first segment, then on the
	// next it can claim, until there is none or it fails.
	start := func(c candidate, s *segment, from, to int64) error {
		id := c.h.ID()
		if err := t.keepRing(id); err != nil {
			return err
		}
		active[id] = true
		t.opened(id)
		wg.Go(func() {
			var err error
			rate := 0.0
			for s != nil {
				sink := &segmentSink{r: r, s: s, spool: t.spool, notify: notify}
				sink.wait.maxWait, sink.wait.slow = t.f.opt.StallTimeout, notify
				err = t.copyRange(ctx, c, from, to, sink)
				rate = r.release(s, time.Now())
				if err != nil {
					break
				}
				s, from, to = r.claim(id, workers > 1, rate, time.Now())
			}
			exitsMu.Lock()
			exits = append(exits, exit{id, err})
			exitsMu.Unlock()
			notify()
		})
		return nil
	}

	var errs []error
	for {
		grew := t.x.holdersChanged()
		// Exits first: a holder's bytes are in the spool before it exits.
		exitsMu.Lock()
		gone := exits
		exits = nil
		exitsMu.Unlock()
		for _, e := range gone {
			delete(active, e.id)
			if e.err == nil || ctx.Err() != nil {
				continue
			}
			if errors.Is(e.err, errSpool) {
				return e.err // our own disk, not the holder's fault
			}
			t.f.failed(ctx, e.id, t.x, e.err, "NAR")
			errs = append(errs, fmt.Errorf("%s: %w", e.id, e.err))
		}
		for _, s := range r.arrived(t.pos) {
			if err := t.hashSpool(s.start, s.end); err != nil {
				return err
			}
			t.record(s.id, s.end-s.start)
			t.publish(t.nar.Size >= CutThroughMin && t.f.rep.Proven(s.id))
		}
		if ring, ok := t.spool.(*ringSpool); ok && ring.slow.Load() {
			// The reader kept the holder waiting too long.
			if err := t.toFile(ring); err != nil {
				return err
			}
		}
		if err := t.keepRing(""); err != nil {
			return err
		}
		if t.pos == t.nar.Size {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A holder starts only with a segment in hand: one that would
		// find nothing to do costs no request and none of its opens.
		for len(active) < workers {
			c, ok := t.next(active)
			if !ok {
				break
			}
			// Only healthy holders join one under way: one that just
			// failed, here or elsewhere, sends only when no one else can
			// (next ranks them last, so no later one is healthier).
			if len(active) > 0 && (t.suspect[c.h.ID()] || !t.f.rep.Healthy(c.h.ID())) {
				break
			}
			s, from, to := r.claim(c.h.ID(), len(active) > 0, 0, time.Now())
			if s == nil {
				break
			}
			if err := start(c, s, from, to); err != nil {
				return err
			}
		}
		if len(active) == 0 {
			if len(errs) == 0 {
				return fmt.Errorf("no holder left for %s: %w", t.nar.Hash, store.ErrNotFound)
			}
			return fmt.Errorf("no holder could send %s: %w (%w)", t.nar.Hash, store.ErrNotFound, errors.Join(errs...))
		}
		select {
		case <-progress:
		case <-grew:
		case <-ctx.Done():
		}
	}
}

// keepRing makes the transfer's ring a file unless holder id may send
// into it: the ring's one holder (or the first), proven, with every byte
// so far allowed through ("": no new holder, only the latter).
func (t *transfer) keepRing(id string) error {
	ring, ok := t.spool.(*ringSpool)
	if !ok || ring.isFile() {
		return nil
	}
	t.mu.Lock()
	through := t.through
	t.mu.Unlock()
	if through && (id == "" || (t.ringHolder == "" || t.ringHolder == id) && t.f.rep.Proven(id)) {
		if id != "" {
			t.ringHolder = id
		}
		return nil
	}
	return t.toFile(ring)
}

// toFile makes the ring a file, marking where (see ring.go).
func (t *transfer) toFile(ring *ringSpool) error {
	if ring.isFile() {
		return nil
	}
	if err := ring.toFile(t.pos); err != nil {
		return fmt.Errorf("%w: %w", errSpool, err)
	}
	t.mark, t.markSum = t.pos, t.h.Sum(nil)
	return nil
}

// hashSpool hashes [from, to) of the spool, which must be the bytes right
// after those hashed so far; on its way past the failed attempt's mark, it
// notes the hash there.
func (t *transfer) hashSpool(from, to int64) error {
	if m := t.oldMark; m > 0 && from < m && m <= to {
		if err := t.hashRange(from, m); err != nil {
			return err
		}
		t.newMarkSum = t.h.Sum(nil)
		from = m
	}
	return t.hashRange(from, to)
}

// hashRange hashes [from, to) of the spool.
func (t *transfer) hashRange(from, to int64) error {
	if ring, ok := t.spool.(*ringSpool); ok {
		for from < to {
			p := ring.direct(from, to-from)
			if p == nil {
				break // a file now
			}
			t.h.Write(p)
			from += int64(len(p))
		}
		ring.hashedTo(from)
	}
	if from == to {
		return nil
	}
	if p := t.spool.direct(from, to-from); p != nil {
		t.h.Write(p)
		return nil
	}
	if t.hashBuf == nil {
		t.hashBuf = make([]byte, 256<<10) // once a transfer, not once a catch-up
	}
	for pos := from; pos < to; {
		n := min(int64(len(t.hashBuf)), to-pos)
		if _, err := t.spool.ReadAt(t.hashBuf[:n], pos); err != nil {
			return fmt.Errorf("%w: %w", errSpool, err)
		}
		t.h.Write(t.hashBuf[:n])
		pos += n
	}
	return nil
}
