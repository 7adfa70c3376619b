package p2p

// The local index: misses answered from memory.
//
// Most narinfo lookups Nix makes are misses (paths no peer has, found
// upstream instead), and each used to cost a round trip to the tracker.
// The Index keeps the tracker's Bloom filter of every hash any peer holds
// (GET /v1/index, docs/protocol.md section 3; tracker.Filter): a hash the
// filter does not hold is a miss answered in well under a microsecond;
// one it may hold (held, or a false positive: about 0.3%) goes to
// /v1/find as before. Memory: one filter for the whole fleet, 12 bits a
// distinct hash (30 MiB for 20 M distinct hashes, the worst case of 1,000
// peers x 20,000 hashes sharing none; far less when peers share their
// nixpkgs).
//
// Freshness. Nix remembers a 404 for an hour (narinfo-cache-negative-ttl),
// so a miss answered from a stale index costs an hour: the index may
// answer only while it is known to be current. It fetches the filter once,
// then keeps one long poll open at the tracker (wait 25 s), which answers
// as soon as any peer announces hashes the filter lacks: a path announced
// anywhere reaches every index within a network round trip. The index is
// current while a poll is pending and younger than its wait plus a grace
// (30 s in all): when the tracker stops answering (down, partitioned, a
// proxy cutting long polls), the index goes stale within 30 s at most and
// lookups ask the tracker again (and fail as they did before). With
// several trackers on one PostgreSQL a tracker sees the others' writes only
// when it rereads the database (every 10 s); its answers carry that lag,
// and an index whose tracker lags by more than maxLag (30 s) is not used.
//
// So the index adds at most a round trip to the delay between a peer
// having a path and others finding it, which the Announcer's rescan (every
// minute) dominates; in exchange a miss costs microseconds instead of a
// tracker round trip. Hashes removed from peers stay in the filter until
// the tracker rebuilds it (it may over-approximate, never under-): they
// cost a /v1/find, as before.

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/peerix/peerix/internal/tracker"
)

// IndexSource is what the Index needs from the tracker.
type IndexSource interface {
	// Index returns the whole filter (have false) or what was added since
	// generation gen of epoch, waiting up to wait for an addition.
	Index(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*tracker.IndexUpdate, error)
}

// Index timing; variables for tests.
var (
	// indexWait: how long a poll waits at the tracker for a change.
	indexWait = 25 * time.Second
	// indexGrace: how long past its wait a pending poll still vouches
	// for the index (the answer's way back).
	indexGrace = 5 * time.Second
	// indexMaxLag: an index whose tracker lags the database by more
	// (several trackers, see above) is not used.
	indexMaxLag = 30 * time.Second
	// indexRetryMax caps the wait between failed polls; a tracker without
	// an index is asked again after indexAbsentRetry.
	indexRetryMax    = 30 * time.Second
	indexAbsentRetry = 5 * time.Minute
)

// Index answers "no peer holds this hash" from memory (see above). Run
// keeps it current; Absent is safe for concurrent use.
type Index struct {
	src      IndexSource
	log      *slog.Logger
	retryMin time.Duration // the first wait after a failed poll

	filter atomic.Pointer[tracker.Filter]
	// until: when (ns since base, a monotonic clock: the wall clock may
	// jump) the index stops being known current: the pending poll's send
	// time + wait + grace; noPoll while no poll vouches for it.
	base  time.Time
	until atomic.Int64
	lag   atomic.Int64 // the tracker's lag (ns) in its last answer

	// Owned by Run.
	epoch, gen uint64

	local   atomic.Uint64 // misses answered from memory
	passed  atomic.Uint64 // lookups the filter let through
	stale   atomic.Uint64 // lookups while the index was not current
	updates atomic.Uint64
	fulls   atomic.Uint64
	genSeen atomic.Uint64
	lastErr atomic.Pointer[string]
}

// NewIndex returns an index fed by src; nothing happens until Run.
func NewIndex(src IndexSource, log *slog.Logger) *Index {
	if log == nil {
		log = slog.Default()
	}
	ix := &Index{src: src, log: log, retryMin: time.Second, base: time.Now()}
	ix.until.Store(noPoll)
	return ix
}

// Absent reports whether no peer holds hash, as far as a current index
// knows. False means "ask the tracker": the hash may be held, or the index
// is not current.
func (ix *Index) Absent(hash string) bool {
	f := ix.filter.Load()
	if f == nil {
		return false
	}
	if !ix.current(time.Now()) {
		ix.stale.Add(1)
		return false
	}
	h, ok := tracker.ParseHash(hash)
	if !ok || f.Has(h) {
		ix.passed.Add(1)
		return false
	}
	ix.local.Add(1)
	return true
}

