// Command peerix-loadgen plays many signed peers against a peerix tracker on
// this machine and measures how the tracker takes it.
//
// Each peer has its own ed25519 libp2p identity and talks through
// trackerapi.Client, exactly as `peerix serve` does. The run has two phases:
//
//  1. announce: every peer registers and sends its full set of -hashes
//     hashes (-announce-concurrency peers at a time). Part of each set (-shared) is
//     drawn from a common pool with Zipf popularity, so some hashes are held
//     by nearly every peer and most by a few; the rest is the peer's own.
//     Reported: the time until the tracker holds every full set.
//  2. queries: -deltas delta announcements per peer (each removes and adds
//     -delta-size/2 hashes), one heartbeat per peer, and -finds find
//     queries (popular pool hashes, hashes held by one peer, and misses),
//     shuffled and run -concurrency at a time, at -rate requests/s if
//     given, after a pause of -settle. Reported: p50/p99 latency of each
//     kind.
//
// Finally it checks that the tracker counts for each peer exactly the hashes
// the peer holds. -duration caps the whole run; what was measured until then
// is reported. The tracker must be on a loopback address.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

type options struct {
	tracker     string
	peers       int
	hashes      int
	shared      float64
	pool        int
	zipf        float64
	deltas      int
	deltaSize   int
	finds       int
	concurrency int
	announcers  int
	rate        float64
	duration    time.Duration
	settle      time.Duration
	seed        uint64
	firstPeer   int
	jsonOut     string
	deregister  bool
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "peerix-loadgen:", err)
		}
		os.Exit(2)
	}
}

func run(args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("peerix-loadgen", flag.ContinueOnError)
	fs.StringVar(&o.tracker, "tracker", "http://127.0.0.1:12305", "tracker URL (loopback only)")
	fs.IntVar(&o.peers, "peers", 1000, "signed peers to play")
	fs.IntVar(&o.hashes, "hashes", 20000, "hashes in each peer's full set")
	fs.Float64Var(&o.shared, "shared", 0.5, "fraction of each set drawn from the common pool")
	fs.IntVar(&o.pool, "pool", 200000, "size of the common pool of hashes")
	fs.Float64Var(&o.zipf, "zipf", 1.1, "Zipf exponent of the pool's popularity (> 1)")
	fs.IntVar(&o.deltas, "deltas", 5, "delta announcements per peer")
	fs.IntVar(&o.deltaSize, "delta-size", 20, "hashes per delta: half removed, half added")
	fs.IntVar(&o.finds, "finds", 20000, "find queries in all")
	fs.IntVar(&o.concurrency, "concurrency", 32, "requests in flight in the query phase")
	fs.IntVar(&o.announcers, "announce-concurrency", 4, "peers registering and sending their full set at once")
	fs.Float64Var(&o.rate, "rate", 0, "requests/s in the query phase (0: as fast as -concurrency allows)")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "cap on the whole run")
	fs.DurationVar(&o.settle, "settle", 0, "pause between the phases (heartbeats go on), to measure queries apart from the database's work after the bulk load")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the hash sets")
	fs.IntVar(&o.firstPeer, "first-peer", 0, "number of the first peer: a second run against the same tracker with other peers (own hashes) and the same pool")
	fs.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.BoolVar(&o.deregister, "deregister", false, "deregister every peer at the end")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.peers < 1 || o.hashes < 0 || o.finds < 0 || o.deltas < 0 || o.deltaSize < 0 || o.firstPeer < 0:
		return errors.New("-peers must be positive; -hashes, -finds, -deltas, -delta-size, -first-peer not negative")
	case o.concurrency < 1 || o.announcers < 1 || o.duration <= 0 || o.rate < 0:
		return errors.New("-concurrency, -announce-concurrency and -duration must be positive, -rate not negative")
	case o.shared < 0 || o.shared > 1 || o.pool < 1 || o.zipf <= 1:
		return errors.New("-shared must be in [0, 1], -pool positive, -zipf above 1")
	}
	if err := checkLoopback(o.tracker); err != nil {
		return err
	}
	// Keep a connection per worker: the default keeps 2 per host and
	// would open a new one for nearly every request.
	if t, ok := http.DefaultTransport.(*http.Transport); ok {
		t.MaxIdleConns = o.concurrency + 16
		t.MaxIdleConnsPerHost = o.concurrency + 16
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()

	res, err := newLoad(o).run(ctx, stdout)
	if err != nil {
		return err
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if res.Errors > 0 || res.Incomplete || res.Mismatches > 0 {
		return fmt.Errorf("%d errors, %d count mismatches, incomplete: %v", res.Errors, res.Mismatches, res.Incomplete)
	}
	return nil
}

// checkLoopback refuses a tracker that is not on this machine.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-tracker %q: want http://host:port", raw)
	}
	ips, err := net.LookupIP(u.Hostname())
	if err != nil {
		return fmt.Errorf("-tracker %q: %w", raw, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("-tracker %q: not a loopback address; peerix-loadgen only loads a tracker on this machine", raw)
		}
	}
	return nil
}

