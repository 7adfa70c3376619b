package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// Config is what the daemon gives the P2P layer.
type Config struct {
	StateDir   string // identity.key and announced.json live here
	Port       int    // --p2p-port; 0 = any free port
	TrackerURL string // --tracker; "" = no tracker (nothing is found, nothing announced)
	// Shared is the local store as peers may see it (filter and signer
	// applied): the peer protocols answer from it.
	Shared store.Store
	// Paths lists the local store for announcements (*nixstore.Local).
	Paths PathLister
	// Shareable says whether Shared would give a hash to peers; nil asks
	// Shared.NarInfo.
	Shareable func(ctx context.Context, hash string) bool
	// Lookup tunes how paths are found and fetched (internal/swarm); its
	// Accept is the verifier.
	Lookup swarm.Options
	// FDs bounds the file descriptors libp2p's connections may use, and
	// MaxTransfers the NARs sent to peers at once (each holds a file open):
	// the daemon's budget (internal/connlimit). 0: libp2p's default, and
	// no bound beyond libp2p's stream limits.
	FDs, MaxTransfers int
	// Served, if set, is told about the requests the peer protocols
	// answer and the NARs they send.
	Served ServerObserver
	Log    *slog.Logger
}

// Node is the whole P2P layer of a daemon: host, protocol server, the
// Store that finds paths on peers, and the Announcer.
type Node struct {
	Host      *Host
	Server    *Server // set while Run serves the peer protocols
	Store     *Store
	Announcer *Announcer // nil without a tracker
	Tracker   *trackerapi.Client
	Index     *summary.Follower // the tracker's hash index; nil without a tracker

	cfg       Config
	log       *slog.Logger
	closeHost sync.Once

	// Start's Run in the background, for Close.
	stop    context.CancelFunc
	stopped chan struct{}
}

// New loads (or creates) the identity, opens the host on cfg.Port (so a
// key file or a taken port fails here) and makes the parts; none of
// peerix's own goroutines run until Run. Close releases the host of a Node
// that never ran.
func New(cfg Config) (*Node, error) {
	if cfg.Shared == nil {
		return nil, errors.New("p2p: no shared store")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	key, err := LoadOrCreateIdentity(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	h, err := NewHost(context.Background(), key, cfg.Port, nil, cfg.FDs, log)
	if err != nil {
		return nil, fmt.Errorf("--p2p-port %d: %w", cfg.Port, err)
	}
	h.SetAddrPolicy(NewAddrPolicy(cfg.TrackerURL))
	n := &Node{Host: h, cfg: cfg, log: log}

	var finder Finder = noTracker{}
	if cfg.TrackerURL != "" {
		n.Tracker = trackerapi.NewClient(cfg.TrackerURL, key)
		finder = TrackerClient{n.Tracker}
		n.Index = summary.NewFollower(TrackerClient{n.Tracker}, summary.FollowerOptions{Log: log.With("index", "tracker")})
		if cfg.Paths != nil {
			shareable := cfg.Shareable
			if shareable == nil {
				shareable = func(ctx context.Context, hash string) bool {
					_, err := cfg.Shared.NarInfo(ctx, hash)
					return err == nil
				}
			}
			n.Announcer = NewAnnouncer(AnnouncerConfig{
				Registry:  TrackerClient{n.Tracker},
				Paths:     cfg.Paths,
				Shareable: shareable,
				Addrs:     h.AnnounceAddrs,
				StateDir:  cfg.StateDir,
				Tracker:   cfg.TrackerURL,
				PeerID:    h.ID(),
				Log:       log,
			})
		}
	} else {
		log.Info("no --tracker: peers beyond the LAN are neither found nor told about this one")
	}
	n.Store = NewStore(h, finder, cfg.Lookup, log)
	if n.Index != nil {
		n.Store.UseIndex(n.Index)
	}
	return n, nil
}

// Run serves the peer protocols from cfg.Shared and, with a tracker,
// follows its relay and its hash index and runs the Announcer, until ctx
// ends; a tracker that is unreachable is retried meanwhile. Then it
// deregisters from the tracker (at most a few seconds), stops serving
// peers, closes the host, and returns once all of it has stopped: nil, or
// the first part's error.
func (n *Node) Run(ctx context.Context) error {
	n.Server = serve(n.Host, n.cfg.Shared, n.cfg.MaxTransfers, n.cfg.Served, n.log)
	n.log.Info("p2p host started", "peer_id", n.Host.ID(), "addrs", n.Host.Addrs())
	g, gctx := errgroup.WithContext(ctx)
	// Serving peers lasts until ctx ends, with or without a tracker.
	g.Go(func() error { <-gctx.Done(); return nil })
	if n.Tracker != nil {
		g.Go(func() error {
			n.Host.FollowTracker(gctx, n.Tracker)
			return nil
		})
		g.Go(func() error { return n.Index.Run(gctx) })
	}
	if n.Announcer != nil {
		// It deregisters on its way out.
		g.Go(func() error { return n.Announcer.Run(gctx) })
	}
	err := g.Wait()
	n.Server.Close()
	if cerr := n.close(); err == nil {
		err = cerr
	}
	return err
}

// Start is New, then Run in the background until ctx ends or Close.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	n.stop, n.stopped = stop, make(chan struct{})
	go func() {
		defer close(n.stopped)
		if err := n.Run(runCtx); err != nil {
			n.log.Warn("p2p stopped", "err", err)
		}
	}()
	return n, nil
}

// ID is this peer's ID.
func (n *Node) ID() peer.ID { return n.Host.ID() }

// Rescan makes the Announcer rescan the store now (SIGHUP).
func (n *Node) Rescan() {
	if n.Announcer != nil {
		n.Announcer.Rescan()
	}
}

// Peers lists the known peers for /api/peers.
func (n *Node) Peers() []PeerStatus { return n.Store.Peers() }

// Close stops what Start runs (deregistering from the tracker, at most a
// few seconds) and waits for it; for a Node that never ran, it closes the
// host.
func (n *Node) Close() error {
	if n.stop != nil {
		n.stop()
		<-n.stopped
	}
	return n.close()
}

// close closes the host, once.
func (n *Node) close() error {
	var err error
	n.closeHost.Do(func() { err = n.Host.Close() })
	return err
}

type noTracker struct{}

func (noTracker) Find(context.Context, string) ([]peer.AddrInfo, error) { return nil, nil }
