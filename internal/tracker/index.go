package tracker

// The hash index: GET /v1/index (docs/protocol.md section 3).
//
// A peer keeps in memory one Bloom filter of every hash any peer holds, so
// it answers a miss (a hash nobody holds: most of what Nix asks) from
// memory; only hashes the filter may hold go to /v1/find. One global
// filter, not one per peer: a miss needs only "nobody", holders come from
// /v1/find, and hashes shared by many peers (most of a fleet's store) are
// counted once. 20 M distinct hashes (1,000 peers x 20,000 with no
// overlap) take 30 MiB at 12 bits a hash; a fleet on common nixpkgs
// revisions a fraction of that.
//
// The tracker builds the filter from its database (HashSource) and names
// it with an epoch; every packages request that adds hashes the filter did
// not hold makes a new generation. A peer fetches the whole filter once,
// then long-polls for deltas: GET /v1/index?epoch=E&gen=G&wait=MS answers
// at once with the hashes added since generation G, or, if there are none,
// as soon as there are (or after wait). So a peer's index is current
// within a network round trip, at the cost of one pending request per
// peer. Removed hashes stay in the filter (it may only over-approximate)
// until the tracker rebuilds it, under a new epoch, once it has filled up
// to a 1% false-positive rate; peers then fetch the new filter whole.
//
// With a registry only this process writes to (SQLite), every add passes
// through this server, so the filter is complete at every answer. With a
// registry other trackers write to (PostgreSQL), this tracker sees their
// adds only when it rereads the database, every sharedIndexRefresh while
// peers poll; answers then carry the lag, and long polls last at most
// that long.

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peerix/peerix/internal/summary"
	api "github.com/peerix/peerix/internal/tracker/trackerapi"
)

// HashSource is implemented by registries that can serve /v1/index.
// Without it the route answers 503 unavailable and peers ask /v1/find for
// every lookup, as before.
type HashSource interface {
	// EachHash calls fn with every stored hash (the 20 decoded bytes of
	// the hash part), of live peers and of expired ones not yet swept, in
	// any order, repeats allowed. fn must not keep hash after it returns.
	EachHash(ctx context.Context, fn func(hash []byte) error) error
}

// soleWriter is implemented by registries no other process writes to, so
// that every add passes through this server.
type soleWriter interface {
	soleWriter() bool
}

// MaxIndexWait bounds a long poll.
const MaxIndexWait = summary.MaxWait

// Index tuning; variables for tests.
var (
	// sharedIndexRefresh: with other writers, how often the database is
	// reread while peers poll, and how long a long poll lasts at most.
	sharedIndexRefresh = 10 * time.Second
	// indexFirstWait: how long a request waits for the first build.
	indexFirstWait = 5 * time.Second
	// indexRebuildFP: the estimated false-positive rate at which the
	// filter is rebuilt (it grows with adds and never shrinks).
	indexRebuildFP = 0.01
	// indexHistory: how many added hashes are kept for deltas; a peer
	// further behind gets the whole filter.
	indexHistory = summary.DefaultHistory
	// indexBuildTimeout bounds one read of the database.
	indexBuildTimeout = 10 * time.Minute
	// indexRetry: after a failed build or refresh, the next waits this long.
	indexRetry = 10 * time.Second
	// indexMinEpoch: a filter is rebuilt (for being full) at most this
	// often.
	indexMinEpoch = time.Minute
	// indexUrgentFP and indexUrgentEpoch: a filter that has filled up
	// far past its limit (a burst of new hashes, up to what the quotas
	// let in) is rebuilt sooner, at most this often, so that it is not
	// left saturated (every lookup a possible hit) for long.
	indexUrgentFP    = 0.2
	indexUrgentEpoch = 10 * time.Second
)

// serverIndex is the tracker's side of /v1/index: a summary.Publisher fed
// by builds from the database and by every packages request.
type serverIndex struct {
	src       HashSource // nil: no index
	reg       Registry
	exclusive bool
	now       func() time.Time
	log       *slog.Logger
	pub       *summary.Publisher
	// scannedAt: start of the last completed read of the database (Unix
	// ns; read by the publisher's lag, which must not take mu).
	scannedAt atomic.Int64

	mu      sync.Mutex
	busy    bool // a build or refresh is running
	pending []summary.Hash
	// building: adds go to pending too, for the filter being built.
	building  bool
	scanTook  time.Duration // how long the last read of the database took
	retryAt   time.Time
	builtAt   time.Time     // when the epoch's filter was read
	buildTook time.Duration // and how long that took
}

