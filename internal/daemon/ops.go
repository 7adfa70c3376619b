package daemon

import (
	"context"
	"fmt"

	"github.com/peerix/peerix/internal/ops"
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
		Listen:            d.ln.Addr().String(),
		StoreRoot:         d.cfg.StoreRoot,
		StateDir:          d.cfg.StateDir,
		Tracker:           d.cfg.Tracker,
		Upstream:          upstream,
		Filter:            d.cfg.Filter,
		TrustedPublicKeys: d.cfg.TrustedPublicKeys,
		Log:               d.log.With("part", "ops"),
		Checks:            checks,
		Store: func(ctx context.Context) ops.StoreInfo {
			n := int64(0)
			err := d.local.StorePaths(ctx, func(string) error { n++; return nil })
			info := ops.StoreInfo{Paths: n, Shared: -1, Filter: d.cfg.Filter}
			if err != nil {
				info.Error = err.Error()
			}
			return info
		},
		PeerID: d.peerID,
		Peers:  d.peers,
		PathName: func(ctx context.Context, hash string) string {
			pi, err := d.local.PathInfo(ctx, hash)
			if err != nil {
				return ""
			}
			return pi.StorePath
		},
	})
}

func (d *Daemon) peerID() string {
	if d.p2p == nil {
		return ""
	}
	return d.p2p.ID().String()
}

// peers lists the P2P peers the daemon knows, for /api/peers and the
// dashboard.
func (d *Daemon) peers() []ops.PeerInfo {
	if d.p2p == nil {
		return nil
	}
	var out []ops.PeerInfo
	for _, p := range d.p2p.Peers() {
		r := p.Reputation
		out = append(out, ops.PeerInfo{
			ID: p.PeerID, Addrs: p.Addrs, Source: "p2p",
			Connected: p.Connected, Direct: p.Direct, Relayed: p.Relayed, LastSeen: p.LastFound,
			Reputation: &ops.Reputation{
				Successes: r.Successes, Failures: r.Failures, SuccessRate: r.SuccessRate,
				LatencyMs: r.LatencyMs, BackoffUntil: r.BackoffEnds, LastFailure: r.LastFailure,
				Lies: r.Lies,
			},
		})
	}
	return out
}
