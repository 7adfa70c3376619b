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
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
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

// CodeUnavailable (503): the tracker offers no index (yet).
const CodeUnavailable = "unavailable"

// MaxIndexWait bounds a long poll.
const MaxIndexWait = 30 * time.Second

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
	indexHistory = 1 << 18
	// indexBuildTimeout bounds one read of the database.
	indexBuildTimeout = 10 * time.Minute
	// indexRetry: after a failed build or refresh, the next waits this long.
	indexRetry = 10 * time.Second
	// indexMinEpoch: a filter is rebuilt (for being full) at most this
	// often.
	indexMinEpoch = time.Minute
)

// serverIndex is the tracker's side of /v1/index.
type serverIndex struct {
	src       HashSource // nil: no index
	reg       Registry
	exclusive bool
	now       func() time.Time
	log       *slog.Logger

	mu      sync.Mutex
	f       *Filter
	epoch   uint64
	gen     uint64
	entries uint64 // hashes that set a bit since the epoch began
	ones    uint64 // bits set
	hist    []histEntry
	histN   int    // hashes in hist
	since   uint64 // deltas can be made from any generation >= since
	changed chan struct{}
	ready   chan struct{} // closed once f is set
	busy    bool          // a build or refresh is running
	ended   bool          // EndPolls: answer at once from now on
	pending [][HashBytes]byte
	// building: adds go to pending too, for the filter being built.
	building  bool
	scannedAt time.Time     // start of the last completed read of the database
	scanTook  time.Duration // how long it took
	retryAt   time.Time
	builtAt   time.Time     // when the epoch's filter was read
	buildTook time.Duration // and how long that took
	full      []byte        // encoded full answer of (fullEpoch, fullGen)
	fullEpoch uint64
	fullGen   uint64
}

type histEntry struct {
	gen    uint64
	hashes [][HashBytes]byte
}

func newServerIndex(reg Registry, now func() time.Time, log *slog.Logger) *serverIndex {
	x := &serverIndex{reg: reg, now: now, log: log, changed: make(chan struct{}), ready: make(chan struct{})}
	x.src, _ = reg.(HashSource)
	if sw, ok := reg.(soleWriter); ok {
		x.exclusive = sw.soleWriter()
	}
	return x
}

// added takes the hashes of a packages request the registry accepted.
func (x *serverIndex) added(hashes []string) {
	if x.src == nil || len(hashes) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.f == nil && !x.building {
		return // no index yet: the first build reads the database
	}
	var fresh [][HashBytes]byte
	for _, s := range hashes {
		h, ok := ParseHash(s)
		if !ok {
			continue
		}
		if x.building {
			x.pending = append(x.pending, h)
		}
		if x.f != nil {
			if n := x.f.Add(h); n > 0 {
				x.ones += uint64(n)
				x.entries++
				fresh = append(fresh, h)
			}
		}
	}
	x.publish(fresh)
}

// publish makes the hashes just set in x.f a new generation and wakes the
// long polls. x.mu is held.
func (x *serverIndex) publish(fresh [][HashBytes]byte) {
	if len(fresh) == 0 {
		return
	}
	x.gen++
	x.hist = append(x.hist, histEntry{gen: x.gen, hashes: fresh})
	x.histN += len(fresh)
	for x.histN > indexHistory && len(x.hist) > 0 {
		x.histN -= len(x.hist[0].hashes)
		x.since = x.hist[0].gen
		x.hist[0] = histEntry{}
		x.hist = x.hist[1:]
	}
	x.wake()
	// Rebuilt at most every minute, or ten times the last build's time,
	// so that a filter that cannot grow (MaxIndexBits) or a fleet filling
	// a new tracker does not keep the database busy.
	if !x.busy && fpRate(x.ones, x.f.m, x.f.k) > indexRebuildFP && !x.now().Before(x.retryAt) &&
		x.now().Sub(x.builtAt) >= max(indexMinEpoch, 10*x.buildTook) {
		x.log.Info("hash index full; rebuilding it", "bytes", x.f.m/8, "entries", x.entries)
		x.startBuild()
	}
}