func newServerIndex(reg Registry, now func() time.Time, log *slog.Logger) *serverIndex {
	x := &serverIndex{reg: reg, now: now, log: log}
	x.src, _ = reg.(HashSource)
	if sw, ok := reg.(soleWriter); ok {
		x.exclusive = sw.soleWriter()
	}
	x.pub = summary.NewPublisher(summary.PublisherOptions{History: indexHistory, Lag: x.lag})
	return x
}

// added takes the hashes of a packages request the registry accepted.
func (x *serverIndex) added(hashes []string) {
	if x.src == nil || len(hashes) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, _, ok := x.pub.Version(); !ok && !x.building {
		return // no index yet: the first build reads the database
	}
	hs := make([]summary.Hash, 0, len(hashes))
	for _, s := range hashes {
		if h, ok := summary.ParseHash(s); ok {
			hs = append(hs, h)
		}
	}
	if x.building {
		x.pending = append(x.pending, hs...)
	}
	// Checked after every add, not only after adds that set bits: a
	// saturated filter gets no new bits, and must not stay saturated.
	x.pub.Add(hs...)
	x.maybeRebuild()
}

// maybeRebuild starts a new epoch once the filter passed its
// false-positive limit: at most every minute (every indexUrgentEpoch once
// it is far past), or ten times the last build's time, so that a filter
// that cannot grow (MaxBits) or a fleet filling a new tracker does not
// keep the database busy. x.mu is held.
func (x *serverIndex) maybeRebuild() {
	fp, bits, entries := x.pub.Fill()
	every := indexMinEpoch
	if fp > indexUrgentFP {
		every = indexUrgentEpoch
	}
	if !x.busy && fp > indexRebuildFP && !x.now().Before(x.retryAt) &&
		x.now().Sub(x.builtAt) >= max(every, 10*x.buildTook) {
		x.log.Info("hash index full; rebuilding it", "bytes", bits/8, "entries", entries)
		x.startBuild()
	}
}

// maybeStart starts the first build, or in shared mode a refresh when one
// is due. x.mu is held.
func (x *serverIndex) maybeStart() {
	if x.busy || x.now().Before(x.retryAt) {
		return
	}
	_, _, ready := x.pub.Version()
	switch {
	case !ready:
		x.startBuild()
	case x.exclusive:
		x.maybeRebuild() // a filter that filled up while no one added
	case !x.exclusive && x.now().Sub(time.Unix(0, x.scannedAt.Load())) >= max(sharedIndexRefresh, 3*x.scanTook):
		// A slow read (a large database) is repeated less often, so that
		// the database spends at most a quarter of its time on it.
		x.busy = true
		go x.refresh()
	}
}

// startBuild reads the whole database into a new filter (a new epoch) in
// the background. x.mu is held.
func (x *serverIndex) startBuild() {
	x.busy, x.building, x.pending = true, true, nil
	go x.build()
}

func (x *serverIndex) build() {
	start := x.now()
	ctx, cancel := context.WithTimeout(context.Background(), indexBuildTimeout)
	defer cancel()
	g, entries, err := x.read(ctx)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.busy, x.building = false, false
	pending := x.pending
	x.pending = nil
	if err != nil {
		x.retryAt = x.now().Add(indexRetry)
		x.log.Warn("building the hash index failed", "err", err)
		return
	}
	for i := range pending {
		if g.AddOwned(&pending[i]) > 0 {
			entries++
		}
	}
	g.Fold(entries * summary.BitsPerEntry)
	x.scannedAt.Store(start.UnixNano())
	x.scanTook = x.now().Sub(start)
	x.builtAt, x.buildTook = start, x.scanTook
	x.pub.Reset(g, entries)
	x.log.Info("hash index built", "entries", entries, "bytes", g.Bits()/8,
		"fp_rate", g.FalsePositiveRate(), "took", x.now().Sub(start).Round(time.Millisecond))
}

