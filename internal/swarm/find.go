package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/semaphore"

	"github.com/peerix/peerix/internal/store"
)

// Holder is one peer that may hold a store path.
type Holder interface {
	// ID names the peer for reputation, logs and blame; unique across
	// sources (a LAN peer's "lan/<ip>:<port>", a libp2p peer ID).
	ID() string
	// NarInfo asks the peer for the narinfo of the path with hash part
	// hash. An honest "I do not have it" is an error wrapping
	// store.ErrNotFound.
	NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error)
	// OpenNAR opens the bytes [offset, end) of the NAR, end <= nar.Size.
	// A holder whose protocol cannot stop at end may send more: the
	// reader is closed once end is reached.
	OpenNAR(ctx context.Context, nar NAR, offset, end int64) (io.ReadCloser, error)
}

// NAR names the NAR a holder is asked for.
type NAR struct {
	Hash    string // the store path's hash part
	NarHash string // SHA-256 of the NAR, Nix base-32
	Size    int64
	// URL is the NAR's URL in the holder's own narinfo, "" when the holder
	// sent none (it is asked by content).
	URL string
}

// Errors a Holder wraps so that its failures weigh right (others count as
// FailUnreachable).
var (
	// ErrLie: the answer contradicts the request (another path, another
	// size) or what is trusted.
	ErrLie = errors.New("peer's answer contradicts the request or what is trusted")
	// ErrProtocol: the peer broke the wire format.
	ErrProtocol = errors.New("peer broke the protocol")
	// ErrRemote: the peer answered with an error.
	ErrRemote = errors.New("peer answered with an error")
)

// Accept decides whether a holder's narinfo may reach Nix and returns the
// narinfo to hand it. An error wrapping ErrLie means the narinfo
// contradicts what is trusted: the holder lied. Any other error (the path
// cannot be verified, the upstream could not be asked) passes it over
// without blame.
type Accept func(ctx context.Context, hash string, ni *narinfo.NarInfo) (*narinfo.NarInfo, error)

// Options tune a Finder. Zero values mean the defaults named.
type Options struct {
	// Accept vouches for narinfos; nil accepts every narinfo that passes
	// store.CheckPeerNarInfo (--no-verify).
	Accept Accept
	// Rep ranks holders; nil makes a new table.
	Rep *Reputation
	// OnLie, if set, is told about every lie caught: the holder, the
	// path's hash and what it lied about ("narinfo", "NAR").
	OnLie func(peer, hash, what string)
	// Observer, if set, is told about every NAR transfer: the bytes as
	// they arrive, the holder sending them, the end.
	Observer Observer
	Log      *slog.Logger

	// Parallel: holders asked for a narinfo at once (3).
	Parallel int
	// Hedge: a holder that has not answered after this frees its slot,
	// so the next is asked meanwhile (300 ms).
	Hedge time.Duration
	// QueryTimeout bounds one holder's narinfo answer (2 s).
	QueryTimeout time.Duration
	// Spares: holders asked after a narinfo was accepted, whose
	// confirmations become fallbacks for the transfer (2).
	Spares int
	// HitTTL, MissTTL: how long a found path and a miss are reused (30 s,
	// 2 s).
	HitTTL, MissTTL time.Duration

	// PrefetchMax: NARs up to this size are fetched as soon as their
	// narinfo is accepted (0: none; the daemon sets DefaultPrefetchMax),
	// PrefetchBudget bytes of them at most held at a time (16 MiB); see
	// prefetch.go.
	PrefetchMax, PrefetchBudget int64

	// SpoolDir holds spool files of NARs too large for memory ("":
	// os.TempDir()); they are unlinked at once.
	SpoolDir string
	// MemoryBudget: NARs up to MemorySpoolMax are spooled in memory while
	// all of them together stay within this (64 MiB).
	MemoryBudget int64
	// StallTimeout: a holder that sends nothing for this long is dropped
	// (10 s). MinRate: one that sends less than this many bytes a second,
	// measured over RateWindow, is dropped (32 KiB/s over 10 s).
	StallTimeout time.Duration
	MinRate      int64
	RateWindow   time.Duration
}

