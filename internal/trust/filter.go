package trust

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// Filter modes (--filter).
const (
	ModeUpstream = "upstream" // share what the upstream has, minus the deny-list
	ModePatterns = "patterns" // share everything but the deny-list
	ModeNone     = "none"     // share everything
)

// Filter defaults.
const (
	DefaultConcurrency     = 8
	DefaultPositiveTTL     = 24 * time.Hour
	DefaultNegativeTTL     = time.Hour
	DefaultUnknownTTL      = 10 * time.Second
	DefaultCheckTimeout    = 10 * time.Second
	DefaultSaveInterval    = 5 * time.Minute
	DefaultUnhealthyAfter  = 3
	DefaultMaxCacheEntries = 1 << 20
	// maxVerdicts bounds the memo of verdicts from narinfos alone: one
	// entry a path, which keeps its narinfo (about 1 KiB) alive.
	maxVerdicts = 16 << 10
	// FilterCacheFile is the on-disk cache of upstream answers, in the state dir.
	FilterCacheFile = "filter-cache"
)

// FilterOptions configure a Filter. The zero value (plus a StateDir) is the
// default upstream filter against cache.nixos.org.
type FilterOptions struct {
	// Mode is ModeUpstream (the default when empty), ModePatterns or ModeNone.
	Mode string
	// Patterns are extra name globs never to share (--filter-pattern), on
	// top of DefaultPatterns, in the upstream and patterns modes.
	Patterns []string

	// Upstream is the upstream cache's base URL (--upstream); "" means
	// DefaultUpstream.
	Upstream string
	// UpstreamKeyName, UpstreamPublicKey and TrustedPublicKeys choose the
	// upstream's key, as UpstreamKey describes: a path whose database record
	// carries a valid signature by it is public without a network check.
	UpstreamKeyName   string
	UpstreamPublicKey string
	TrustedPublicKeys []string

	// StateDir holds the on-disk cache of upstream answers
	// (<StateDir>/filter-cache); "" keeps answers in memory only.
	StateDir string

	// HTTPClient fetches the upstream's narinfos; nil means a client with
	// sensible timeouts.
	HTTPClient *http.Client
	// Concurrency bounds the upstream requests in flight; 0 means 8.
	Concurrency int
	// CheckTimeout bounds one upstream request; 0 means 10 s.
	CheckTimeout time.Duration
	// How long answers are kept: the upstream has the path (0: 24 h), has
	// it not (0: 1 h), could not be asked (0: 10 s; in memory only).
	PositiveTTL, NegativeTTL, UnknownTTL time.Duration
	// SaveInterval is how often a changed cache is written to disk; 0
	// means 5 min. It is also written on Close.
	SaveInterval time.Duration
	// UnhealthyAfter is how many upstream failures in a row make Health
	// report it unreachable; 0 means 3.
	UnhealthyAfter int
	// MaxCacheEntries bounds the answers kept; 0 means 1 Mi.
	MaxCacheEntries int
	// HashOfURL tells which path a NAR URL of the wrapped store names; nil
	// means the path of a store.NarRef.
	HashOfURL func(url string) (string, error)
	// AnswerFromMemory makes the store Wrap returns decide from what the
	// filter already knows, never waiting for the upstream: a path whose
	// upstream status is not known yet is refused at once (and checked in
	// the background, so the next request finds the answer). A private
	// path then costs a peer's request no more time than an absent one:
	// no peer learns from the timing of a refusal that the path is here.
	// Set it where peers ask only for what Shareable let out (the daemon's
	// announcements and summaries), which is decided by then.
	AnswerFromMemory bool

	Log *slog.Logger
}

// Decision is the filter's verdict on one path.
type Decision int

const (
	// Shared: the path may leave the machine.
	Shared Decision = iota
	// RefusedPattern: the path's name is on the deny-list.
	RefusedPattern
	// RefusedPrivate: the upstream does not have the path.
	RefusedPrivate
	// RefusedUnknown: whether the upstream has the path could not be
	// learned (upstream unreachable, unexpected answer, malformed path),
	// or, answering from memory, is not known yet. Privacy fails closed.
	RefusedUnknown
	// RefusedOtherBuild: the upstream has the path with another NarHash
	// (a build that is not reproducible). Peers would take our narinfo for
	// a lie, since it contradicts the upstream's; and what we built is not
	// what the upstream published, so it is not known to be public.
	RefusedOtherBuild
)