// read builds a filter from the database, sized for the number of rows
// (an upper bound of the distinct hashes) and folded to what they need.
func (x *serverIndex) read(ctx context.Context) (*summary.Filter, uint64, error) {
	rows, err := x.reg.Rows(ctx)
	if err != nil {
		return nil, 0, err
	}
	g := summary.NewFilter(summary.Size(uint64(max(rows, 0))+1024), summary.DefaultProbes)
	var entries uint64
	err = x.src.EachHash(ctx, func(b []byte) error {
		if len(b) == summary.HashBytes && g.AddOwned((*summary.Hash)(b)) > 0 {
			entries++
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return g, entries, nil
}

// refresh rereads the database into the current filter (shared mode):
// what other trackers added becomes new generations.
func (x *serverIndex) refresh() {
	start := x.now()
	ctx, cancel := context.WithTimeout(context.Background(), indexBuildTimeout)
	defer cancel()
	var fresh int
	batch := make([]summary.Hash, 0, 4096)
	err := x.src.EachHash(ctx, func(b []byte) error {
		if len(b) == summary.HashBytes {
			batch = append(batch, summary.Hash(b))
			if len(batch) == cap(batch) {
				fresh += x.pub.Add(batch...)
				batch = batch[:0]
			}
		}
		return nil
	})
	if err == nil {
		// Before the last batch is published: a long poll it wakes
		// reports this scan's lag, not the one before.
		x.scannedAt.Store(start.UnixNano())
	}
	fresh += x.pub.Add(batch...)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.busy = false
	if err != nil {
		x.retryAt = x.now().Add(indexRetry)
		x.log.Warn("rereading the hash index failed", "err", err)
		// The bits are set and published; that is harmless.
	} else {
		x.scanTook = x.now().Sub(start)
	}
	x.maybeRebuild()
	x.log.Debug("hash index reread", "new", fresh, "took", x.now().Sub(start).Round(time.Millisecond))
}

// lag is how far behind the database this tracker's filter may be.
func (x *serverIndex) lag() time.Duration {
	if x.exclusive {
		return 0
	}
	return max(x.now().Sub(time.Unix(0, x.scannedAt.Load())), 0)
}

// serveIndex is GET /v1/index[?epoch=<16 hex>&gen=<n>][&wait=<ms>].
func (s *Server) serveIndex(w http.ResponseWriter, r *http.Request) {
	x := s.idx
	epoch, gen, have, wait, err := summary.ParseQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	if x.src == nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "this tracker's storage offers no hash index: use /v1/find", nil)
		return
	}
	if !x.exclusive {
		wait = min(wait, sharedIndexRefresh)
	}
	x.mu.Lock()
	x.maybeStart()
	x.mu.Unlock()
	// The first build may take a moment: wait for it a little.
	first := time.NewTimer(indexFirstWait)
	defer first.Stop()
	select {
	case <-x.pub.Ready():
	case <-first.C:
	case <-r.Context().Done():
		return
	}
	head, body, err := x.pub.Poll(r.Context(), epoch, gen, have, wait)
	switch {
	case errors.Is(err, summary.ErrNotReady):
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the hash index is being built", nil)
		return
	case err != nil:
		return // the caller went away
	}
	summary.WriteAnswer(w, head, body)
}

// EndPolls answers every pending long poll of GET /v1/index at once, and
// later ones without waiting: call it when the HTTP server shuts down
// (http.Server.RegisterOnShutdown), which otherwise waits for them.
func (s *Server) EndPolls() { s.idx.pub.EndPolls() }

// EachHash implements HashSource: one scan of the packages table's primary
// key.
func (s *SQLite) EachHash(ctx context.Context, fn func(hash []byte) error) error {
	rows, err := s.r.QueryContext(ctx, `SELECT hash FROM packages`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var b sql.RawBytes // no copy per row
	for rows.Next() {
		if err := rows.Scan(&b); err != nil {
			return err
		}
		if err := fn(b); err != nil {
			return err
		}
	}
	return rows.Err()
}

// soleWriter: one tracker process owns a SQLite file.
func (s *SQLite) soleWriter() bool { return true }

var (
	_ HashSource = (*SQLite)(nil)
	_ soleWriter = (*SQLite)(nil)
)
