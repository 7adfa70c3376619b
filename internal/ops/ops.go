// Package ops is the operator's side of `peerix serve`: Prometheus metrics,
// /health, the JSON status API, the live dashboard, transfer progress,
// recent activity, and the counters kept across restarts in the state dir.
//
// The daemon makes one Ops with New and
//
//   - wraps its whole HTTP handler in Instrument (request counts and
//     durations by route, progress of NARs served to peers),
//   - sets cache.Server.Observe to ObserveCache (hits, misses, bytes, the
//     most requested and served paths),
//   - serves Handler() for /health, /metrics, /api/status, /api/peers and
//     /dashboard (cache.Server.Next),
//   - calls Load before serving and runs Run(ctx) until shutdown, which saves
//     the counters every minute and once more when ctx ends,
//   - lets the peer layers report transfers (StartTransfer from peers,
//     StartUpload to them; Instrument starts those of HTTP itself), the
//     P2P server's requests (PeerRequest), VerificationFailure,
//     FilterDecision and Activity.
//
// Every method is safe for concurrent use, and every method of a nil *Ops
// or nil *Transfer does nothing, so optional wiring needs no nil checks.
package ops

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options describe the daemon to Ops. Only Mode and Version are needed;
// every func may be nil.
type Options struct {
	Mode    string // p2p, lan or local
	Version string
	Commit  string // the git commit of the build, abbreviated
	// PeerID returns the libp2p peer ID, "" before the host is up or in
	// modes without one.
	PeerID func() string

	Listen            string   // the HTTP listener's address
	StoreRoot         string   // --store-root
	StateDir          string   // stats.json lives here; also checked by /health
	Tracker           string   // --tracker URL, "" if none (shown; doctor checks it)
	Upstream          string   // --upstream URL, "" if unused (shown; doctor checks it)
	Filter            string   // --filter
	PublicKey         string   // the daemon's signing public key, "" if none
	TrustedPublicKeys []string // --trusted-public-key

	Log *slog.Logger

	// Checks are the lines of /health: name → check. A nil func means "not
	// applicable here" (for example the tracker in LAN mode) and is shown as
	// such without failing. Each check gets CheckTimeout. Ops adds a
	// "state_dir" check (the state dir is writable) unless one is given.
	Checks map[string]func(ctx context.Context) error

	// Peers lists the peers known now, for /api/peers and the peer gauges.
	Peers func() []PeerInfo

	// Store describes the local store and the filter's progress. It is
	// called at most every StoreInfoTTL, so a count over the database is
	// acceptable but should not take seconds.
	Store func(ctx context.Context) StoreInfo

	// PathName turns a hash part into a store path ("/nix/store/<hash>-name")
	// for the dashboard's lists, "" if unknown. Names are remembered.
	PathName func(ctx context.Context, hash string) string
}

// Tunables.
const (
	// CheckTimeout bounds each /health check.
	CheckTimeout = 2 * time.Second
	// healthTTL: /health answers from a result at most this old, so that a
	// scraper polling fast does not hammer the tracker and the upstream.
	healthTTL = time.Second
	// StoreInfoTTL: how long Options.Store's answer is reused.
	StoreInfoTTL = 10 * time.Second
	// SaveInterval: how often Run saves the stats.
	SaveInterval = time.Minute
	// TopN entries are shown of the most requested and served paths.
	TopN = 20
	// topCapacity counters are kept for them (space-saving: the more
	// counters, the more accurate the top entries).
	topCapacity = 128
	// activitySize recent events are kept.
	activitySize = 200
	// recentTransfers finished transfers are kept for the dashboard.
	recentTransfers = 20
)

// PeerInfo is one peer as /api/peers shows it.
type PeerInfo struct {
	ID         string      `json:"peer_id"`
	Addrs      []string    `json:"addrs"`
	Source     string      `json:"source"`    // "lan" or "p2p"
	Connected  bool        `json:"connected"` // a live connection now
	Direct     bool        `json:"direct"`    // at least one connection not through a relay
	Relayed    bool        `json:"relayed"`   // at least one connection through a relay
	LastSeen   time.Time   `json:"last_seen,omitzero"`
	Reputation *Reputation `json:"reputation,omitempty"`
}

// Reputation is what recent history says about a peer; the field names
// match swarm.PeerReputation.
type Reputation struct {
	Successes    int       `json:"successes"`
	Failures     int       `json:"failures"`
	SuccessRate  float64   `json:"success_rate"` // 0..1
	LatencyMs    float64   `json:"latency_ms"`   // 0: never measured
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	LastFailure  string    `json:"last_failure,omitempty"`
	Lies         int       `json:"lies"` // times the peer was caught lying (a narinfo or a NAR)
}

