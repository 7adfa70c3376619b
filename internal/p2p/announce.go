package p2p

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/store"
)

// Registry is what the Announcer needs from the tracker (signed writes,
// docs/protocol.md section 3).
type Registry interface {
	// Announce registers the peer or refreshes its addresses: the heartbeat.
	Announce(ctx context.Context, addrs []ma.Multiaddr) (Announced, error)
	// Packages sends the full set of shared hashes (full) or a delta.
	Packages(ctx context.Context, full bool, add, remove []string) error
	// Deregister removes the peer and its hashes at once.
	Deregister(ctx context.Context) error
}

// Announced is the tracker's answer to an announce.
type Announced struct {
	// TTL: a peer silent for this long is forgotten; 0 if not told.
	TTL time.Duration
	// ObservedAddr: where the tracker saw us ("ip:port"), "" if not told.
	ObservedAddr string
	// New: the tracker did not know the peer (first start, or it expired),
	// so it has none of our hashes: the full set must be sent.
	New bool
}

// PathLister lists the local store's paths; *nixstore.Local is one.
type PathLister interface {
	StorePaths(ctx context.Context, fn func(storePath string) error) error
}

// AnnouncedFile keeps, in the state directory, which hashes the tracker was
// told, so a restart sends only the difference.
const AnnouncedFile = "announced.json"

// Announcer defaults.
const (
	DefaultRescanInterval = time.Minute
	defaultTTL            = 2 * time.Minute
	// packagesChunk: hashes per packages request; about 40 bytes each in
	// JSON, so a chunk stays far below the tracker's 8 MiB limit.
	packagesChunk = 20000
	// shareWorkers: concurrent shareable checks during a scan.
	shareWorkers = 8
	// addrPoll: how often our addresses are compared with the announced.
	addrPoll = 5 * time.Second
	// Right after start the relay reservation (and with it our circuit
	// address) arrives milliseconds after the first announce; until it is
	// announced, peers behind NAT cannot reach us and answer Nix 404s that
	// it remembers for an hour. So poll fast for the first seconds.
	addrPollFast   = 200 * time.Millisecond
	addrFastWindow = 15 * time.Second
	// requestTimeout of one tracker request.
	trackerRequestTimeout = 30 * time.Second
	// deregisterTimeout bounds the goodbye at shutdown.
	deregisterTimeout = 3 * time.Second
)

// AnnouncerConfig configures an Announcer.
type AnnouncerConfig struct {
	Registry Registry   // required
	Paths    PathLister // required: the local store
	// Shareable says whether the shared store would give hash to peers
	// (the filter); nil shares everything.
	Shareable func(ctx context.Context, hash string) bool
	// Addrs returns the addresses to announce (Host.AnnounceAddrs).
	Addrs    func() []ma.Multiaddr
	StateDir string // where announced.json lives; "" keeps no state
	// Tracker (its URL) and PeerID identify the state: a state written
	// for another tracker or identity is ignored.
	Tracker string
	PeerID  peer.ID
	// Interval between rescans of the store; 0 = DefaultRescanInterval.
	Interval time.Duration
	Log      *slog.Logger
}

// Announcer keeps the tracker told who we are (heartbeats) and which store
// hashes we share (a full set once, then deltas). Run it in a goroutine;
// when its context ends it deregisters the peer.
type Announcer struct {
	cfg    AnnouncerConfig
	rescan chan struct{}

	mu    sync.Mutex
	stats AnnouncerStats
}

