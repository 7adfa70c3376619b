package summary

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// MaxWait bounds a long poll.
const MaxWait = 30 * time.Second

// DefaultHistory: how many added hashes a publisher keeps for deltas; a
// follower further behind gets the whole filter.
const DefaultHistory = 1 << 18

// ErrNotReady: the publisher has no filter yet.
var ErrNotReady = errors.New("no summary yet")

// PublisherOptions tune a Publisher.
type PublisherOptions struct {
	// History: added hashes kept for deltas (DefaultHistory).
	History int
	// Lag, if set, says how far behind its source the filter may be (a
	// tracker that rereads a database other trackers write); answers
	// carry it.
	Lag func() time.Duration
}

// Publisher keeps a filter of a set of hashes in generations: each Add
// that sets bits the filter lacked makes a new one, and followers holding
// an older generation get the hashes added since. Reset starts a new
// epoch (a filter built anew: after a restart, or when removals made it
// too full). It is safe for concurrent use.
type Publisher struct {
	opt PublisherOptions

	mu        sync.Mutex
	f         *Filter
	epoch     uint64
	gen       uint64
	entries   uint64 // hashes that set a bit since the epoch began
	ones      uint64 // bits set
	hist      []histEntry
	histN     int    // hashes in hist
	since     uint64 // deltas can be made from any generation >= since
	changed   chan struct{}
	ready     chan struct{} // closed once f is set
	ended     bool          // EndPolls: answer at once from now on
	full      []byte        // encoded whole answer of (fullEpoch, fullGen)
	fullEpoch uint64
	fullGen   uint64
}

type histEntry struct {
	gen    uint64
	hashes []Hash
}

// NewPublisher returns a publisher with no filter yet.
func NewPublisher(opt PublisherOptions) *Publisher {
	if opt.History <= 0 {
		opt.History = DefaultHistory
	}
	return &Publisher{opt: opt, changed: make(chan struct{}), ready: make(chan struct{})}
}

// Reset publishes f, holding about entries distinct hashes, as a new
// epoch. The publisher owns f from now on.
func (p *Publisher) Reset(f *Filter, entries uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.f, p.entries, p.ones = f, entries, f.Ones()
	p.epoch = rand.Uint64()
	p.gen, p.hist, p.histN, p.since = 0, nil, 0, 0
	p.full = nil
	select {
	case <-p.ready:
	default:
		close(p.ready)
	}
	p.wake()
}

// Add adds hashes to the filter; those that set a bit it lacked make a new
// generation, and pending polls are answered with them. It returns how
// many did. Before the first Reset it does nothing.
func (p *Publisher) Add(hashes ...Hash) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return 0
	}
	var fresh []Hash
	for _, h := range hashes {
		if n := p.f.Add(h); n > 0 {
			p.ones += uint64(n)
			p.entries++
			fresh = append(fresh, h)
		}
	}
	if len(fresh) == 0 {
		return 0
	}
	p.gen++
	p.hist = append(p.hist, histEntry{gen: p.gen, hashes: fresh})
	p.histN += len(fresh)
	for p.histN > p.opt.History && len(p.hist) > 0 {
		p.histN -= len(p.hist[0].hashes)
		p.since = p.hist[0].gen
		p.hist[0] = histEntry{}
		p.hist = p.hist[1:]
	}
	p.wake()
	return len(fresh)
}

// Fill reports the filter's estimated false-positive rate, its size in
// bits and about how many hashes it holds (zeros before the first Reset).
func (p *Publisher) Fill() (fp float64, bits, entries uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return 0, 0, 0
	}
	return FPRate(p.ones, p.f.m, p.f.k), p.f.m, p.entries
}

// Version is the filter's epoch and generation; ok is false before the
// first Reset.
func (p *Publisher) Version() (epoch, gen uint64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.epoch, p.gen, p.f != nil
}

// Ready is closed once the publisher has a filter.
func (p *Publisher) Ready() <-chan struct{} { return p.ready }

// wake tells pending polls that something changed. p.mu is held.
func (p *Publisher) wake() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Publisher) lag() time.Duration {
	if p.opt.Lag == nil {
		return 0
	}
	return max(p.opt.Lag(), 0)
}