func (d Decision) String() string {
	switch d {
	case Shared:
		return "shared"
	case RefusedPattern:
		return "refused-pattern"
	case RefusedPrivate:
		return "refused-private"
	case RefusedUnknown:
		return "refused-unknown"
	case RefusedOtherBuild:
		return "refused-other-build"
	}
	return fmt.Sprintf("Decision(%d)", int(d))
}

// FilterStats counts the filter's decisions and upstream checks since start.
type FilterStats struct {
	Shared            uint64 `json:"shared"`
	RefusedPattern    uint64 `json:"refused_pattern"`
	RefusedPrivate    uint64 `json:"refused_private"`
	RefusedOtherBuild uint64 `json:"refused_other_build"`
	Unknown           uint64 `json:"unknown"`
	// SharedBySignature counts the Shared decisions that needed no network:
	// the path's record carried a valid upstream signature.
	SharedBySignature uint64 `json:"shared_by_signature"`
	// UpstreamChecks counts upstream narinfo requests, UpstreamErrors
	// those that gave no answer, CacheHits decisions answered from the
	// cache.
	UpstreamChecks uint64 `json:"upstream_checks"`
	UpstreamErrors uint64 `json:"upstream_errors"`
	CacheHits      uint64 `json:"cache_hits"`
	CacheEntries   int    `json:"cache_entries"`
}

// answer is what the upstream said about a path.
type answer uint8

const (
	answerUnknown answer = iota
	answerPublic
	answerPrivate
)

// upstreamAnswer is what the upstream said about a path, and for a path
// it has, the SHA-256 of its NAR (its NarHash): a local build is shared
// only if it is the same.
type upstreamAnswer struct {
	kind    answer
	narHash [sha256.Size]byte
}

// Filter decides which local paths may be shared. It governs every way out:
// the Store that Wrap returns (narinfo and NAR requests of peers, over HTTP
// and P2P), and Shareable (LAN answers, tracker announcements). Its methods
// are safe for concurrent use. Close it to save the cache.
type Filter struct {
	mode      string
	patterns  *patternSet
	upstream  string
	key       *signature.PublicKey // nil: no signature shortcut
	client    *http.Client
	timeout   time.Duration
	posTTL    time.Duration
	negTTL    time.Duration
	unkTTL    time.Duration
	hashOfURL func(string) (string, error)
	fromMem   bool
	log       *slog.Logger
	cacheFile string

	answers  *memo[upstreamAnswer]
	verdicts *store.NarInfoMemo[verdict]
	health   *healthTracker

	mu    sync.Mutex
	store store.Store // the store Wrap was given, for Shareable

	cancel   context.CancelFunc
	saveStop chan struct{}
	saveDone chan struct{}
	saveMu   sync.Mutex // one save at a time
	closed   sync.Once

	shared, refusedPattern, refusedPrivate, refusedOther, unknown atomic.Uint64
	bySignature, checks, checkErrors, cacheHits                   atomic.Uint64
}