// AnnouncerStats is the announcer's state for status pages.
type AnnouncerStats struct {
	Announced    int       `json:"announced"` // hashes the tracker knows from us
	LastAnnounce time.Time `json:"last_announce,omitzero"`
	LastPackages time.Time `json:"last_packages,omitzero"`
	ObservedAddr string    `json:"observed_addr,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
}

// NewAnnouncer returns an announcer; nothing happens until Run.
func NewAnnouncer(cfg AnnouncerConfig) *Announcer {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRescanInterval
	}
	if cfg.Addrs == nil {
		cfg.Addrs = func() []ma.Multiaddr { return nil }
	}
	return &Announcer{cfg: cfg, rescan: make(chan struct{}, 1)}
}

// Rescan asks for a rescan of the store and a delta now (on SIGHUP, or
// after a build). It does not block.
func (a *Announcer) Rescan() {
	select {
	case a.rescan <- struct{}{}:
	default:
	}
}

// Stats returns the announcer's state.
func (a *Announcer) Stats() AnnouncerStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

func (a *Announcer) setErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.stats.LastError = ""
	} else {
		a.stats.LastError = err.Error()
	}
}

// announcedState is the content of announced.json.
type announcedState struct {
	Tracker string `json:"tracker"`
	PeerID  string `json:"peer_id"`
	// TTLSeconds is the tracker's peer TTL when the state was written. The
	// file's modification time is the last heartbeat the tracker took: a
	// state older than the TTL is stale (the tracker expired us).
	TTLSeconds int      `json:"ttl_s"`
	Hashes     []string `json:"hashes"`
}

// Run announces until ctx ends, then deregisters (so the tracker forgets
// us at once, not after its TTL) and returns nil once its scan has
// stopped. Tracker errors are logged and retried, never fatal.
//
// It is a small state machine (announceState): the events are a scan's
// result, the heartbeat, the address poll and a rescan (timer or
// Rescan); each moves the state by one of three steps: heartbeat
// (announce), syncPackages (full set or delta), startScan.
func (a *Announcer) Run(ctx context.Context) error {
	st := a.newState()
	defer st.scanDone.Wait()

	ok := st.heartbeat(ctx)
	st.startScan(ctx)
	heartbeat := time.NewTimer(a.heartbeatEvery(st.ttl, ok))
	defer heartbeat.Stop()
	rescan := time.NewTicker(a.cfg.Interval)
	defer rescan.Stop()
	started := time.Now()
	poll := time.NewTicker(addrPollFast)
	defer poll.Stop()

	for {
		select {
		case <-ctx.Done():
			a.deregister()
			return nil
		case set := <-st.scans:
			st.scanning = false
			if set != nil {
				st.current = set
				st.syncPackages(ctx)
			}
			if st.retrySoon {
				st.retrySoon = false
				heartbeat.Reset(time.Second)
			}
		case <-heartbeat.C:
			ok := st.heartbeat(ctx)
			if ok {
				// Catches up whatever could not be sent while the
				// tracker was away (cheap when nothing changed).
				st.syncPackages(ctx)
			}
			next := a.heartbeatEvery(st.ttl, ok)
			if st.retrySoon {
				st.retrySoon = false
				next = min(next, 10*time.Second)
			}
			heartbeat.Reset(next)
		case <-poll.C:
			if time.Since(started) > addrFastWindow {
				poll.Reset(addrPoll)
			}
			if st.registered() && !sameAddrs(a.cfg.Addrs(), st.lastAddrs) {
				if st.heartbeat(ctx) {
					st.syncPackages(ctx)
				}
			}
		case <-rescan.C:
			st.startScan(ctx)
		case <-a.rescan:
			st.startScan(ctx)
		}
	}
}

// announceState is what Run knows between events; only Run's goroutine
// touches it (a scan hands its result over on scans).
type announceState struct {
	a *Announcer

	announced map[string]bool // what the tracker was told
	current   map[string]bool // the last scan; nil before the first
	lastAddrs []ma.Multiaddr  // the addresses last announced
	lastOK    time.Time       // the last heartbeat the tracker took
	ttl       time.Duration   // the tracker's peer TTL
	needFull  bool            // the tracker may lack our hashes: send all
	retrySoon bool            // a failed delta wants a heartbeat soon

	scans    chan map[string]bool // a scan's result (nil: it failed)
	scanning bool
	scanDone sync.WaitGroup
}

func (a *Announcer) newState() *announceState {
	announced, stateTTL, haveState := a.loadState()
	st := &announceState{
		a:         a,
		announced: announced,
		ttl:       defaultTTL,
		needFull:  !haveState,
		scans:     make(chan map[string]bool, 1),
	}
	if stateTTL > 0 {
		st.ttl = stateTTL
	}
	return st
}

// registered: the tracker took a heartbeat since the start.
func (st *announceState) registered() bool { return !st.lastOK.IsZero() }

// expired: the last heartbeat the tracker took is older than its TTL, so
// it has forgotten us and our hashes by now.
func (st *announceState) expired() bool {
	return st.registered() && time.Since(st.lastOK) > st.ttl
}

// startScan lists the shareable paths in the background, unless a scan
// is under way.
func (st *announceState) startScan(ctx context.Context) {
	if st.scanning {
		return
	}
	st.scanning = true
	st.scanDone.Go(func() {
		set, err := st.a.scan(ctx)
		if err != nil {
			if ctx.Err() == nil {
				st.a.cfg.Log.Warn("scanning the store for the tracker failed", "err", err)
				st.a.setErr(err)
			}
			set = nil
		}
		select {
		case st.scans <- set:
		case <-ctx.Done():
		}
	})
}

// heartbeat announces our addresses; false if the tracker did not take it.
func (st *announceState) heartbeat(ctx context.Context) bool {
	a := st.a
	addrs := a.cfg.Addrs()
	rctx, cancel := context.WithTimeout(ctx, trackerRequestTimeout)
	res, err := a.cfg.Registry.Announce(rctx, addrs)
	cancel()
	if st.expired() {
		st.needFull = true
	}
	if err != nil {
		if ctx.Err() == nil {
			a.cfg.Log.Warn("tracker announce failed", "err", err)
			a.setErr(err)
		}
		return false
	}
	st.lastOK = time.Now()
	st.lastAddrs = addrs
	if res.TTL > 0 {
		st.ttl = res.TTL
	}
	if res.New {
		st.needFull = true
	}
	a.mu.Lock()
	a.stats.LastAnnounce = st.lastOK
	a.stats.ObservedAddr = res.ObservedAddr
	a.stats.LastError = ""
	a.mu.Unlock()
	if !st.needFull {
		a.touchState(st.lastOK)
	}
	return true
}

// syncPackages tells the tracker what changed since the last scan it
// took: everything when it may lack our hashes, else the delta.
func (st *announceState) syncPackages(ctx context.Context) {
	a, log := st.a, st.a.cfg.Log
	if st.current == nil || !st.registered() {
		return // nothing scanned yet, or not registered
	}
	var err error
	if st.needFull {
		err = a.sendFull(ctx, st.current)
		if err == nil {
			st.announced = st.current
			st.needFull = false
			log.Info("announced the shared store paths to the tracker", "paths", len(st.current))
		}
	} else {
		add, remove := diff(st.current, st.announced)
		if len(add)+len(remove) == 0 {
			// After a restart the tracker may know everything already
			// (announced.json): that is still what it knows from us.
			a.mu.Lock()
			a.stats.Announced = len(st.announced)
			a.mu.Unlock()
			return
		}
		err = a.sendDelta(ctx, add, remove)
		if err == nil {
			st.announced = st.current
			log.Debug("announced store changes to the tracker", "added", len(add), "removed", len(remove))
		} else {
			// A delta the tracker did not take (it may have expired us:
			// tracker.ErrUnknownPeer): announce again soon, then send
			// everything.
			st.needFull = true
			st.retrySoon = true
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("sending store paths to the tracker failed", "err", err)
			a.setErr(err)
		}
		return
	}
	a.mu.Lock()
	a.stats.Announced = len(st.announced)
	a.stats.LastPackages = time.Now()
	a.mu.Unlock()
	if err := a.saveState(st.announced, st.ttl); err != nil {
		log.Warn("saving the announced state failed", "err", err)
	}
}

// heartbeatEvery: ttl/3 while the tracker answers, sooner while it does
// not (so registration happens as soon as the tracker is back).
func (a *Announcer) heartbeatEvery(ttl time.Duration, ok bool) time.Duration {
	d := ttl / 3
	if !ok {
		d = min(d, 10*time.Second)
	}
	return max(d, time.Second)
}

func (a *Announcer) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), deregisterTimeout)
	defer cancel()
	if err := a.cfg.Registry.Deregister(ctx); err != nil {
		a.cfg.Log.Warn("deregistering from the tracker failed; it forgets us after its TTL", "err", err)
		return
	}
	a.cfg.Log.Info("deregistered from the tracker")
	// The tracker has none of our hashes now: the next start sends all.
	if a.cfg.StateDir != "" {
		os.Remove(filepath.Join(a.cfg.StateDir, AnnouncedFile))
	}
}

// scan lists the local store's hashes that may be shared.
func (a *Announcer) scan(ctx context.Context) (map[string]bool, error) {
	var all []string
	err := a.cfg.Paths.StorePaths(ctx, func(p string) error {
		name, ok := strings.CutPrefix(p, "/nix/store/")
		if ok && len(name) > store.HashLen && store.ValidHash(name[:store.HashLen]) {
			all = append(all, name[:store.HashLen])
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(all))
	if a.cfg.Shareable == nil {
		for _, h := range all {
			set[h] = true
		}
		return set, nil
	}
	var mu sync.Mutex
	work := make(chan string)
	var wg sync.WaitGroup
	for range shareWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range work {
				if a.cfg.Shareable(ctx, h) {
					mu.Lock()
					set[h] = true
					mu.Unlock()
				}
			}
		}()
	}
	for _, h := range all {
		select {
		case work <- h:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return set, nil
}

// sendFull replaces the tracker's set: the first chunk with full=true, the
// rest as deltas (as docs/protocol.md allows).
func (a *Announcer) sendFull(ctx context.Context, set map[string]bool) error {
	hashes := sortedKeys(set)
	first := true
	for len(hashes) > 0 || first {
		n := min(len(hashes), packagesChunk)
		if err := a.packages(ctx, first, hashes[:n], nil); err != nil {
			return err
		}
		hashes = hashes[n:]
		first = false
	}
	return nil
}

func (a *Announcer) sendDelta(ctx context.Context, add, remove []string) error {
	for len(add)+len(remove) > 0 {
		na := min(len(add), packagesChunk)
		nr := min(len(remove), packagesChunk-na)
		if err := a.packages(ctx, false, add[:na], remove[:nr]); err != nil {
			return err
		}
		add, remove = add[na:], remove[nr:]
	}
	return nil
}

func (a *Announcer) packages(ctx context.Context, full bool, add, remove []string) error {
	rctx, cancel := context.WithTimeout(ctx, trackerRequestTimeout)
	defer cancel()
	if add == nil {
		add = []string{}
	}
	if remove == nil {
		remove = []string{}
	}
	return a.cfg.Registry.Packages(rctx, full, add, remove)
}

// diff returns what cur has that old has not, and the reverse, sorted.
func diff(cur, old map[string]bool) (add, remove []string) {
	for h := range cur {
		if !old[h] {
			add = append(add, h)
		}
	}
	for h := range old {
		if !cur[h] {
			remove = append(remove, h)
		}
	}
	slices.Sort(add)
	slices.Sort(remove)
	return add, remove
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sameAddrs(a, b []ma.Multiaddr) bool {
	if len(a) != len(b) {
		return false
	}
	as := make([]string, len(a))
	bs := make([]string, len(b))
	for i := range a {
		as[i], bs[i] = a[i].String(), b[i].String()
	}
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}

// loadState reads announced.json; a missing, unreadable or foreign state
// means the tracker gets the full set.
func (a *Announcer) loadState() (set map[string]bool, ttl time.Duration, ok bool) {
	if a.cfg.StateDir == "" {
		return nil, 0, false
	}
	path := filepath.Join(a.cfg.StateDir, AnnouncedFile)
	f, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.cfg.Log.Warn("announced state unreadable; sending the full set", "file", path, "err", err)
		}
		return nil, 0, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, false
	}
	var st announcedState
	if err := json.NewDecoder(f).Decode(&st); err != nil {
		a.cfg.Log.Warn("announced state malformed; sending the full set", "file", path, "err", err)
		return nil, 0, false
	}
	if st.Tracker != a.cfg.Tracker || st.PeerID != a.cfg.PeerID.String() {
		return nil, 0, false
	}
	ttl = time.Duration(st.TTLSeconds) * time.Second
	if ttl <= 0 {
		ttl = defaultTTL
	}
	if time.Since(fi.ModTime()) > ttl {
		// The tracker has expired us since: it holds none of our hashes.
		return nil, ttl, false
	}
	set = make(map[string]bool, len(st.Hashes))
	for _, h := range st.Hashes {
		if store.ValidHash(h) {
			set[h] = true
		}
	}
	return set, ttl, true
}

// touchState marks the state file as confirmed by a heartbeat at t.
func (a *Announcer) touchState(t time.Time) {
	if a.cfg.StateDir != "" {
		os.Chtimes(filepath.Join(a.cfg.StateDir, AnnouncedFile), t, t)
	}
}

// saveState writes announced.json atomically.
func (a *Announcer) saveState(set map[string]bool, ttl time.Duration) error {
	if a.cfg.StateDir == "" {
		return nil
	}
	b, err := json.Marshal(announcedState{Tracker: a.cfg.Tracker, PeerID: a.cfg.PeerID.String(),
		TTLSeconds: int(ttl / time.Second), Hashes: sortedKeys(set)})
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.cfg.StateDir, AnnouncedFile), b, 0o600)
}

// writeFileAtomic writes b to path through a synced temporary file renamed
// into place.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	syncDir(dir)
	return nil
}