// answer is the update for a follower holding (epoch, gen), in two parts
// to write one after the other (the second, a whole filter, is shared by
// every such answer and must not be modified), or nil if the follower is
// current. p.mu is held.
func (p *Publisher) answer(epoch, gen uint64, have bool) (head, body []byte, err error) {
	if have && epoch == p.epoch && gen == p.gen {
		return nil, nil, nil
	}
	if have && epoch == p.epoch && gen < p.gen && gen >= p.since {
		i, _ := slices.BinarySearchFunc(p.hist, gen+1, func(e histEntry, g uint64) int {
			switch {
			case e.gen < g:
				return -1
			case e.gen > g:
				return 1
			}
			return 0
		})
		var n int
		for _, e := range p.hist[i:] {
			n += len(e.hashes)
		}
		if n <= MaxDelta && uint64(n)*HashBytes < p.f.m/8 {
			u := &Update{Epoch: p.epoch, Gen: p.gen, Lag: p.lag(), Bits: p.f.m, Probes: p.f.k,
				Add: make([]Hash, 0, n)}
			for _, e := range p.hist[i:] {
				u.Add = append(u.Add, e.hashes...)
			}
			head, err = u.MarshalBinary()
			return head, nil, err
		}
	}
	if p.full == nil || p.fullEpoch != p.epoch || p.fullGen != p.gen {
		u := &Update{Epoch: p.epoch, Gen: p.gen, Entries: p.entries, Filter: p.f}
		b, err := u.MarshalBinary()
		if err != nil {
			return nil, nil, err
		}
		p.full, p.fullEpoch, p.fullGen = b, p.epoch, p.gen
	}
	// The lag is the only part that changes without a new generation.
	head = slices.Clone(p.full[:HeaderSize])
	binary.BigEndian.PutUint32(head[32:], uint32(min(p.lag().Milliseconds(), math.MaxUint32)))
	return head, p.full[HeaderSize:], nil
}

// Poll answers a follower holding generation gen of epoch (have false: it
// holds nothing): at once with a delta or the whole filter if it is
// behind, else as soon as something is added or after wait (at most
// MaxWait) with an empty delta. The answer is head followed by body.
// Before the first Reset it returns ErrNotReady.
func (p *Publisher) Poll(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (head, body []byte, err error) {
	var timeout <-chan time.Time
	if wait = min(wait, MaxWait); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return nil, nil, ErrNotReady
	}
	for {
		head, body, err := p.answer(epoch, gen, have)
		if err != nil || head != nil {
			return head, body, err
		}
		if timeout == nil || p.ended {
			u := &Update{Epoch: p.epoch, Gen: p.gen, Lag: p.lag(), Bits: p.f.m, Probes: p.f.k}
			head, err = u.MarshalBinary()
			return head, nil, err
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			timeout = nil
		case <-ctx.Done():
			p.mu.Lock()
			return nil, nil, ctx.Err()
		}
		p.mu.Lock()
	}
}

// EndPolls answers every pending poll at once, and later ones without
// waiting: call it when the HTTP server shuts down
// (http.Server.RegisterOnShutdown), which otherwise waits for them.
func (p *Publisher) EndPolls() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ended = true
	p.wake()
}

// ParseQuery reads a poll's query: [epoch=<16 hex>&gen=<n>][&wait=<ms>].
func ParseQuery(q url.Values) (epoch, gen uint64, have bool, wait time.Duration, err error) {
	if v := q.Get("epoch"); v != "" {
		if epoch, err = strconv.ParseUint(v, 16, 64); err != nil || len(v) != 16 {
			return 0, 0, false, 0, errors.New("epoch must be 16 hex digits")
		}
		if gen, err = strconv.ParseUint(q.Get("gen"), 10, 64); err != nil {
			return 0, 0, false, 0, errors.New("gen must be a non-negative integer (with epoch)")
		}
		have = true
	} else if q.Has("gen") {
		return 0, 0, false, 0, errors.New("gen without epoch")
	}
	if v := q.Get("wait"); v != "" {
		ms, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return 0, 0, false, 0, errors.New("wait must be a number of milliseconds")
		}
		wait = min(time.Duration(ms)*time.Millisecond, MaxWait)
	}
	return epoch, gen, have, wait, nil
}

// ServeHTTP answers a poll over HTTP (GET, the query of ParseQuery), with
// plain-text errors: 400 for a bad query, 503 before the first Reset.
func (p *Publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	epoch, gen, have, wait, err := ParseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	head, body, err := p.Poll(r.Context(), epoch, gen, have, wait)
	switch {
	case errors.Is(err, ErrNotReady):
		w.Header().Set("Retry-After", "1")
		http.Error(w, "the summary is being built", http.StatusServiceUnavailable)
		return
	case err != nil:
		return // the caller went away
	}
	WriteAnswer(w, head, body)
}

// WriteAnswer writes a poll's answer as an HTTP 200.
func WriteAnswer(w http.ResponseWriter, head, body []byte) {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(head)+len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(head)
	w.Write(body)
}