// Results, also written with -json.
type Results struct {
	Peers        int      `json:"peers"`
	Hashes       int      `json:"hashes_per_peer"`
	Concurrency  int      `json:"concurrency"`
	Announcers   int      `json:"announce_concurrency"`
	Rate         float64  `json:"rate"`
	AnnounceS    float64  `json:"full_announce_s"` // until the tracker held every full set
	HashesPerS   float64  `json:"full_hashes_per_s"`
	Full         Stats    `json:"full_set"`
	Register     Stats    `json:"register"`
	Delta        Stats    `json:"delta"`
	Heartbeat    Stats    `json:"heartbeat"`
	Find         Stats    `json:"find"`
	FindPopular  Stats    `json:"find_popular"`
	FindSingle   Stats    `json:"find_single"`
	FindMiss     Stats    `json:"find_miss"`
	QueryS       float64  `json:"query_phase_s"`
	QueryPerS    float64  `json:"query_phase_req_per_s"`
	Errors       int64    `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	Mismatches   int      `json:"count_mismatches"`
	HeldHashes   int64    `json:"held_hashes"`
	Incomplete   bool     `json:"incomplete"`
}

// Stats are latencies of one kind of request, in milliseconds.
type Stats struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func stats(d []time.Duration) Stats {
	if len(d) == 0 {
		return Stats{}
	}
	slices.Sort(d)
	ms := func(x time.Duration) float64 { return math.Round(float64(x)/1e3) / 1e3 }
	pct := func(p float64) time.Duration { return d[max(int(math.Ceil(p*float64(len(d))))-1, 0)] }
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return Stats{N: len(d), P50: ms(pct(0.50)), P99: ms(pct(0.99)), Max: ms(d[len(d)-1]), Mean: ms(sum / time.Duration(len(d)))}
}

func (s Stats) String() string {
	if s.N == 0 {
		return "none"
	}
	return fmt.Sprintf("n=%-7d p50 %8.3f ms   p99 %8.3f ms   max %8.3f ms", s.N, s.P50, s.P99, s.Max)
}

// peerState is one played peer.
type peerState struct {
	client *trackerapi.Client
	rng    *mrand.Rand // its own: deltas draw new hashes from it
	// removable are held hashes of its own that deltas remove, in order;
	// probes are held hashes of its own that no delta removes (finds of
	// a hash one peer holds).
	removable, probes []string
	count             int64       // hashes it holds
	live              atomic.Bool // registered, full set sent
}

var kindName = map[byte]string{'d': "delta", 'h': "heartbeat", 'p': "find", 's': "find", 'm': "find"}

type load struct {
	o     options
	pool  []string
	peers []*peerState

	errs    atomic.Int64
	mu      sync.Mutex
	samples []string
}

func newLoad(o options) *load {
	l := &load{o: o, pool: make([]string, o.pool)}
	rng := mrand.New(mrand.NewPCG(o.seed, 0x706f6f6c))
	for i := range l.pool {
		l.pool[i] = randomHash(rng)
	}
	return l
}

func randomHash(rng *mrand.Rand) string {
	var b [20]byte
	for i := 0; i < 20; i += 8 {
		v := rng.Uint64()
		for j := i; j < min(i+8, 20); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
	return nixbase32.EncodeToString(b[:])
}

func (l *load) fail(what string, err error) {
	if l.errs.Add(1) <= 10 {
		l.mu.Lock()
		l.samples = append(l.samples, what+": "+err.Error())
		l.mu.Unlock()
	}
}

// fullSet draws peer i's full set.
func (l *load) fullSet(i int, p *peerState) []string {
	nShared := int(math.Round(l.o.shared * float64(l.o.hashes)))
	nShared = min(nShared, l.o.pool)
	set := make([]string, 0, l.o.hashes)
	seen := make(map[uint64]bool, nShared)
	z := mrand.NewZipf(p.rng, l.o.zipf, 1, uint64(l.o.pool-1))
	// Zipf draws repeat the head often; after many draws fill the rest
	// uniformly so a small pool cannot stall.
	for tries := 0; len(set) < nShared; tries++ {
		var k uint64
		if tries < 20*nShared {
			k = z.Uint64()
		} else {
			k = p.rng.Uint64N(uint64(l.o.pool))
		}
		if !seen[k] {
			seen[k] = true
			set = append(set, l.pool[k])
		}
	}
	own := l.o.hashes - len(set)
	nRemovable := min(own, l.o.deltas*(l.o.deltaSize/2))
	for j := range own {
		h := randomHash(p.rng)
		set = append(set, h)
		switch {
		case j < nRemovable:
			p.removable = append(p.removable, h)
		case len(p.probes) < 8:
			p.probes = append(p.probes, h)
		}
	}
	return set
}

func (l *load) run(ctx context.Context, out io.Writer) (*Results, error) {
	o := l.o
	res := &Results{Peers: o.peers, Hashes: o.hashes, Concurrency: o.concurrency, Announcers: o.announcers, Rate: o.rate}
	fmt.Fprintf(out, "peerix-loadgen: %d peers x %d hashes (%.0f%% from a pool of %d, Zipf %.2f) against %s; %d peers announcing at once, then %d requests in flight",
		o.peers, o.hashes, 100*o.shared, o.pool, o.zipf, o.tracker, o.announcers, o.concurrency)
	if o.rate > 0 {
		fmt.Fprintf(out, " at %.0f/s", o.rate)
	}
	fmt.Fprintln(out)

	info, err := trackerapi.NewClient(o.tracker, nil).Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	l.peers = make([]*peerState, o.peers)
	for i := range l.peers {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return nil, err
		}
		l.peers[i] = &peerState{client: trackerapi.NewClient(o.tracker, key), rng: mrand.New(mrand.NewPCG(o.seed, uint64(o.firstPeer+i)+1))}
	}
	addr := ma.StringCast("/ip4/127.0.0.1/udp/12306/quic-v1")

	// Phase 1: register and send full sets.
	var (
		mu                 sync.Mutex
		regLat, fullLat    []time.Duration
		announced          atomic.Int64
		heartbeatEvery     = max(info.TTL/3, time.Second)
		beatCtx, stopBeats = context.WithCancel(ctx)
	)
	defer stopBeats()
	reader := trackerapi.NewClient(o.tracker, nil)
	// Keep registered peers alive while the run lasts, whatever the TTL.
	go func() {
		tick := time.NewTicker(heartbeatEvery)
		defer tick.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-tick.C:
			}
			parallel(beatCtx, 4, o.peers, func(i int) {
				if !l.peers[i].live.Load() {
					return
				}
				if _, err := l.peers[i].client.Announce(beatCtx, []ma.Multiaddr{addr}); err != nil && beatCtx.Err() == nil {
					l.fail("background heartbeat", err)
				}
			})
		}
	}()
	start := time.Now()
	parallel(ctx, o.announcers, o.peers, func(i int) {
		p := l.peers[i]
		set := l.fullSet(i, p)
		t0 := time.Now()
		if _, err := p.client.Announce(ctx, []ma.Multiaddr{addr}); err != nil {
			l.fail("announce", err)
			return
		}
		t1 := time.Now()
		if err := p.client.Packages(ctx, true, set, nil); err != nil {
			l.fail("full set", err)
			return
		}
		t2 := time.Now()
		p.count = int64(len(set))
		p.live.Store(true)
		announced.Add(1)
		mu.Lock()
		regLat = append(regLat, t1.Sub(t0))
		fullLat = append(fullLat, t2.Sub(t1))
		mu.Unlock()
	})
	res.AnnounceS = time.Since(start).Seconds()
	res.Register, res.Full = stats(regLat), stats(fullLat)
	res.HashesPerS = math.Round(float64(announced.Load()) * float64(o.hashes) / res.AnnounceS)
	fmt.Fprintf(out, "full announcements: %d of %d peers in %.1f s (%.0f hashes/s)\n", announced.Load(), o.peers, res.AnnounceS, res.HashesPerS)
	fmt.Fprintf(out, "  register   %v\n  full set   %v\n", res.Register, res.Full)
	if announced.Load() < int64(o.peers) {
		res.Incomplete = ctx.Err() != nil
		return l.finish(ctx, res, out)
	}

	if o.settle > 0 {
		fmt.Fprintf(out, "settling for %v\n", o.settle)
		select {
		case <-ctx.Done():
		case <-time.After(o.settle):
		}
	}

	// Phase 2: deltas, heartbeats and finds, shuffled.
	type op struct {
		kind byte // 'd' delta, 'h' heartbeat, 'p' popular find, 's' single-holder find, 'm' miss
		peer int
		hash string
	}
	var ops []op
	for i := range o.peers {
		for range o.deltas {
			ops = append(ops, op{kind: 'd', peer: i})
		}
		ops = append(ops, op{kind: 'h', peer: i})
	}
	qrng := mrand.New(mrand.NewPCG(o.seed, 0x66696e64))
	z := mrand.NewZipf(qrng, o.zipf, 1, uint64(o.pool-1))
	for j := range o.finds {
		switch r := j % 10; {
		case r < 4:
			ops = append(ops, op{kind: 'p', hash: l.pool[z.Uint64()]})
		case r < 8:
			p := l.peers[qrng.IntN(o.peers)]
			if len(p.probes) == 0 {
				ops = append(ops, op{kind: 'p', hash: l.pool[z.Uint64()]})
				continue
			}
			ops = append(ops, op{kind: 's', hash: p.probes[qrng.IntN(len(p.probes))]})
		default:
			ops = append(ops, op{kind: 'm', hash: randomHash(qrng)})
		}
	}
	qrng.Shuffle(len(ops), func(a, b int) { ops[a], ops[b] = ops[b], ops[a] })
	lat := map[byte][]time.Duration{}
	var peerMu = make([]sync.Mutex, o.peers) // a peer's deltas go one at a time
	var done atomic.Int64
	start = time.Now()
	parallel(ctx, o.concurrency, len(ops), func(j int) {
		op := ops[j]
		began := time.Now()
		if o.rate > 0 {
			// Open loop: a request taken up late (every worker was
			// busy) counts from when it was due, so a slow tracker is
			// not hidden by requests not sent; one taken up early
			// waits and counts from when it is sent (the timer's own
			// lateness is not the tracker's).
			due := start.Add(time.Duration(float64(j) / o.rate * float64(time.Second)))
			if d := due.Sub(began); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
				began = time.Now()
			} else {
				began = due
			}
		}
		var err error
		switch op.kind {
		case 'd':
			p := l.peers[op.peer]
			peerMu[op.peer].Lock()
			half := o.deltaSize / 2
			n := min(half, len(p.removable))
			remove := p.removable[:n]
			add := make([]string, o.deltaSize-n)
			for k := range add {
				add[k] = randomHash(p.rng)
			}
			if err = p.client.Packages(ctx, false, add, remove); err == nil {
				p.removable = p.removable[n:]
				p.count += int64(len(add) - n)
			}
			peerMu[op.peer].Unlock()
		case 'h':
			_, err = l.peers[op.peer].client.Announce(ctx, []ma.Multiaddr{addr})
		default:
			var peers []trackerapi.PeerInfo
			peers, err = reader.Find(ctx, op.hash)
			if err == nil && (op.kind == 's' && len(peers) != 1 || op.kind == 'm' && len(peers) != 0) {
				err = fmt.Errorf("find %s (%c): %d holders", op.hash, op.kind, len(peers))
			}
		}
		took := time.Since(began)
		if err != nil {
			if ctx.Err() == nil {
				l.fail(kindName[op.kind], err)
			}
			return
		}
		done.Add(1)
		mu.Lock()
		lat[op.kind] = append(lat[op.kind], took)
		mu.Unlock()
	})
	stopBeats()
	res.QueryS = time.Since(start).Seconds()
	res.QueryPerS = math.Round(float64(done.Load()) / res.QueryS)
	res.Delta, res.Heartbeat = stats(lat['d']), stats(lat['h'])
	res.FindPopular, res.FindSingle, res.FindMiss = stats(lat['p']), stats(lat['s']), stats(lat['m'])
	res.Find = stats(slices.Concat(lat['p'], lat['s'], lat['m']))
	res.Incomplete = done.Load() < int64(len(ops))
	fmt.Fprintf(out, "queries: %d of %d in %.1f s (%.0f/s)\n", done.Load(), len(ops), res.QueryS, res.QueryPerS)
	fmt.Fprintf(out, "  delta      %v\n  heartbeat  %v\n  find       %v\n    popular  %v\n    single   %v\n    miss     %v\n",
		res.Delta, res.Heartbeat, res.Find, res.FindPopular, res.FindSingle, res.FindMiss)
	return l.finish(ctx, res, out)
}

// finish checks the tracker's counts, deregisters if asked, and reports
// errors.
func (l *load) finish(ctx context.Context, res *Results, out io.Writer) (*Results, error) {
	if ctx.Err() == nil {
		peers, err := trackerapi.NewClient(l.o.tracker, nil).Peers(ctx)
		if err != nil {
			l.fail("peers", err)
		} else {
			held := map[string]int64{}
			for _, p := range peers {
				held[p.PeerID] = p.Packages
				res.HeldHashes += p.Packages
			}
			for _, p := range l.peers {
				if p.count > 0 && held[p.client.ID().String()] != p.count {
					res.Mismatches++
				}
			}
			fmt.Fprintf(out, "tracker holds %d hashes for %d live peers; %d peers' counts differ from what they sent\n", res.HeldHashes, len(peers), res.Mismatches)
		}
	} else {
		res.Incomplete = true
		fmt.Fprintf(out, "stopped by -duration (or a signal) before the end\n")
	}
	if l.o.deregister {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		parallel(dctx, l.o.concurrency, len(l.peers), func(i int) {
			if l.peers[i].count > 0 {
				if err := l.peers[i].client.Deregister(dctx); err != nil {
					l.fail("deregister", err)
				}
			}
		})
	}
	res.Errors = l.errs.Load()
	res.ErrorSamples = l.samples
	fmt.Fprintf(out, "errors: %d\n", res.Errors)
	for _, s := range l.samples {
		fmt.Fprintf(out, "  %s\n", strings.TrimSpace(s))
	}
	return res, nil
}

// parallel runs f(0..n-1) on workers goroutines, stopping early when ctx
// ends.
func parallel(ctx context.Context, workers, n int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}
