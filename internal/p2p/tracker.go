package p2p

import (
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// TrackerClient adapts a *trackerapi.Client to the Finder the Store needs and
// the Registry the Announcer needs.
type TrackerClient struct {
	C *trackerapi.Client
}

// Find returns the live holders of hash with their parsed addresses;
// peers whose ID does not parse are skipped.
func (t TrackerClient) Find(ctx context.Context, hash string) ([]peer.AddrInfo, error) {
	ps, err := t.C.Find(ctx, hash)
	if err != nil {
		return nil, err
	}
	out := make([]peer.AddrInfo, 0, len(ps))
	for _, p := range ps {
		ai, err := AddrInfo(p.PeerID, p.Addrs)
		if err != nil {
			continue
		}
		out = append(out, ai)
	}
	return out, nil
}

// Announce is the heartbeat.
func (t TrackerClient) Announce(ctx context.Context, addrs []ma.Multiaddr) (Announced, error) {
	r, err := t.C.Announce(ctx, addrs)
	if err != nil {
		return Announced{}, err
	}
	return Announced{TTL: r.TTL, ObservedAddr: r.ObservedAddr, New: r.Registered}, nil
}

// Packages sends a full set or a delta.
func (t TrackerClient) Packages(ctx context.Context, full bool, add, remove []string) error {
	return t.C.Packages(ctx, full, add, remove)
}

// Deregister removes the peer from the tracker.
func (t TrackerClient) Deregister(ctx context.Context) error {
	return t.C.Deregister(ctx)
}

var (
	_ Finder   = TrackerClient{}
	_ Registry = TrackerClient{}
)

// FollowTracker asks the tracker (GET /v1/info) for its relay and the
// address it sees us at, and hands them to UseRelay, so that a host behind
// NAT reserves a relay slot at once instead of waiting for AutoNAT. It
// retries while the tracker is unreachable (1 s doubling to 1 min), asks
// again every 5 minutes in case the relay or our address changed, and
// returns when ctx ends. Run it in a goroutine.
func (h *Host) FollowTracker(ctx context.Context, c *trackerapi.Client) {
	retry := time.Second
	var lastRelay, lastObserved string
	for {
		wait := 5 * time.Minute
		err := func() error {
			ictx, cancel := context.WithTimeout(ctx, trackerapi.RequestTimeout)
			defer cancel()
			info, err := c.Info(ictx)
			if err != nil {
				return err
			}
			if info.Relay.PeerID == "" {
				return nil // the tracker runs no relay
			}
			relay, err := info.Relay.AddrInfo()
			if err != nil {
				return err
			}
			if len(relay.Addrs) == 0 {
				return errors.New("tracker's relay has no usable address")
			}
			key := relay.String()
			obs, _ := parseObserved(info.ObservedAddr)
			if key == lastRelay && obs.String() == lastObserved {
				return nil
			}
			if err := h.UseRelay(ictx, relay, info.ObservedAddr); err != nil {
				// UseRelay keeps trying in the background.
				h.log.Warn("tracker's relay not usable yet", "relay", relay.ID, "err", err)
			}
			lastRelay, lastObserved = key, obs.String()
			h.log.Info("using the tracker's relay", "relay", relay.ID, "observed", info.ObservedAddr, "behind_nat", h.BehindNAT())
			return nil
		}()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn("tracker info unavailable", "err", err, "retry", retry)
			wait, retry = retry, min(retry*2, time.Minute)
		} else {
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