// Defaults of Options.
const (
	DefaultParallel       = 3
	DefaultHedge          = 300 * time.Millisecond
	DefaultQueryTimeout   = 2 * time.Second
	DefaultSpares         = 2
	DefaultHitTTL         = 30 * time.Second
	DefaultMissTTL        = 2 * time.Second
	DefaultMemoryBudget   = 64 << 20
	DefaultStallTimeout   = 10 * time.Second
	DefaultMinRate        = 32 << 10
	DefaultRateWindow     = 10 * time.Second
	DefaultPrefetchBudget = 16 << 20
	// DefaultPrefetchMax is the PrefetchMax the daemon sets: the NARs of
	// most store paths (a script, a config file, a small library).
	DefaultPrefetchMax = 64 << 10
	// MemorySpoolMax: larger NARs are spooled in a file.
	MemorySpoolMax = 4 << 20
	// CutThroughMin: smaller NARs always reach Nix whole and verified;
	// larger ones from proven holders stream as they arrive.
	CutThroughMin = 8 << 20
	// maxOpens bounds the sources one transfer may open, and
	// maxOpensPerHolder how often it may go back to one holder.
	maxOpens          = 12
	maxOpensPerHolder = 2
	// maxAttempts bounds how often a NAR is fetched whole again after a
	// hash mismatch: after one from several holders at once, each holder
	// may be tried alone.
	maxAttempts = 2 + maxSources
)

// Finder finds paths among holders and fetches their NARs. One Finder
// serves one source (LAN, P2P); it is safe for concurrent use.
type Finder struct {
	opt    Options
	rep    *Reputation
	log    *slog.Logger
	memory *semaphore.Weighted
	// prefetchBudget bounds the NARs fetched ahead of Nix, prefetchSlots
	// the fetches running at once.
	prefetchBudget  *semaphore.Weighted
	prefetchSlots   chan struct{}
	prefetchWaiting atomic.Int64
}

// NewFinder returns a Finder with opt.
func NewFinder(opt Options) *Finder {
	if opt.Accept == nil {
		opt.Accept = func(_ context.Context, _ string, ni *narinfo.NarInfo) (*narinfo.NarInfo, error) { return ni, nil }
	}
	if opt.Rep == nil {
		opt.Rep = NewReputation()
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	setDefault(&opt.Parallel, DefaultParallel)
	setDefault(&opt.Hedge, DefaultHedge)
	setDefault(&opt.QueryTimeout, DefaultQueryTimeout)
	setDefault(&opt.Spares, DefaultSpares)
	setDefault(&opt.HitTTL, DefaultHitTTL)
	setDefault(&opt.MissTTL, DefaultMissTTL)
	setDefault(&opt.MemoryBudget, DefaultMemoryBudget)
	setDefault(&opt.StallTimeout, DefaultStallTimeout)
	setDefault(&opt.MinRate, DefaultMinRate)
	setDefault(&opt.RateWindow, DefaultRateWindow)
	setDefault(&opt.PrefetchBudget, DefaultPrefetchBudget)
	return &Finder{opt: opt, rep: opt.Rep, log: opt.Log, memory: semaphore.NewWeighted(opt.MemoryBudget),
		prefetchBudget: semaphore.NewWeighted(opt.PrefetchBudget), prefetchSlots: make(chan struct{}, prefetchSlots)}
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Reputation is the table the Finder ranks holders with.
func (f *Finder) Reputation() *Reputation { return f.rep }

// Found is one lookup of a path: the accepted narinfo, once there is one,
// and the holders that can send its NAR. It is a store.Lookup.
type Found struct {
	f       *Finder
	hash    string
	decided chan struct{} // closed at the first accepted narinfo, or when the lookup ended without one

	mu        sync.Mutex
	decidedAt time.Time
	ni        *narinfo.NarInfo // accepted, as Accept returned it; nil: none (yet)
	cands     []candidate      // holders whose narinfo named ni's NarHash, in the order they answered
	others    []Holder         // holders named but not asked: asked for the NAR by content
	bad       map[string]bool  // holders caught lying about this path
	grown     chan struct{}    // closed and replaced when cands or others grow
	ahead     *prefetched      // the accepted NAR fetched ahead of Nix, if small
}

// candidate is a holder and its own narinfo for the path.
type candidate struct {
	h  Holder
	ni *narinfo.NarInfo
}

// NewFound starts a lookup of hash; Run does it.
func (f *Finder) NewFound(hash string) *Found {
	return &Found{f: f, hash: hash, decided: make(chan struct{}), bad: map[string]bool{}, grown: make(chan struct{})}
}

// Fresh implements store.Lookup.
func (x *Found) Fresh(now time.Time) bool {
	select {
	case <-x.decided:
	default:
		return true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	ttl := x.f.opt.MissTTL
	if x.ni != nil {
		ttl = x.f.opt.HitTTL
	}
	return now.Sub(x.decidedAt) < ttl
}

// Hash is the hash part of the path looked up.
func (x *Found) Hash() string { return x.hash }

// Holder returns the holder whose narinfo was accepted, or nil.
func (x *Found) Holder() Holder {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ni == nil || len(x.cands) == 0 {
		return nil
	}
	return x.cands[0].h
}

// Decided is closed once NarInfo can answer.
func (x *Found) Decided() <-chan struct{} { return x.decided }

// NarInfo waits for the lookup and returns the accepted narinfo, or an
// error wrapping store.ErrNotFound.
func (x *Found) NarInfo(ctx context.Context) (*narinfo.NarInfo, error) {
	select {
	case <-x.decided:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.ni == nil {
		return nil, fmt.Errorf("%s on peers: %w", x.hash, store.ErrNotFound)
	}
	return x.ni, nil
}

func (x *Found) decide() {
	x.mu.Lock()
	defer x.mu.Unlock()
	select {
	case <-x.decided:
	default:
		x.decidedAt = time.Now()
		close(x.decided)
	}
}

// enough reports whether a narinfo was accepted and enough spares confirmed it.
func (x *Found) enough() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ni != nil && len(x.cands) > x.f.opt.Spares
}

func (x *Found) addOther(h Holder) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.others) < 16 {
		x.others = append(x.others, h)
		x.grew()
	}
}

// grew tells a running transfer that another holder may join. x.mu is held.
func (x *Found) grew() {
	close(x.grown)
	x.grown = make(chan struct{})
}

// holdersChanged is closed when another holder may send the NAR.
func (x *Found) holdersChanged() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.grown
}

