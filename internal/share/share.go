// Package share keeps the set of store paths this machine shares with its
// peers, and publishes it as a summary (internal/summary) that LAN peers
// follow: a path Nix registers is in the set, and in every follower's
// filter, within about a second.
//
// The Nix database numbers paths as it registers them (ValidPaths.id), so
// "what is new" is one indexed range scan, polled every second; each new
// path goes through the filter (trust.Filter.Shareable) and, if it may be
// shared, into the summary as a new generation. A full rescan every ten
// minutes drops what was garbage-collected and takes what the filter lets
// out only now (the upstream got it since); when many paths are gone, or
// the filter has filled up, the summary is rebuilt under a new epoch.
package share

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
)

// Paths is the local store as the inventory reads it; *nixstore.Local is one.
type Paths interface {
	// PathsSince calls fn with every valid path registered after the one
	// with id after (0: all), in registration order.
	PathsSince(ctx context.Context, after int64, fn func(id int64, storePath string) error) error
}

// Options configure an Inventory; zero values mean the defaults named.
type Options struct {
	Paths Paths // required
	// Shareable says whether a path may leave this machine (the filter);
	// nil shares everything.
	Shareable func(ctx context.Context, hash string) bool
	// Poll: how often the database is asked for new paths (1 s).
	Poll time.Duration
	// Rescan: how often the whole store is scanned again (10 min).
	Rescan time.Duration
	// Workers: concurrent Shareable checks (8).
	Workers int
	Log     *slog.Logger
}

// Inventory is the set of shared paths; Run keeps it current.
type Inventory struct {
	opt Options
	pub *summary.Publisher

	mu     sync.Mutex
	hashes map[string]struct{}
	ready  chan struct{}
	lastID int64 // owned by Run

	scans, polls atomic.Uint64
	// checked of total paths of the running (or last) full scan have been
	// decided by the filter.
	checked, total atomic.Int64
}

// New returns an inventory; nothing happens until Run.
func New(opt Options) *Inventory {
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	if opt.Rescan <= 0 {
		opt.Rescan = 10 * time.Minute
	}
	if opt.Workers <= 0 {
		opt.Workers = 8
	}
	if opt.Shareable == nil {
		opt.Shareable = func(context.Context, string) bool { return true }
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	return &Inventory{
		opt:    opt,
		pub:    summary.NewPublisher(summary.PublisherOptions{}),
		hashes: map[string]struct{}{},
		ready:  make(chan struct{}),
	}
}

// Summary is the published filter of the shared set: serve it at
// /local/summary.
func (inv *Inventory) Summary() *summary.Publisher { return inv.pub }

// Len is how many paths are shared.
func (inv *Inventory) Len() int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return len(inv.hashes)
}

// Has reports whether the path with hash part hash is shared.
func (inv *Inventory) Has(hash string) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	_, ok := inv.hashes[hash]
	return ok
}

// Progress is how far the running (or last) full scan got: checked of
// total paths decided by the filter. Both are 0 before the first scan.
func (inv *Inventory) Progress() (checked, total int64) {
	return inv.checked.Load(), inv.total.Load()
}

// Ready is closed after the first scan.
func (inv *Inventory) Ready() <-chan struct{} { return inv.ready }

// Run scans the store, publishes the shared set, and keeps it current
// until ctx ends; it returns nil then. A failed scan or poll is retried at
// the next tick.
func (inv *Inventory) Run(ctx context.Context) error {
	poll := time.NewTicker(inv.opt.Poll)
	defer poll.Stop()
	var rescanAt time.Time
	for {
		if time.Now().After(rescanAt) {
			if err := inv.rescan(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				inv.opt.Log.Warn("scanning the store for what to share failed", "err", err)
				rescanAt = time.Now().Add(inv.opt.Poll * 10)
			} else {
				rescanAt = time.Now().Add(inv.opt.Rescan)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
		}
		if _, _, ok := inv.pub.Version(); ok {
			if err := inv.poll(ctx); err != nil && ctx.Err() == nil {
				inv.opt.Log.Debug("polling the store for new paths failed", "err", err)
			}
		}
	}
}

// rescan reads the whole store and publishes it anew when the summary
// would be better rebuilt; else it adds what is new.
func (inv *Inventory) rescan(ctx context.Context) error {
	start := time.Now()
	var last int64
	set := map[string]struct{}{}
	err := inv.check(ctx, 0, &last, func(hash string) { set[hash] = struct{}{} })
	if err != nil {
		return err
	}
	inv.scans.Add(1)
	inv.mu.Lock()
	old := inv.hashes
	removed := 0
	for h := range old {
		if _, ok := set[h]; !ok {
			removed++
		}
	}
	inv.hashes = set
	inv.lastID = last
	inv.mu.Unlock()

	fp, _, entries := inv.pub.Fill()
	_, _, ready := inv.pub.Version()
	if !ready || fp > 0.01 || uint64(removed) > entries/10 {
		f := summary.NewFilter(summary.Size(uint64(2*len(set)+4096)), summary.DefaultProbes)
		for h := range set {
			if b, ok := summary.ParseHash(h); ok {
				f.AddOwned(&b)
			}
		}
		inv.pub.Reset(f, uint64(len(set)))
	} else {
		add := make([]summary.Hash, 0, len(set))
		for h := range set {
			if b, ok := summary.ParseHash(h); ok {
				add = append(add, b)
			}
		}
		inv.pub.Add(add...)
	}
	select {
	case <-inv.ready:
	default:
		close(inv.ready)
	}
	inv.opt.Log.Info("shared paths scanned", "shared", len(set), "removed", removed,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// poll adds the paths registered since the last look.
func (inv *Inventory) poll(ctx context.Context) error {
	var fresh []summary.Hash
	inv.mu.Lock()
	last := inv.lastID
	inv.mu.Unlock()
	err := inv.check(ctx, last, &last, func(hash string) {
		inv.mu.Lock()
		inv.hashes[hash] = struct{}{}
		inv.mu.Unlock()
		if b, ok := summary.ParseHash(hash); ok {
			fresh = append(fresh, b)
		}
	})
	inv.mu.Lock()
	inv.lastID = max(inv.lastID, last)
	inv.mu.Unlock()
	inv.polls.Add(1)
	if n := inv.pub.Add(fresh...); n > 0 {
		inv.opt.Log.Debug("new shared paths", "count", len(fresh))
	}
	return err
}

// check reads the paths registered after id after, asks the filter about
// each (Workers at a time) and calls shared (from one goroutine at a time)
// with those it lets out; *last becomes the highest id read. The paths are
// read first, so that no database read stays open while the filter asks
// the upstream.
func (inv *Inventory) check(ctx context.Context, after int64, last *int64, shared func(hash string)) error {
	var hashes []string
	err := inv.opt.Paths.PathsSince(ctx, after, func(id int64, storePath string) error {
		*last = max(*last, id)
		base, ok := strings.CutPrefix(storePath, store.StoreDir+"/")
		if ok && len(base) > store.HashLen && store.ValidHash(base[:store.HashLen]) {
			hashes = append(hashes, base[:store.HashLen])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the store: %w", err)
	}
	full := after == 0
	if full {
		inv.checked.Store(0)
		inv.total.Store(int64(len(hashes)))
	}
	jobs := make(chan string)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(inv.opt.Workers, len(hashes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range jobs {
				if inv.opt.Shareable(ctx, h) {
					mu.Lock()
					shared(h)
					mu.Unlock()
				}
				if full {
					inv.checked.Add(1)
				}
			}
		}()
	}
	for _, h := range hashes {
		select {
		case jobs <- h:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	return ctx.Err()
}
