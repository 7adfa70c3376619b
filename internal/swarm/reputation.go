package swarm

import (
	"slices"
	"sync"
	"time"
)

// Failure kinds weigh differently: a peer that cannot be reached may be
// fine tomorrow, one that sends garbage or lies is broken or hostile.
type Failure int

const (
	// FailUnreachable: no connection, no stream, a reset or a timeout.
	FailUnreachable Failure = iota
	// FailRemote: the peer answered with an error status.
	FailRemote
	// FailSlow: a NAR stream stalled or crawled below MinRate.
	FailSlow
	// FailProtocol: the peer broke the wire format.
	FailProtocol
	// FailLie: the peer's narinfo contradicts what is trusted (or names
	// another path), or its NAR does not match its NarHash.
	FailLie
)

// weight is how many plain failures a failure of a kind counts for.
func (f Failure) weight() int {
	switch f {
	case FailSlow:
		return 2
	case FailProtocol:
		return 3
	case FailLie:
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
	case FailSlow:
		return "stalled or too slow"
	case FailProtocol:
		return "protocol violation"
	case FailLie:
		return "lied"
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
	// A peer is proven (its bytes of large NARs may reach Nix before the
	// whole NAR is verified) after this many verified NARs and bytes,
	// with no lie ever.
	provenNARs  = 4
	provenBytes = 16 << 20
)

// Reputation keeps, per peer (by the ID its source gives it), the success
// rate, an EWMA of the latency to the first answer byte, an exponential
// backoff after failures, and the record of NARs it delivered. It is safe
// for concurrent use.
type Reputation struct {
	mu    sync.Mutex
	peers map[string]*peerRep
}

type peerRep struct {
	successes, failures int // failures weighted by kind
	failed              int // failures, each counted once
	consecutive         int // weighted failures since the last success
	latency             time.Duration
	backoffUntil        time.Time
	lastFailure         Failure
	lastUsed            time.Time
	lies                int
	narsVerified        int
	narFailures         int // transfers that broke, stalled, crawled or lied
	bytesVerified       int64
}

// NewReputation returns an empty table.
func NewReputation() *Reputation {
	return &Reputation{peers: make(map[string]*peerRep)}
}

func (r *Reputation) get(p string) *peerRep {
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

// evict forgets the least recently used eighth of the table (liars last:
// forgetting one would give it a clean record).
func (r *Reputation) evict() {
	type aged struct {
		id   string
		liar bool
		t    time.Time
	}
	all := make([]aged, 0, len(r.peers))
	for id, pr := range r.peers {
		all = append(all, aged{id, pr.lies > 0, pr.lastUsed})
	}
	slices.SortFunc(all, func(a, b aged) int {
		if a.liar != b.liar {
			if a.liar {
				return 1
			}
			return -1
		}
		return a.t.Compare(b.t)
	})
	for _, a := range all[:len(all)/8+1] {
		delete(r.peers, a.id)
	}
}

// Success records an answer from p that arrived latency after the request.
func (r *Reputation) Success(p string, latency time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(p)
	pr.successes++
	// A quick narinfo answer does not excuse a stalled transfer or a lie:
	// only plain failures (unreachable, an error answer) are forgiven by
	// the next success; the others wait out their backoff.
	if pr.consecutive > 0 && (pr.lastFailure == FailUnreachable || pr.lastFailure == FailRemote) {
		pr.consecutive = 0
		pr.backoffUntil = time.Time{}
	}
	if latency > 0 {
		if pr.latency == 0 {
			pr.latency = latency
		} else {
			pr.latency = time.Duration(latencyAlpha*float64(latency) + (1-latencyAlpha)*float64(pr.latency))
		}
	}
}

// Delivered records a NAR of size bytes from p (alone or with others) that
// matched its NarHash.
func (r *Reputation) Delivered(p string, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(p)
	pr.narsVerified++
	pr.bytesVerified += bytes
}

// Fail records a failure of p and backs it off: BackoffBase after one plain
// failure, doubling with each further one (slow streams, protocol garbage
// and lies count as several: a first lie 16 s, a second 5 minutes), at most
// BackoffMax. A lie is not forgiven by later good answers, only by time:
// an honest peer with one odd build is back soon, a liar asked rarely.
func (r *Reputation) Fail(p string, kind Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.get(p)
	w := kind.weight()
	pr.failures += w
	pr.failed++
	pr.consecutive += w
	pr.lastFailure = kind
	if kind == FailSlow || kind == FailLie {
		pr.narFailures++
	}
	if kind == FailLie {
		pr.lies++
	}
	pr.backoffUntil = later(pr.backoffUntil, time.Now().Add(backoff(pr.consecutive)))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
func (r *Reputation) Available(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	return pr == nil || !time.Now().Before(pr.backoffUntil)
}

// Healthy reports whether p is not backed off and its last outcome was
// not a failure: a holder worth adding to a transfer that has one already.
func (r *Reputation) Healthy(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	return pr == nil || (pr.consecutive == 0 && !time.Now().Before(pr.backoffUntil))
}

// lied reports whether p is shunned for a lie.
func (r *Reputation) lied(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	return pr != nil && pr.lies > 0 && time.Now().Before(pr.backoffUntil)
}

// Proven reports whether p has delivered enough verified NARs, and never
// lied, for its bytes of a large NAR to reach Nix before the whole NAR is
// verified.
func (r *Reputation) Proven(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	return pr != nil && pr.lies == 0 && pr.narsVerified >= provenNARs && pr.bytesVerified >= provenBytes
}

// score: the success rate of answers times that of NAR transfers (each
// with one success and one failure assumed, so a new peer starts at 0.25
// and one bad answer does not sink a good peer), divided by the latency in
// units of defaultLatency plus one. A holder that answers narinfos at once
// but stalls its NARs thus ranks below one that delivers.
func (pr *peerRep) score() float64 {
	rate := float64(pr.successes+1) / float64(pr.successes+pr.failures+2)
	rate *= float64(pr.narsVerified+1) / float64(pr.narsVerified+pr.narFailures+2)
	lat := pr.latency
	if lat == 0 {
		lat = defaultLatency
	}
	return rate / (1 + float64(lat)/float64(defaultLatency))
}

// Rank orders peers best first: those not backed off by score, then the
// backed-off ones by when their backoff ends. Equal peers keep their
// order. The input is not modified.
func (r *Reputation) Rank(ids []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	type ranked struct {
		id    string
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
	out := make([]string, len(rs))
	for i, x := range rs {
		out[i] = x.id
	}
	return out
}

// PeerReputation is what the table knows about a peer, for /api/peers.
type PeerReputation struct {
	Successes int `json:"successes"`
	// Failures are weighted by kind, as Rank weighs them (a lie counts 5);
	// Failed counts each failure once.
	Failures    int       `json:"failures"`
	Failed      int       `json:"failed"`
	SuccessRate float64   `json:"success_rate"` // with the prior of Rank
	LatencyMs   float64   `json:"latency_ms"`   // EWMA; 0 when never measured
	BackoffEnds time.Time `json:"backoff_until,omitzero"`
	LastFailure string    `json:"last_failure,omitempty"`
	Lies        int       `json:"lies"`
	NARs        int       `json:"nars_verified"`
	Bytes       int64     `json:"bytes_verified"`
}

// Get returns p's reputation and whether the table knows p.
func (r *Reputation) Get(p string) (PeerReputation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pr := r.peers[p]
	if pr == nil {
		return PeerReputation{SuccessRate: 0.5}, false
	}
	out := PeerReputation{
		Successes:   pr.successes,
		Failures:    pr.failures,
		Failed:      pr.failed,
		SuccessRate: float64(pr.successes+1) / float64(pr.successes+pr.failures+2),
		LatencyMs:   float64(pr.latency) / float64(time.Millisecond),
		Lies:        pr.lies,
		NARs:        pr.narsVerified,
		Bytes:       pr.bytesVerified,
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
func (r *Reputation) Known() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.peers))
	for id := range r.peers {
		out = append(out, id)
	}
	return out
}