// AddHolder offers a holder as a source of the NAR by content without
// asking it for a narinfo (the tracker named it; its protocol can send a
// NAR by NarHash).
func (x *Found) AddHolder(h Holder) { x.addOther(h) }

func (x *Found) markBad(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.bad[id] = true
}

func (x *Found) isBad(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.bad[id]
}

// Run asks the holders that arrive on holders for the narinfo, Parallel at
// a time, backed-off holders only when no other could give one, until a
// narinfo is accepted and Spares more confirmed it, or holders is closed
// and every asked holder answered, or ctx ends (the lookup's budget). The
// first accepted narinfo decides the lookup at once; Run goes on for
// spares.
func (f *Finder) Run(ctx context.Context, x *Found, holders <-chan Holder) {
	defer x.decide()
	sem := make(chan struct{}, f.opt.Parallel)
	var wg sync.WaitGroup
	ask := func(h Holder, timeout time.Duration) bool {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A holder slow to answer frees its slot after Hedge, so the
			// next one is asked meanwhile: a peer that never answers costs
			// a lookup Hedge, not the whole QueryTimeout.
			release := sync.OnceFunc(func() { <-sem })
			hedge := time.AfterFunc(f.opt.Hedge, release)
			defer func() { hedge.Stop(); release() }()
			f.query(ctx, x, h, timeout)
		}()
		return true
	}
	var backedOff []Holder
	seen := map[string]bool{}
loop:
	for {
		var h Holder
		var ok bool
		select {
		case h, ok = <-holders:
		case <-ctx.Done():
			break loop
		}
		if !ok {
			break
		}
		if seen[h.ID()] {
			continue
		}
		seen[h.ID()] = true
		switch {
		case x.enough():
			x.addOther(h)
		case !f.rep.Available(h.ID()):
			backedOff = append(backedOff, h)
		default:
			if !ask(h, f.opt.QueryTimeout) {
				break loop
			}
		}
	}
	wg.Wait()
	x.mu.Lock()
	none := x.ni == nil
	x.mu.Unlock()
	if none && ctx.Err() == nil {
		// Last resort: the backed-off holders, best first, each given only
		// two hedges to answer. One that recovered answers in time (a miss
		// would cost Nix an hour); one that does not answer at all costs
		// a miss no more than that.
		for _, h := range f.rank(backedOff) {
			if f.rep.lied(h.ID()) {
				continue
			}
			if !ask(h, 2*f.opt.Hedge) {
				break
			}
		}
		wg.Wait()
	}
}