func (ix *Index) current(now time.Time) bool {
	return int64(now.Sub(ix.base)) < ix.until.Load() && time.Duration(ix.lag.Load()) <= indexMaxLag
}

// Current reports whether the index may answer misses now.
func (ix *Index) Current() bool {
	return ix.filter.Load() != nil && ix.current(time.Now())
}

// Run keeps the index current until ctx ends: a whole filter first, then
// one long poll after another. Tracker errors are retried (1 s doubling to
// 30 s); meanwhile the index is not current.
func (ix *Index) Run(ctx context.Context) {
	retry := ix.retryMin
	defer ix.until.Store(noPoll)
	for ctx.Err() == nil {
		sent := time.Now()
		ix.until.Store(int64(sent.Add(indexWait + indexGrace).Sub(ix.base)))
		u, err := ix.src.Index(ctx, ix.epoch, ix.gen, ix.filter.Load() != nil, indexWait)
		if err == nil {
			err = ix.apply(u)
		}
		if err == nil {
			retry = ix.retryMin
			continue
		}
		ix.until.Store(noPoll)
		if ctx.Err() != nil {
			return
		}
		msg := err.Error()
		ix.lastErr.Store(&msg)
		limit := indexRetryMax
		var te *tracker.Error
		if errors.As(err, &te) && (te.Status == http.StatusNotFound || te.Status == http.StatusServiceUnavailable) {
			// No index at this tracker (an older one, storage without
			// one, or the first build running): lookups ask it, as before.
			limit = indexAbsentRetry
			ix.log.Debug("tracker offers no hash index now; misses ask the tracker", "err", err, "retry", retry)
		} else if retry == ix.retryMin {
			ix.log.Warn("hash index update failed; misses ask the tracker", "err", err)
		} else {
			ix.log.Debug("hash index update failed again", "err", err, "retry", retry)
		}
		wait := retry
		retry = min(retry*2, limit)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// noPoll: no poll vouches for the index.
const noPoll = math.MinInt64

// errIndexMismatch: a delta that does not fit the filter held.
var errIndexMismatch = errors.New("tracker's index delta does not fit the filter held")

// apply takes one answer: a new filter, or hashes to add.
func (ix *Index) apply(u *tracker.IndexUpdate) error {
	ix.lag.Store(int64(u.Lag))
	if u.Full() {
		ix.filter.Store(u.Filter)
		ix.epoch, ix.gen = u.Epoch, u.Gen
		ix.fulls.Add(1)
		ix.log.Debug("hash index loaded", "epoch", u.Epoch, "gen", u.Gen, "bytes", u.Filter.Bits()/8, "entries", u.Entries)
	} else {
		f := ix.filter.Load()
		if f == nil || u.Epoch != ix.epoch || u.Bits != f.Bits() || u.Probes != f.Probes() || u.Gen < ix.gen {
			// Start over with a whole filter.
			ix.filter.Store(nil)
			ix.epoch, ix.gen = 0, 0
			return errIndexMismatch
		}
		for _, h := range u.Add {
			f.Add(h)
		}
		ix.gen = u.Gen
	}
	ix.updates.Add(1)
	ix.genSeen.Store(ix.gen)
	return nil
}

// IndexStats describes the index for status pages.
type IndexStats struct {
	Current bool   `json:"current"`
	Bytes   uint64 `json:"bytes"`
	Gen     uint64 `json:"gen"`
	// LocalMisses: lookups answered "nobody has it" from memory.
	LocalMisses uint64 `json:"local_misses"`
	// Passed: lookups the filter let through to the tracker (held, or
	// false positives); Stale: lookups while the index was not current.
	Passed    uint64 `json:"passed"`
	Stale     uint64 `json:"stale"`
	Updates   uint64 `json:"updates"`
	Loads     uint64 `json:"loads"`
	LastError string `json:"last_error,omitempty"`
}

// Stats returns the index's counters.
func (ix *Index) Stats() IndexStats {
	s := IndexStats{
		Current:     ix.Current(),
		Gen:         ix.genSeen.Load(),
		LocalMisses: ix.local.Load(),
		Passed:      ix.passed.Load(),
		Stale:       ix.stale.Load(),
		Updates:     ix.updates.Load(),
		Loads:       ix.fulls.Load(),
	}
	if f := ix.filter.Load(); f != nil {
		s.Bytes = f.Bits() / 8
	}
	if e := ix.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	return s
}

// Index fetches the tracker's hash index.
func (t TrackerClient) Index(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*tracker.IndexUpdate, error) {
	return t.C.Index(ctx, epoch, gen, have, wait)
}

var _ IndexSource = TrackerClient{}
