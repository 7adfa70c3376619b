package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/tracker"
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
	Server    *Server
	Store     *Store
	Announcer *Announcer // nil without a tracker
	Tracker   *tracker.Client
	Index     *summary.Follower // the tracker's hash index; nil without a tracker

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start loads (or creates) the identity, starts the host on cfg.Port, serves
// the peer protocols from cfg.Shared, and, with a tracker, follows its relay
// and runs the Announcer. Startup errors (key file, port) are returned; a
// tracker that is unreachable is retried in the background. Close stops it
// all and deregisters from the tracker.
func Start(ctx context.Context, cfg Config) (*Node, error) {
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
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h, err := NewHost(runCtx, key, cfg.Port, nil, cfg.FDs, log)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("--p2p-port %d: %w", cfg.Port, err)
	}
	h.SetAddrPolicy(NewAddrPolicy(cfg.TrackerURL))
	n := &Node{Host: h, cancel: cancel}
	n.Server = serve(h, cfg.Shared, cfg.MaxTransfers, cfg.Served, log)

	var finder Finder = noTracker{}
	if cfg.TrackerURL != "" {
		n.Tracker = tracker.NewClient(cfg.TrackerURL, key)
		finder = TrackerClient{n.Tracker}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			h.FollowTracker(runCtx, n.Tracker)
		}()
		n.Index = summary.NewFollower(TrackerClient{n.Tracker}, summary.FollowerOptions{Log: log.With("index", "tracker")})
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.Index.Run(runCtx)
		}()
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
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.Announcer.Run(runCtx)
			}()
		}
	} else {
		log.Info("no --tracker: peers beyond the LAN are neither found nor told about this one")
	}
	n.Store = NewStore(h, finder, cfg.Lookup, log)
	if n.Index != nil {
		n.Store.UseIndex(n.Index)
	}
	log.Info("p2p host started", "peer_id", h.ID(), "addrs", h.Addrs())
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

// Close deregisters from the tracker (at most a few seconds), stops
// serving peers and closes the host.
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		n.cancel() // the Announcer deregisters on its way out
		n.wg.Wait()
		n.Server.Close()
		err = n.Host.Close()
	})
	return err
}

type noTracker struct{}

func (noTracker) Find(context.Context, string) ([]peer.AddrInfo, error) { return nil, nil }