func (x *serverIndex) wake() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// maybeStart starts the first build, or in shared mode a refresh when one
// is due. x.mu is held.
func (x *serverIndex) maybeStart() {
	if x.busy || x.now().Before(x.retryAt) {
		return
	}
	switch {
	case x.f == nil:
		x.startBuild()
	case !x.exclusive && x.now().Sub(x.scannedAt) >= max(sharedIndexRefresh, 3*x.scanTook):
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
		if g.addOwned(&pending[i]) > 0 {
			entries++
		}
	}
	g.fold(entries * IndexBitsPerEntry)
	x.f, x.entries, x.ones = g, entries, g.Ones()
	x.epoch = rand.Uint64()
	x.gen, x.hist, x.histN, x.since = 0, nil, 0, 0
	x.scannedAt, x.scanTook = start, x.now().Sub(start)
	x.builtAt, x.buildTook = start, x.scanTook
	x.full = nil
	select {
	case <-x.ready:
	default:
		close(x.ready)
	}
	x.wake()
	x.log.Info("hash index built", "entries", entries, "bytes", g.m/8,
		"fp_rate", fpRate(x.ones, g.m, g.k), "took", x.now().Sub(start).Round(time.Millisecond))
}

// read builds a filter from the database, sized for the number of rows
// (an upper bound of the distinct hashes) and folded to what they need.
func (x *serverIndex) read(ctx context.Context) (*Filter, uint64, error) {
	peers, err := x.reg.Peers(ctx, time.Time{})
	if err != nil {
		return nil, 0, err
	}
	var rows uint64
	for _, p := range peers {
		rows += uint64(max(p.Packages, 0))
	}
	g := NewFilter(IndexSize(rows+1024), IndexProbes)
	var entries uint64
	err = x.src.EachHash(ctx, func(b []byte) error {
		if len(b) == HashBytes && g.addOwned((*[HashBytes]byte)(b)) > 0 {
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
// what other trackers added becomes a new generation.
func (x *serverIndex) refresh() {
	start := x.now()
	ctx, cancel := context.WithTimeout(context.Background(), indexBuildTimeout)
	defer cancel()
	var fresh [][HashBytes]byte
	batch := make([][HashBytes]byte, 0, 4096)
	flush := func() {
		x.mu.Lock()
		for _, h := range batch {
			if n := x.f.Add(h); n > 0 {
				x.ones += uint64(n)
				x.entries++
				fresh = append(fresh, h)
			}
		}
		x.mu.Unlock()
		batch = batch[:0]
	}
	err := x.src.EachHash(ctx, func(b []byte) error {
		if len(b) == HashBytes {
			batch = append(batch, [HashBytes]byte(b))
			if len(batch) == cap(batch) {
				flush()
			}
		}
		return nil
	})
	flush()
	x.mu.Lock()
	defer x.mu.Unlock()
	x.busy = false
	if err != nil {
		x.retryAt = x.now().Add(indexRetry)
		x.log.Warn("rereading the hash index failed", "err", err)
		// The bits are set; publishing them is harmless and keeps deltas
		// in step with full answers.
	} else {
		x.scannedAt, x.scanTook = start, x.now().Sub(start)
	}
	x.publish(fresh)
	x.log.Debug("hash index reread", "new", len(fresh), "took", x.now().Sub(start).Round(time.Millisecond))
}

// lag is how far behind the database this tracker's filter may be. x.mu
// is held.
func (x *serverIndex) lag() time.Duration {
	if x.exclusive {
		return 0
	}
	return max(x.now().Sub(x.scannedAt), 0)
}

// answer is the update for a peer holding (epoch, gen), in two parts to
// write one after the other (the second, a whole filter, is shared by
// every such answer and must not be modified), or nil if the peer is
// current. x.mu is held.
func (x *serverIndex) answer(epoch, gen uint64, have bool) (head, body []byte, err error) {
	if have && epoch == x.epoch && gen == x.gen {
		return nil, nil, nil
	}
	if have && epoch == x.epoch && gen < x.gen && gen >= x.since {
		i, _ := slices.BinarySearchFunc(x.hist, gen+1, func(e histEntry, g uint64) int {
			return cmpUint(e.gen, g)
		})
		var n int
		for _, e := range x.hist[i:] {
			n += len(e.hashes)
		}
		if n <= MaxIndexDelta && uint64(n)*HashBytes < x.f.m/8 {
			u := &IndexUpdate{Epoch: x.epoch, Gen: x.gen, Lag: x.lag(), Bits: x.f.m, Probes: x.f.k,
				Add: make([][HashBytes]byte, 0, n)}
			for _, e := range x.hist[i:] {
				u.Add = append(u.Add, e.hashes...)
			}
			head, err = u.MarshalBinary()
			return head, nil, err
		}
	}
	if x.full == nil || x.fullEpoch != x.epoch || x.fullGen != x.gen {
		u := &IndexUpdate{Epoch: x.epoch, Gen: x.gen, Entries: x.entries, Filter: x.f}
		b, err := u.MarshalBinary()
		if err != nil {
			return nil, nil, err
		}
		x.full, x.fullEpoch, x.fullGen = b, x.epoch, x.gen
	}
	// The lag is the only part that changes without a new generation.
	head = slices.Clone(x.full[:indexHeaderSize])
	binary.BigEndian.PutUint32(head[32:], uint32(min(x.lag().Milliseconds(), math.MaxUint32)))
	return head, x.full[indexHeaderSize:], nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// serveIndex is GET /v1/index[?epoch=<16 hex>&gen=<n>][&wait=<ms>].
func (s *Server) serveIndex(w http.ResponseWriter, r *http.Request) {
	x := s.idx
	q := r.URL.Query()
	var (
		epoch, gen uint64
		have       bool
		wait       time.Duration
		err        error
	)
	if v := q.Get("epoch"); v != "" {
		if epoch, err = strconv.ParseUint(v, 16, 64); err != nil || len(v) != 16 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "epoch must be 16 hex digits", nil)
			return
		}
		if gen, err = strconv.ParseUint(q.Get("gen"), 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "gen must be a non-negative integer (with epoch)", nil)
			return
		}
		have = true
	} else if q.Has("gen") {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "gen without epoch", nil)
		return
	}
	if v := q.Get("wait"); v != "" {
		ms, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "wait must be a number of milliseconds", nil)
			return
		}
		wait = min(time.Duration(ms)*time.Millisecond, MaxIndexWait)
	}
	if x.src == nil {
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "this tracker's storage offers no hash index: use /v1/find", nil)
		return
	}
	if !x.exclusive {
		wait = min(wait, sharedIndexRefresh)
	}
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	x.mu.Lock()
	x.maybeStart()
	if x.f == nil {
		ready := x.ready
		x.mu.Unlock()
		first := time.NewTimer(indexFirstWait)
		defer first.Stop()
		select {
		case <-ready:
		case <-first.C:
		case <-r.Context().Done():
			return
		}
		x.mu.Lock()
		if x.f == nil {
			x.mu.Unlock()
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "the hash index is being built", nil)
			return
		}
	}
	for {
		head, body, err := x.answer(epoch, gen, have)
		if err != nil {
			x.mu.Unlock()
			s.internal(w, r, err)
			return
		}
		if head == nil && timeout != nil && !x.ended {
			changed := x.changed
			x.mu.Unlock()
			select {
			case <-changed:
			case <-timeout:
				timeout = nil
			case <-r.Context().Done():
				return
			}
			x.mu.Lock()
			continue
		}
		if head == nil {
			u := &IndexUpdate{Epoch: x.epoch, Gen: x.gen, Lag: x.lag(), Bits: x.f.m, Probes: x.f.k}
			head, err = u.MarshalBinary()
		}
		x.mu.Unlock()
		if err != nil {
			s.internal(w, r, err)
			return
		}
		w.Header().Set("Content-Type", IndexContentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(head)+len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(head)
		w.Write(body)
		return
	}
}

