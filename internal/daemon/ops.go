package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/peerix/peerix/internal/ops"
	"github.com/peerix/peerix/internal/p2p"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/trust"
)

// newOps makes the operator's side: metrics, /health, /api/*, /dashboard.
func (d *Daemon) newOps() *ops.Ops {
	upstream := ""
	if d.cfg.Filter == "upstream" || (d.verifier != nil && !d.cfg.NoVerify) {
		upstream = d.cfg.Upstream
	}
	checks := map[string]func(context.Context) error{
		"store":    d.local.Ping,
		"tracker":  nil,
		"upstream": nil,
	}
	if d.p2p != nil && d.p2p.Tracker != nil {
		checks["tracker"] = func(ctx context.Context) error {
			_, err := d.p2p.Tracker.Info(ctx)
			return err
		}
	}
	if upstream != "" {
		// Passive: what the filter's and verifier's own requests to the
		// upstream found, so /health never sends traffic of its own.
		checks["upstream"] = func(context.Context) error {
			healths := []trust.Health{d.filter.Health()}
			if d.verifier != nil {
				healths = append(healths, d.verifier.Health())
			}
			for _, h := range healths {
				if !h.Reachable {
					return fmt.Errorf("upstream %s unreachable after %d failures: %s", h.Upstream, h.ConsecutiveFailures, h.LastError)
				}
			}
			return nil
		}
	}
	return ops.New(ops.Options{
		Mode:              d.cfg.Mode,
		Version:           Version,
		Commit:            BuildCommit(),
		Listen:            d.ln.Addr().String(),
		StoreRoot:         d.cfg.StoreRoot,
		StateDir:          d.cfg.StateDir,
		Tracker:           d.cfg.Tracker,
		Upstream:          upstream,
		Filter:            d.cfg.Filter,
		PublicKey:         d.publicKey,
		TrustedPublicKeys: d.cfg.TrustedPublicKeys,
		Log:               d.log.With("part", "ops"),
		Checks:            checks,
		Store:             d.storeInfo,
		PeerID:            d.peerID,
		Peers:             d.peers,
		PathName: func(ctx context.Context, hash string) string {
			pi, err := d.local.PathInfo(ctx, hash)
			if err != nil {
				return ""
			}
			return pi.StorePath
		},
	})
}

// storeInfo describes the store for /api/status: its paths, what the
// inventory found shareable (once its first scan is done) and how far that
// scan got, and what the tracker was told.
func (d *Daemon) storeInfo(ctx context.Context) ops.StoreInfo {
	n := int64(0)
	err := d.local.StorePaths(ctx, func(string) error { n++; return nil })
	info := ops.StoreInfo{Paths: n, Shared: -1, Filter: d.cfg.Filter}
	if err != nil {
		info.Error = err.Error()
	}
	if inv := d.inventory; inv != nil {
		info.FilterChecked, info.FilterTotal = inv.Progress()
		select {
		case <-inv.Ready():
			info.Shared = int64(inv.Len())
		default:
		}
	}
	if d.p2p != nil && d.p2p.Announcer != nil {
		info.Announced = int64(d.p2p.Announcer.Stats().Announced)
	}
	return info
}

func (d *Daemon) peerID() string {
	if d.p2p == nil {
		return ""
	}
	return d.p2p.ID().String()
}

