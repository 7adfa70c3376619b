package lan

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/peerix/peerix/internal/summary"
)

// Timing of what is known about neighbours; variables for tests.
var (
	// beaconEvery: how often a daemon broadcasts its beacon.
	beaconEvery = 10 * time.Second
	// neighbourTTL: a summary peer not heard from for this long, whose
	// summary is not current either, is forgotten.
	neighbourTTL = 35 * time.Second
	// originalTTL: after the last datagram from a peer that speaks only
	// the original format, lookups stop waiting for broadcast answers.
	originalTTL = 10 * time.Minute
)

// neighbours is what a daemon knows about the peerix peers on its LANs:
// the summary peers (they sent a beacon), each with a follower of its
// summary, and when a peer speaking only the original format was last
// heard.
type neighbours struct {
	client *http.Client
	log    func(msg string, args ...any)

	mu       sync.Mutex
	ctx      context.Context // followers run under it; nil until start
	summary  map[netip.Addr]*neighbour
	original map[netip.Addr]time.Time
	wg       sync.WaitGroup
}

// neighbour is one summary peer.
type neighbour struct {
	addr       netip.AddrPort // its HTTP side
	follower   *summary.Follower
	stop       context.CancelFunc
	lastBeacon time.Time
}

func newNeighbours(client *http.Client, log func(string, ...any)) *neighbours {
	return &neighbours{client: client, log: log, summary: map[netip.Addr]*neighbour{}, original: map[netip.Addr]time.Time{}}
}

// start lets followers run under ctx; before it, beacons are ignored.
func (n *neighbours) start(ctx context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ctx = ctx
}

// wait waits for the followers, once ctx has ended.
func (n *neighbours) wait() { n.wg.Wait() }

// beacon takes a summary peer's beacon: a new peer gets a follower of its
// summary; a peer that says goodbye is forgotten at once.
func (n *neighbours) beacon(ip netip.Addr, b Beacon) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.original, ip) // it speaks summaries after all
	nb := n.summary[ip]
	addr := netip.AddrPortFrom(ip, b.HTTPPort)
	if nb != nil && (b.Bye || nb.addr != addr) {
		nb.stop()
		delete(n.summary, ip)
		nb = nil
	}
	if b.Bye || n.ctx == nil || n.ctx.Err() != nil {
		return
	}
	if nb == nil {
		ctx, cancel := context.WithCancel(n.ctx)
		nb = &neighbour{addr: addr, stop: cancel}
		nb.follower = summary.NewFollower(summary.HTTPSource{
			URL:    "http://" + addr.String() + "/local/summary",
			Client: n.client,
		}, summary.FollowerOptions{RetryMax: 10 * time.Second})
		n.summary[ip] = nb
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			nb.follower.Run(ctx)
		}()
		n.log("LAN peer speaks summaries", "peer", addr.String())
	}
	nb.lastBeacon = time.Now()
}

// heardOriginal notes a datagram of the original format from ip, unless ip
// is a summary peer.
func (n *neighbours) heardOriginal(ip netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.summary[ip] != nil {
		return
	}
	if _, known := n.original[ip]; !known {
		n.log("LAN peer speaks only the original format; lookups wait for broadcast answers while it is around", "peer", ip.String())
	}
	n.original[ip] = time.Now()
}

// originalAround reports whether a peer speaking only the original format
// was heard within originalTTL.
func (n *neighbours) originalAround() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	around := false
	for ip, at := range n.original {
		if now.Sub(at) > originalTTL {
			delete(n.original, ip)
		} else {
			around = true
		}
	}
	return around
}

// candidates returns the HTTP sides of the summary peers that may hold
// hash: those whose current summary has it, and those whose summary is not
// current (they are asked, not presumed absent).
func (n *neighbours) candidates(hash string) []netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []netip.AddrPort
	for _, nb := range n.summary {
		if !nb.follower.Absent(hash) {
			out = append(out, nb.addr)
		}
	}
	return out
}

// expire forgets summary peers silent for neighbourTTL whose summary is
// not current.
func (n *neighbours) expire() {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	for ip, nb := range n.summary {
		if now.Sub(nb.lastBeacon) > neighbourTTL && !nb.follower.Current() {
			nb.stop()
			delete(n.summary, ip)
			n.log("LAN peer gone", "peer", nb.addr.String())
		}
	}
}

// NeighbourStatus describes a LAN peer for /api/peers.
type NeighbourStatus struct {
	Addr     string                `json:"addr"`
	Summary  bool                  `json:"summary"` // speaks summaries; false: the original format only
	LastSeen time.Time             `json:"last_seen"`
	Follower summary.FollowerStats `json:"summary_state,omitzero"`
}

// list returns what is known about every neighbour.
func (n *neighbours) list() []NeighbourStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []NeighbourStatus
	for _, nb := range n.summary {
		out = append(out, NeighbourStatus{Addr: nb.addr.String(), Summary: true, LastSeen: nb.lastBeacon,
			Follower: nb.follower.Stats()})
	}
	for ip, at := range n.original {
		out = append(out, NeighbourStatus{Addr: ip.String(), LastSeen: at})
	}
	return out
}

// holderID names a LAN peer in reputation and logs.
func holderID(addr netip.AddrPort) string { return "lan/" + addr.String() }