// rank orders holders by reputation.
func (f *Finder) rank(hs []Holder) []Holder {
	if len(hs) < 2 {
		return hs
	}
	ids := make([]string, len(hs))
	byID := make(map[string]Holder, len(hs))
	for i, h := range hs {
		ids[i] = h.ID()
		byID[h.ID()] = h
	}
	out := make([]Holder, 0, len(hs))
	for _, id := range f.rep.Rank(ids) {
		out = append(out, byID[id])
	}
	return out
}

// query asks one holder, giving it timeout to answer, and records what it
// answered.
func (f *Finder) query(ctx context.Context, x *Found, h Holder, timeout time.Duration) {
	id := h.ID()
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	ni, err := h.NarInfo(qctx, x.hash)
	if err == nil {
		if cerr := store.CheckPeerNarInfo(ni, x.hash); cerr != nil {
			err = fmt.Errorf("%w: %v", ErrLie, cerr)
		}
	}
	if err != nil {
		f.failed(ctx, id, x, err, "narinfo")
		return
	}
	latency := time.Since(start)

	x.mu.Lock()
	winner := x.ni
	x.mu.Unlock()
	if winner != nil {
		// A spare: the same NAR confirms. Another NarHash is judged as a
		// first answer would be: one that contradicts what is trusted is
		// a lie, whether it came first or not; one the verifier vouches
		// for (a build that is not reproducible, signed by a trusted key)
		// is honest but no use for this transfer.
		same := sameNarHash(ni, winner)
		if !same {
			if _, err := f.opt.Accept(qctx, x.hash, ni); errors.Is(err, ErrLie) {
				f.failed(ctx, id, x, err, "narinfo")
				return
			}
		}
		f.rep.Success(id, latency)
		if same {
			x.mu.Lock()
			x.cands = append(x.cands, candidate{h, ni})
			x.grew()
			x.mu.Unlock()
		}
		return
	}
	out, err := f.opt.Accept(qctx, x.hash, ni)
	if err != nil {
		if !errors.Is(err, ErrLie) {
			err = fmt.Errorf("%w: %w", errUnverifiable, err)
		}
		f.failed(ctx, id, x, err, "narinfo")
		return
	}
	f.rep.Success(id, latency)
	x.mu.Lock()
	switch {
	case x.ni == nil:
		x.ni = out
		x.cands = append(x.cands, candidate{h, ni})
		x.grew()
		x.decidedAt = time.Now()
		close(x.decided)
	case sameNarHash(ni, x.ni):
		x.cands = append(x.cands, candidate{h, ni})
		x.grew()
	}
	x.mu.Unlock()
}

// failed records a holder's failure by kind. "Not found" is an honest
// answer, an unverifiable narinfo is no lie, and a failure caused by the
// lookup's own end (budget, shutdown) is nobody's fault.
func (f *Finder) failed(ctx context.Context, id string, x *Found, err error, what string) {
	kind, blame := classify(err)
	if ctx.Err() != nil && !errors.Is(err, ErrLie) {
		blame = false
	}
	if blame {
		if kind != FailLie {
			f.rep.Fail(id, kind)
		}
		if kind == FailLie {
			f.caught(x, id, what, err.Error())
			return
		}
	}
	f.log.Debug("holder unusable", "peer", id, "hash", x.hash, "what", what, "err", err)
}

// classify maps a holder's error to a failure kind and whether it counts.
func classify(err error) (Failure, bool) {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrRefused), errors.Is(err, errUnverifiable):
		return 0, false
	case errors.Is(err, ErrLie):
		return FailLie, true
	case errors.Is(err, errSlow):
		return FailSlow, true
	case errors.Is(err, ErrProtocol):
		return FailProtocol, true
	case errors.Is(err, ErrRemote):
		return FailRemote, true
	case errors.Is(err, context.Canceled):
		return 0, false
	}
	return FailUnreachable, true
}

// errUnverifiable is what Accept's non-lie refusals are treated as.
var errUnverifiable = errors.New("narinfo cannot be verified")

func sameNarHash(a, b *narinfo.NarInfo) bool {
	return a.NarHash.Format(nixhash.NixBase32, false) == b.NarHash.Format(nixhash.NixBase32, false) && a.NarSize == b.NarSize
}

// caught shuns a holder caught lying about x's path.
func (f *Finder) caught(x *Found, id, what, why string) {
	f.rep.Fail(id, FailLie)
	x.markBad(id)
	f.log.Warn("peer lied; it is shunned", "peer", id, "hash", x.hash, "what", what, "why", why)
	if f.opt.OnLie != nil {
		f.opt.OnLie(id, x.hash, what)
	}
}
