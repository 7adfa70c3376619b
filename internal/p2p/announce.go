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
// us at once, not after its TTL) and returns nil. Tracker errors are
// logged and retried, never fatal.
func (a *Announcer) Run(ctx context.Context) error {
	log := a.cfg.Log
	announced, stateTTL, haveState := a.loadState()
	needFull := !haveState

	var (
		current   map[string]bool // last scan
		lastAddrs []ma.Multiaddr
		lastOK    time.Time
		ttl       = defaultTTL
	)
	if stateTTL > 0 {
		ttl = stateTTL
	}
	retrySoon := false // a failed sync wants a heartbeat (and full sync) soon
	scans := make(chan map[string]bool, 1)
	scanning := false
	startScan := func() {
		if scanning {
			return
		}
		scanning = true
		go func() {
			set, err := a.scan(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("scanning the store for the tracker failed", "err", err)
					a.setErr(err)
				}
				set = nil
			}
			select {
			case scans <- set:
			case <-ctx.Done():
			}
		}()
	}

	announce := func() bool {
		addrs := a.cfg.Addrs()
		rctx, cancel := context.WithTimeout(ctx, trackerRequestTimeout)
		res, err := a.cfg.Registry.Announce(rctx, addrs)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("tracker announce failed", "err", err)
				a.setErr(err)
			}
			if !lastOK.IsZero() && time.Since(lastOK) > ttl {
				// The tracker has forgotten us and our hashes by now.
				needFull = true
			}
			return false
		}
		if !lastOK.IsZero() && time.Since(lastOK) > ttl {
			needFull = true
		}
		lastOK = time.Now()
		lastAddrs = addrs
		if res.TTL > 0 {
			ttl = res.TTL
		}
		if res.New {
			needFull = true
		}
		a.mu.Lock()
		a.stats.LastAnnounce = lastOK
		a.stats.ObservedAddr = res.ObservedAddr
		a.stats.LastError = ""
		a.mu.Unlock()
		if !needFull {
			a.touchState(lastOK)
		}
		return true
	}

	syncPackages := func() {
		if current == nil || lastOK.IsZero() {
			return // nothing scanned yet, or not registered
		}
		var err error
		if needFull {
			err = a.sendFull(ctx, current)
			if err == nil {
				announced = current
				needFull = false
				log.Info("announced the shared store paths to the tracker", "paths", len(current))
			}
		} else {
			add, remove := diff(current, announced)
			if len(add)+len(remove) == 0 {
				// After a restart the tracker may know everything already
				// (announced.json): that is still what it knows from us.
				a.mu.Lock()
				a.stats.Announced = len(announced)
				a.mu.Unlock()
				return
			}
			err = a.sendDelta(ctx, add, remove)
			if err == nil {
				announced = current
				log.Debug("announced store changes to the tracker", "added", len(add), "removed", len(remove))
			} else {
				// A delta the tracker did not take (it may have expired us:
				// tracker.ErrUnknownPeer): announce again soon, then send
				// everything.
				needFull = true
				retrySoon = true
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
		a.stats.Announced = len(announced)
		a.stats.LastPackages = time.Now()
		a.mu.Unlock()
		if err := a.saveState(announced, ttl); err != nil {
			log.Warn("saving the announced state failed", "err", err)
		}
	}

	ok := announce()
	startScan()
	heartbeat := time.NewTimer(a.heartbeatEvery(ttl, ok))
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
		case set := <-scans:
			scanning = false
			if set != nil {
				current = set
				syncPackages()
			}
			if retrySoon {
				retrySoon = false
				heartbeat.Reset(time.Second)
			}
		case <-heartbeat.C:
			ok := announce()
			if ok {
				// Catches up whatever could not be sent while the
				// tracker was away (cheap when nothing changed).
				syncPackages()
			}
			next := a.heartbeatEvery(ttl, ok)
			if retrySoon {
				retrySoon = false
				next = min(next, 10*time.Second)
			}
			heartbeat.Reset(next)
		case <-poll.C:
			if time.Since(started) > addrFastWindow {
				poll.Reset(addrPoll)
			}
			if !lastOK.IsZero() && !sameAddrs(a.cfg.Addrs(), lastAddrs) {
				if announce() {
					syncPackages()
				}
			}
		case <-rescan.C:
			startScan()
		case <-a.rescan:
			startScan()
		}
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