// StoreInfo describes the local store. Counts are -1 when unknown.
type StoreInfo struct {
	Paths  int64  `json:"paths"`            // valid paths in the database
	Shared int64  `json:"shared"`           // of them, paths the filter lets peers fetch
	Filter string `json:"filter,omitempty"` // upstream, patterns, none
	// FilterChecked of FilterTotal paths have been decided by the filter
	// (its initial scan); equal when done.
	FilterChecked int64  `json:"filter_checked"`
	FilterTotal   int64  `json:"filter_total"`
	Announced     int64  `json:"announced"` // hashes announced to the tracker
	Error         string `json:"error,omitempty"`
}

// Ops collects and serves the operator's view of the daemon.
type Ops struct {
	opts    Options
	log     *slog.Logger
	started time.Time

	stats   *stats
	metrics *metrics
	reg     *prometheus.Registry

	activity activityRing
	history  history

	tmu       sync.Mutex
	transfers map[*Transfer]struct{}
	recent    ring[TransferInfo] // the last recentTransfers finished
	nextID    atomic.Int64

	health   sync.Mutex // serialises health runs; guards the cache below
	lastHlth Health
	lastAt   time.Time

	smu       sync.Mutex
	storeInfo *StoreInfo
	storeAt   time.Time

	nmu   sync.Mutex
	names map[string]string // hash → store path, from PathName

	saveMu sync.Mutex
}

// New makes the daemon's Ops. It registers its metrics in a registry of its
// own, so several can live in one process (tests).
func New(opts Options) *Ops {
	o := &Ops{
		opts:      opts,
		log:       opts.Log,
		started:   time.Now(),
		transfers: make(map[*Transfer]struct{}),
		recent:    newRing[TransferInfo](recentTransfers),
		names:     make(map[string]string),
	}
	o.activity.ring = newRing[ActivityEntry](activitySize)
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	o.stats = newStats()
	o.reg = prometheus.NewRegistry()
	o.metrics = newMetrics(o, o.reg)
	return o
}

// Started is when Ops was made (the daemon's start).
func (o *Ops) Started() time.Time {
	if o == nil {
		return time.Time{}
	}
	return o.started
}

// Handler serves /health and /metrics to anyone, and /api/status,
// /api/peers and /dashboard to this machine only (403 otherwise). Mount it
// as cache.Server.Next.
func (o *Ops) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", o.serveHealth)
	mux.Handle("GET /metrics", o.metricsHandler())
	mux.Handle("GET /api/status", LocalOnly(http.HandlerFunc(o.serveStatus)))
	mux.Handle("GET /api/peers", LocalOnly(http.HandlerFunc(o.servePeers)))
	mux.Handle("GET /dashboard", LocalOnly(http.HandlerFunc(serveDashboard)))
	mux.Handle("GET /dashboard/", LocalOnly(http.RedirectHandler("/dashboard", http.StatusFound)))
	return mux
}

// peers returns Options.Peers sorted: connected first, then by source and ID.
func (o *Ops) peers() []PeerInfo {
	if o.opts.Peers == nil {
		return []PeerInfo{}
	}
	ps := slices.Clone(o.opts.Peers())
	if ps == nil {
		ps = []PeerInfo{}
	}
	slices.SortFunc(ps, func(a, b PeerInfo) int {
		if a.Connected != b.Connected {
			if a.Connected {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.ID, b.ID))
	})
	for i := range ps {
		if ps[i].Addrs == nil {
			ps[i].Addrs = []string{}
		}
	}
	return ps
}

// store returns Options.Store's answer, reused for StoreInfoTTL.
func (o *Ops) store(ctx context.Context) *StoreInfo {
	if o.opts.Store == nil {
		return nil
	}
	o.smu.Lock()
	defer o.smu.Unlock()
	if o.storeInfo != nil && time.Since(o.storeAt) < StoreInfoTTL {
		return o.storeInfo
	}
	info := o.opts.Store(ctx)
	o.storeInfo, o.storeAt = &info, time.Now()
	return o.storeInfo
}

// pathName resolves a hash part to its store path through Options.PathName,
// remembering answers.
func (o *Ops) pathName(ctx context.Context, hash string) string {
	o.nmu.Lock()
	name, ok := o.names[hash]
	o.nmu.Unlock()
	if ok || o.opts.PathName == nil {
		return name
	}
	if name = o.opts.PathName(ctx, hash); name != "" {
		o.nmu.Lock()
		if len(o.names) >= maxNames {
			clear(o.names) // the lists churn slowly; start over rather than track age
		}
		o.names[hash] = name
		o.nmu.Unlock()
	}
	return name
}

// maxNames bounds the remembered store path names.
const maxNames = 4096