// EndPolls answers every pending long poll of GET /v1/index at once, and
// later ones without waiting: call it when the HTTP server shuts down
// (http.Server.RegisterOnShutdown), which otherwise waits for them.
func (s *Server) EndPolls() {
	x := s.idx
	x.mu.Lock()
	defer x.mu.Unlock()
	x.ended = true
	x.wake()
}

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

// Index asks the tracker for its hash index: the whole filter (epoch 0 and
// have false), or what was added since generation gen of epoch, waiting up
// to wait for something to be added. An answer of another epoch is a whole
// filter. A tracker that offers no index answers an *Error with Status 503
// (CodeUnavailable) or 404 (an older tracker).
func (c *Client) Index(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*IndexUpdate, error) {
	u := c.base + "/v1/index"
	sep := "?"
	if have {
		u += fmt.Sprintf("?epoch=%016x&gen=%d", epoch, gen)
		sep = "&"
	}
	if wait > 0 {
		u += sep + "wait=" + strconv.FormatInt(wait.Milliseconds(), 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	// The client's own timeout would cut long polls and large filters.
	hc := &http.Client{Transport: c.http.Transport, Timeout: wait + indexFetchTimeout}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readError(resp)
	}
	up, err := ReadIndexUpdate(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("tracker: GET /v1/index: %w", err)
	}
	return up, nil
}

// indexFetchTimeout bounds an index request beyond its wait: time enough
// for a whole filter (30 MiB at 1 MiB/s).
const indexFetchTimeout = time.Minute

// readError turns a refusal into an *Error, as Client.do does.
func readError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ej errorJSON
	if json.Unmarshal(body, &ej) == nil {
		e.Code, e.Message = ej.Code, ej.Error
	} else {
		e.Message = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	return e
}
