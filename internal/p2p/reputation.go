package p2p

import (
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Failure kinds weigh differently: a peer that cannot be reached may be
// fine tomorrow, one that sends garbage or a NAR that does not match its
// hash is broken or lying.
type Failure int

const (
	// FailUnreachable: no connection, no stream, a reset or a timeout.
	FailUnreachable Failure = iota
	// FailRemote: the peer answered with an error status.
	FailRemote
	// FailProtocol: the peer broke the wire format.
	FailProtocol
	// FailHashMismatch: the peer sent a NAR that does not match its NarHash,
	// or a narinfo for another path.
	FailHashMismatch
)

// weight is how many plain failures a failure of a kind counts for.
func (f Failure) weight() int {
	switch f {
	case FailProtocol:
		return 3
	case FailHashMismatch:
		return 5
	}
	return 1
}

func (f Failure) String() string {
	switch f {
	case FailUnreachable:
		return "unreachable"
	case FailRemote:
		return "remote error"
	case FailProtocol:
		return "protocol violation"
	case FailHashMismatch:
		return "hash mismatch"
	}
	return "unknown"
}

// Reputation parameters.
const (
	// BackoffBase is the backoff after the first failure; it doubles with
	// each consecutive one up to BackoffMax.
	BackoffBase = time.Second
	BackoffMax  = 5 * time.Minute
	// latencyAlpha is the weight of a new latency sample in the EWMA.
	latencyAlpha = 0.3
	// defaultLatency stands for peers never measured, so they get a fair
	// chance against measured ones.
	defaultLatency = 200 * time.Millisecond
	// maxReputationPeers bounds the table; the least recently used are
	// forgotten first.
	maxReputationPeers = 4096
)

// Reputation keeps, per peer, the success rate, an EWMA of the latency to
// the first answer byte, and an exponential backoff after failures. It is
// safe for concurrent use.
type Reputation struct {
	mu    sync.Mutex
	peers map[peer.ID]*peerRep
}

type peerRep struct {
	successes, failures int
	consecutive         int // weighted failures since the last success
	latency             time.Duration
	backoffUntil        time.Time
	lastFailure         Failure
	lastUsed            time.Time
}

// NewReputation returns an empty table.
func NewReputation() *Reputation {
	return &Reputation{peers: make(map[peer.ID]*peerRep)}
}

func (r *Reputation) get(p peer.ID) *peerRep {
	pr := r.peers[p]
	if pr == nil {
		if len(r.peers) >= maxReputationPeers {
			r.evict()
		}
		pr = &peerRep{}
		r.peers[p] = pr
	}
	pr.lastUsed = time.Now()
	return pr
}

// evict forgets the least recently used eighth of the table.
func (r *Reputation) evict() {
	type aged struct {
		id peer.ID
		t  time.Time
	}
	all := make([]aged, 0, len(r.peers))
	for id, pr := range r.peers {
		all = append(all, aged{id, pr.lastUsed})
	}
	slices.SortFunc(all, func(a, b aged) int { return a.t.Compare(b.t) })
	for _, a := range all[:len(all)/8+1] {
		delete(r.peers, a.id)
	}
}

// Success records an answer from p that arrived latency after the request.
func (r *Reputation) Success(p peer.ID, latency time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(p)
	pr.successes++
	pr.consecutive = 0
	pr.backoffUntil = time.Time{}
	if latency > 0 {
		if pr.latency == 0 {
			pr.latency = latency
		} else {
			pr.latency = time.Duration(latencyAlpha*float64(latency) + (1-latencyAlpha)*float64(pr.latency))
		}
	}
}

// Fail records a failure of p and backs it off: BackoffBase after one plain
// failure, doubling with each further one (protocol garbage and hash
// mismatches count as several), at most BackoffMax.
func (r *Reputation) Fail(p peer.ID, kind Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(p)
	w := kind.weight()
	pr.failures += w
	pr.consecutive += w
	pr.lastFailure = kind
	pr.backoffUntil = time.Now().Add(backoff(pr.consecutive))
}

// backoff after n consecutive (weighted) failures.
func backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := BackoffBase
	for i := 1; i < n; i++ {
		d *= 2
		if d >= BackoffMax {
			return BackoffMax
		}
	}
	return d
}

// Available reports whether p is not backed off.
func (r *Reputation) Available(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	return pr == nil || !time.Now().Before(pr.backoffUntil)
}

// score: the success rate (with one success and one failure assumed, so a
// new peer starts at 0.5 and one bad answer does not sink a good peer)
// divided by the latency in units of defaultLatency plus one.
func (pr *peerRep) score() float64 {
	rate := float64(pr.successes+1) / float64(pr.successes+pr.failures+2)
	lat := pr.latency
	if lat == 0 {
		lat = defaultLatency
	}
	return rate / (1 + float64(lat)/float64(defaultLatency))
}

// Rank orders peers best first: those not backed off by score, then the
// backed-off ones by when their backoff ends. Equal peers keep their
// order. The input is not modified.
func (r *Reputation) Rank(ids []peer.ID) []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	type ranked struct {
		id    peer.ID
		off   bool
		until time.Time
		score float64
	}
	rs := make([]ranked, len(ids))
	for i, id := range ids {
		pr := r.peers[id]
		if pr == nil {
			pr = &peerRep{}
		}
		rs[i] = ranked{id: id, off: now.Before(pr.backoffUntil), until: pr.backoffUntil, score: pr.score()}
	}
	slices.SortStableFunc(rs, func(a, b ranked) int {
		switch {
		case a.off != b.off:
			if a.off {
				return 1
			}
			return -1
		case a.off:
			return a.until.Compare(b.until)
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		return 0
	})
	out := make([]peer.ID, len(rs))
	for i, x := range rs {
		out[i] = x.id
	}
	return out
}

// PeerReputation is what the table knows about a peer, for /api/peers.
type PeerReputation struct {
	Successes   int       `json:"successes"`
	Failures    int       `json:"failures"`
	SuccessRate float64   `json:"success_rate"` // with the prior of Rank
	LatencyMs   float64   `json:"latency_ms"`   // EWMA; 0 when never measured
	BackoffEnds time.Time `json:"backoff_until,omitzero"`
	LastFailure string    `json:"last_failure,omitempty"`
}

// Get returns p's reputation and whether the table knows p.
func (r *Reputation) Get(p peer.ID) (PeerReputation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	if pr == nil {
		return PeerReputation{SuccessRate: 0.5}, false
	}
	out := PeerReputation{
		Successes:   pr.successes,
		Failures:    pr.failures,
		SuccessRate: float64(pr.successes+1) / float64(pr.successes+pr.failures+2),
		LatencyMs:   float64(pr.latency) / float64(time.Millisecond),
	}
	if time.Now().Before(pr.backoffUntil) {
		out.BackoffEnds = pr.backoffUntil
	}
	if pr.failures > 0 {
		out.LastFailure = pr.lastFailure.String()
	}
	return out, true
}

// Known returns the peers the table knows.
func (r *Reputation) Known() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]peer.ID, 0, len(r.peers))
	for id := range r.peers {
		out = append(out, id)
	}
	return out
}