// peers lists the peers the daemon knows, LAN neighbours and P2P peers,
// for /api/peers and the dashboard.
func (d *Daemon) peers() []ops.PeerInfo {
	var out []ops.PeerInfo
	if d.lan != nil {
		var rep *swarm.Reputation
		if d.lanStore != nil {
			rep = d.lanStore.Reputation()
		}
		var known []string
		if rep != nil {
			known = rep.Known()
		}
		for _, nb := range d.lan.Neighbours() {
			p := ops.PeerInfo{
				ID: nb.Addr, Addrs: []string{nb.Addr}, Source: "lan", LastSeen: nb.LastSeen,
				// A neighbour stays in the table while it beacons (or, for
				// one speaking only the original format, while it is heard).
				Connected: time.Since(nb.LastSeen) < lanHeardWithin,
				Direct:    true,
			}
			// The lookup kit knows LAN peers by their HTTP side; a peer of
			// the original format by the port it answered with.
			id := "lan/" + nb.Addr
			if !nb.Summary {
				if i := slices.IndexFunc(known, func(k string) bool { return strings.HasPrefix(k, id+":") }); i >= 0 {
					id = known[i]
				}
			}
			if rep != nil {
				if r, ok := rep.Get(id); ok {
					p.Reputation = opsReputation(r)
				}
			}
			out = append(out, p)
		}
	}
	if d.p2p != nil {
		for _, p := range d.p2p.Peers() {
			out = append(out, ops.PeerInfo{
				ID: p.PeerID, Addrs: p.Addrs, Source: "p2p",
				Connected: p.Connected, Direct: p.Direct, Relayed: p.Relayed, LastSeen: p.LastFound,
				Reputation: opsReputation(p.Reputation),
			})
		}
	}
	return out
}

// lanHeardWithin: a LAN neighbour heard this recently counts as connected
// (beacons come every 10 s).
const lanHeardWithin = 30 * time.Second

// opsReputation shows a reputation as the operator reads it: answers that
// succeeded and failed, each counted once, and their plain ratio (the
// lookup kit's own ranking weighs kinds of failure and adds a prior).
func opsReputation(r swarm.PeerReputation) *ops.Reputation {
	rate := 0.0
	if n := r.Successes + r.Failed; n > 0 {
		rate = float64(r.Successes) / float64(n)
	}
	return &ops.Reputation{
		Successes: r.Successes, Failures: r.Failed, SuccessRate: rate,
		LatencyMs: r.LatencyMs, BackoffUntil: r.BackoffEnds, LastFailure: r.LastFailure,
		Lies: r.Lies,
	}
}

// downloads shows the NAR transfers of one peer source in ops (it is the
// source's swarm.Observer).
type downloads struct {
	d      *Daemon
	source string // lan or p2p
}

func (w downloads) NARTransfer(storePath string, size int64) swarm.Progress {
	return &download{t: w.d.ops.StartTransfer("", storePath, w.source, size), d: w.d, names: map[string]string{}}
}

// download names the holders as the operator knows them: a LAN peer by
// its address, a P2P peer by its ID, with how it is connected.
type download struct {
	t     *ops.Transfer
	d     *Daemon
	mu    sync.Mutex
	names map[string]string // by holder ID
}

func (p *download) Add(holder string, nar, wire int64) {
	p.t.Add(p.name(holder), nar, wire)
}

// name returns the holder's name, looking it up on first sight.
func (p *download) name(holder string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n, ok := p.names[holder]; ok {
		return n
	}
	name := holder
	if addr, ok := strings.CutPrefix(holder, "lan/"); ok {
		name = addr
	} else if p.d.p2p != nil {
		if id, err := peer.Decode(holder); err == nil {
			c := p2p.ConnectionTo(p.d.p2p.Host, id)
			p.t.SourceRelayed(name, c.Relayed && !c.Direct)
		}
	}
	p.names[holder] = name
	return name
}

func (p *download) Done(err error) { p.t.Done(err) }

// served shows what the P2P server does for peers in ops (it is the
// server's p2p.ServerObserver).
type served struct{ d *Daemon }

func (s served) Answered(kind, hash string, found bool, took time.Duration) {
	s.d.ops.PeerRequest(kind, hash, found, took)
}

func (s served) Upload(hash, peer string, size int64, relayed bool) swarm.Progress {
	return s.d.ops.StartUpload(hash, "p2p", peer, size, relayed)
}

var (
	_ swarm.Observer     = downloads{}
	_ p2p.ServerObserver = served{}
)