// NewFilter makes a filter. In upstream mode it loads the on-disk cache (a
// corrupt one is ignored with a warning) and starts saving it periodically.
func NewFilter(opts FilterOptions) (*Filter, error) {
	f := &Filter{
		mode:      opts.Mode,
		upstream:  strings.TrimRight(opts.Upstream, "/"),
		client:    opts.HTTPClient,
		timeout:   orDuration(opts.CheckTimeout, DefaultCheckTimeout),
		posTTL:    orDuration(opts.PositiveTTL, DefaultPositiveTTL),
		negTTL:    orDuration(opts.NegativeTTL, DefaultNegativeTTL),
		unkTTL:    orDuration(opts.UnknownTTL, DefaultUnknownTTL),
		hashOfURL: opts.HashOfURL,
		fromMem:   opts.AnswerFromMemory,
		log:       opts.Log,
	}
	if f.mode == "" {
		f.mode = ModeUpstream
	}
	switch f.mode {
	case ModeUpstream, ModePatterns, ModeNone:
	default:
		return nil, fmt.Errorf("filter mode %q: must be %s, %s or %s", f.mode, ModeUpstream, ModePatterns, ModeNone)
	}
	if f.upstream == "" {
		f.upstream = DefaultUpstream
	}
	if f.hashOfURL == nil {
		f.hashOfURL = hashOfNarURL
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.log = f.log.With("part", "filter")
	var err error
	if f.patterns, err = newPatternSet(true, opts.Patterns); err != nil {
		return nil, err
	}
	if f.mode == ModeUpstream {
		if f.key, err = UpstreamKey(f.upstream, opts.UpstreamKeyName, opts.UpstreamPublicKey, opts.TrustedPublicKeys); err != nil {
			return nil, err
		}
		if f.key == nil {
			f.log.Warn("no public key known for the upstream: every path is checked with a request for its narinfo", "upstream", f.upstream)
		}
	}
	conc := orInt(opts.Concurrency, DefaultConcurrency)
	if f.client == nil {
		f.client = newHTTPClient(conc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.answers = newMemo[upstreamAnswer](ctx, conc, orInt(opts.MaxCacheEntries, DefaultMaxCacheEntries))
	f.verdicts = store.NewNarInfoMemo[verdict](maxVerdicts)
	f.health = &healthTracker{upstream: f.upstream, what: "filter", threshold: orInt(opts.UnhealthyAfter, DefaultUnhealthyAfter), log: f.log}

	if f.mode == ModeUpstream && opts.StateDir != "" {
		f.cacheFile = filepath.Join(opts.StateDir, FilterCacheFile)
		f.loadCache()
		f.saveStop, f.saveDone = make(chan struct{}), make(chan struct{})
		go f.saveLoop(orDuration(opts.SaveInterval, DefaultSaveInterval))
	}
	return f, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func orInt(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// Mode is the filter's mode.
func (f *Filter) Mode() string { return f.mode }

// UpstreamKey is the public key whose signatures prove a path public, or ""
// when there is none (every path is checked with a request).
func (f *Filter) UpstreamKey() string {
	if f.key == nil {
		return ""
	}
	return f.key.String()
}

// Close stops the periodic save and writes the cache to disk one last time.
func (f *Filter) Close() error {
	var err error
	f.closed.Do(func() {
		if f.saveStop != nil {
			close(f.saveStop)
			<-f.saveDone
			err = f.saveCache()
		}
		f.cancel()
	})
	return err
}

// Wrap returns local as peers may see it: its NarInfo and NAR answer
// store.ErrRefused (which HTTP shows as 404) for every path the filter does
// not share. It also makes local the store Shareable asks; call Wrap once.
func (f *Filter) Wrap(local store.Store) store.Store {
	f.mu.Lock()
	f.store = local
	f.mu.Unlock()
	return &filteredStore{f: f, next: local}
}

// Shareable reports whether the path with hash part hash is held by the
// wrapped store and may be shared: for LAN answers and tracker
// announcements. It is false for an invalid hash, an absent path, and
// whenever the filter cannot tell.
func (f *Filter) Shareable(ctx context.Context, hash string) bool {
	f.mu.Lock()
	st := f.store
	f.mu.Unlock()
	if st == nil || !store.ValidHash(hash) {
		return false
	}
	ni, err := st.NarInfo(ctx, hash)
	if err != nil {
		return false
	}
	return f.Decide(ctx, hash, ni) == Shared
}

// Decide tells whether the path described by ni, whose hash part is hash,
// may be shared, and counts and logs the decision. ni comes from the local
// store: its Signatures are the database's.
func (f *Filter) Decide(ctx context.Context, hash string, ni *narinfo.NarInfo) Decision {
	return f.decideCounted(ctx, hash, ni, true)
}

func (f *Filter) decideCounted(ctx context.Context, hash string, ni *narinfo.NarInfo, wait bool) Decision {
	d, why := f.decide(ctx, hash, ni, wait)
	switch d {
	case Shared:
		f.shared.Add(1)
	case RefusedPattern:
		f.refusedPattern.Add(1)
	case RefusedPrivate:
		f.refusedPrivate.Add(1)
	case RefusedOtherBuild:
		f.refusedOther.Add(1)
	default:
		f.unknown.Add(1)
	}
	if f.log.Enabled(ctx, slog.LevelDebug) {
		f.log.Debug("filter decision", "hash", hash, "decision", d.String(), "why", why)
	}
	return d
}

// decide is the filter's rule. wait: ask the upstream and wait for its
// answer if it is not known; otherwise answer from memory only (an
// answer not known yet is RefusedUnknown, and asked for in the
// background).
func (f *Filter) decide(ctx context.Context, hash string, ni *narinfo.NarInfo, wait bool) (Decision, string) {
	if f.mode == ModeNone {
		return Shared, "filter none"
	}
	v, ok := f.verdicts.Get(hash, ni)
	if !ok {
		v = f.verdictOf(hash, ni)
		if v.final {
			f.verdicts.Put(hash, ni, v)
		}
	}
	if v.bySignature {
		f.bySignature.Add(1)
	}
	if v.final {
		return v.d, v.why
	}
	local, ok := narHashDigest(ni)
	if !ok {
		return RefusedUnknown, "local narinfo has no sha256 NarHash"
	}
	a, known := f.upstreamAnswer(ctx, hash, wait)
	switch {
	case !known:
		return RefusedUnknown, "upstream's answer not known yet (asked in the background)"
	case a.kind == answerPublic && a.narHash == local:
		return Shared, "upstream has the same build"
	case a.kind == answerPublic:
		return RefusedOtherBuild, "upstream has another build (its NarHash differs)"
	case a.kind == answerPrivate:
		return RefusedPrivate, "upstream has it not"
	}
	return RefusedUnknown, "upstream could not be asked"
}

// verdict is what the narinfo alone tells about a path: final unless the
// upstream must be asked.
type verdict struct {
	d           Decision
	why         string
	final       bool
	bySignature bool
}

// verdictOf decides from the narinfo alone: its name against the
// deny-list, its signatures against the upstream's key. That costs a
// pattern match per glob and an ed25519 verification, so the verdict is
// memoised (f.verdicts) for as long as the store hands out the same
// narinfo; what the upstream says has its own cache (f.answers).
func (f *Filter) verdictOf(hash string, ni *narinfo.NarInfo) verdict {
	if ni == nil || hashOfStorePath(ni.StorePath) != hash {
		return verdict{d: RefusedUnknown, why: "narinfo is not for this path", final: true}
	}
	if g, ok := f.patterns.match(nameOfStorePath(ni.StorePath)); ok {
		return verdict{d: RefusedPattern, why: "name matches " + g, final: true}
	}
	if f.mode == ModePatterns {
		return verdict{d: Shared, why: "no pattern matches", final: true}
	}
	if f.key != nil && signing.Verify(ni, []signature.PublicKey{*f.key}) {
		return verdict{d: Shared, why: "signed by " + f.key.Name, final: true, bySignature: true}
	}
	return verdict{}
}

// backgroundPause: a check a peer's request started in the background
// waits this long, so that the work it costs does not slow the answer to
// that request (which would tell the peer that the path is here).
const backgroundPause = 20 * time.Millisecond

// narHashDigest is the SHA-256 a narinfo's NarHash names.
func narHashDigest(ni *narinfo.NarInfo) (d [sha256.Size]byte, ok bool) {
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || len(ni.NarHash.Digest()) != sha256.Size {
		return d, false
	}
	copy(d[:], ni.NarHash.Digest())
	return d, true
}

// upstreamAnswer asks the cache, else the upstream, about hash. With wait
// false it never waits: known is false when the cache has no answer (one
// is then fetched in the background), and an expired answer is used while
// a fresh one is fetched.
func (f *Filter) upstreamAnswer(ctx context.Context, hash string, wait bool) (a upstreamAnswer, known bool) {
	fetch := func(ctx context.Context) (upstreamAnswer, time.Duration) {
		a := f.check(ctx, hash)
		switch a.kind {
		case answerPublic:
			return a, f.posTTL
		case answerPrivate:
			return a, f.negTTL
		}
		return a, f.unkTTL
	}
	if !wait {
		a, known = f.answers.peek(hash, backgroundPause, fetch)
		if known {
			f.cacheHits.Add(1)
		}
		return a, known
	}
	a, hit, err := f.answers.get(ctx, hash, fetch)
	if err != nil {
		return upstreamAnswer{}, true
	}
	if hit {
		f.cacheHits.Add(1)
	}
	return a, true
}

// check asks the upstream for <upstream>/<hash>.narinfo: a valid narinfo
// for the path is public (with its NarHash), 404 private, anything else
// unknown.
func (f *Filter) check(ctx context.Context, hash string) upstreamAnswer {
	f.checks.Add(1)
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	a, err := f.fetchNarInfo(ctx, hash)
	if err != nil {
		f.checkErrors.Add(1)
		f.health.fail(err)
		f.log.Debug("upstream check failed", "hash", hash, "err", err)
		return upstreamAnswer{}
	}
	f.health.ok()
	return a
}

func (f *Filter) fetchNarInfo(ctx context.Context, hash string) (upstreamAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.upstream+"/"+hash+".narinfo", nil)
	if err != nil {
		return upstreamAnswer{}, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return upstreamAnswer{}, err
	}
	defer drainClose(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return upstreamAnswer{kind: answerPrivate}, nil
	default:
		return upstreamAnswer{}, fmt.Errorf("GET %s: HTTP %d", req.URL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamNarInfo+1))
	if err != nil {
		return upstreamAnswer{}, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	ni, err := parseUpstreamNarInfo(body, hash)
	if err != nil {
		return upstreamAnswer{}, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	a := upstreamAnswer{kind: answerPublic}
	a.narHash, _ = narHashDigest(ni) // CheckNarInfo made sure it is one
	return a, nil
}

// Health reports whether the upstream answers the filter's checks.
func (f *Filter) Health() Health { return f.health.health() }

// Stats returns the decision counters.
func (f *Filter) Stats() FilterStats {
	return FilterStats{
		Shared:            f.shared.Load(),
		RefusedPattern:    f.refusedPattern.Load(),
		RefusedPrivate:    f.refusedPrivate.Load(),
		RefusedOtherBuild: f.refusedOther.Load(),
		Unknown:           f.unknown.Load(),
		SharedBySignature: f.bySignature.Load(),
		UpstreamChecks:    f.checks.Load(),
		UpstreamErrors:    f.checkErrors.Load(),
		CacheHits:         f.cacheHits.Load(),
		CacheEntries:      f.answers.len(),
	}
}

// filteredStore is the local store as the filter lets peers see it.
type filteredStore struct {
	f    *Filter
	next store.Store
}

func (s *filteredStore) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	ni, err := s.next.NarInfo(ctx, hash)
	if err != nil {
		return nil, err
	}
	if d := s.f.decideCounted(ctx, hash, ni, !s.f.fromMem); d != Shared {
		return nil, fmt.Errorf("%s: %s: %w", hash, d, store.ErrRefused)
	}
	return ni, nil
}

func (s *filteredStore) NAR(ctx context.Context, url string, offset int64) (*store.NAR, error) {
	if s.f.mode == ModeNone {
		return s.next.NAR(ctx, url, offset)
	}
	hash, err := s.f.hashOfURL(url)
	if err != nil {
		if !errors.Is(err, store.ErrBadRequest) && !errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: %w", store.ErrRefused, err)
		}
		return nil, err
	}
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		return nil, err
	}
	if o, ok := s.next.(store.NAROpener); ok {
		return o.NAROf(ctx, ni, url, offset) // no second lookup of the path
	}
	return s.next.NAR(ctx, url, offset)
}

var _ io.Closer = (*Filter)(nil)
