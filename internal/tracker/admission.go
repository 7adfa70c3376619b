package tracker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// Admission is the relay's access control (relayv2.ACLFilter): only peers
// registered and live with the tracker may reserve a slot, and a circuit
// joins two such peers. A relay open to anyone carried 64 MiB of an
// arbitrary protocol between two hosts that never spoke to the tracker.
//
// A daemon starting up announces itself and reserves its slot at about the
// same moment, so a reservation from a peer not (yet) live waits up to
// AdmissionWait for its registration (Registered, told by the Server, or
// seen in the database: trackers may share one) before it is refused. At
// most admissionWaiters such waits run at once; beyond, the peer is
// checked once and refused if not live (it retries, as libp2p's relay
// clients do). A peer found live is remembered for admissionCache.
type Admission struct {
	live func(ctx context.Context, id peer.ID) (bool, error)
	wait time.Duration
	log  *slog.Logger
	sem  chan struct{}

	mu      sync.Mutex
	known   map[peer.ID]time.Time // live as of
	waiters map[peer.ID][]chan struct{}
}

// AdmissionWait bounds how long a reservation or circuit waits for its
// peer's registration.
var AdmissionWait = 5 * time.Second

const (
	admissionWaiters = 256
	admissionCache   = 10 * time.Second
	admissionPoll    = 250 * time.Millisecond
	admissionTimeout = 2 * time.Second // one database check
)

var _ relayv2.ACLFilter = (*Admission)(nil)

// NewAdmission admits the peers live says are live.
func NewAdmission(live func(ctx context.Context, id peer.ID) (bool, error), log *slog.Logger) *Admission {
	if log == nil {
		log = slog.Default()
	}
	return &Admission{live: live, wait: AdmissionWait, log: log,
		sem: make(chan struct{}, admissionWaiters), known: map[peer.ID]time.Time{}, waiters: map[peer.ID][]chan struct{}{}}
}

// Registered tells the admission that id just registered: a reservation
// waiting for it goes ahead.
func (a *Admission) Registered(id peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.remember(id)
	for _, c := range a.waiters[id] {
		close(c)
	}
	delete(a.waiters, id)
}

// AllowReserve admits a reservation by a live peer.
func (a *Admission) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	ok := a.admit(p)
	if !ok {
		a.log.Info("relay reservation refused: peer not registered with the tracker", "peer", p)
	}
	return ok
}

// AllowConnect admits a circuit between two live peers.
func (a *Admission) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	ok := a.admit(src) && a.admit(dest)
	if !ok {
		a.log.Info("relayed connection refused: an end is not registered with the tracker", "src", src, "dest", dest)
	}
	return ok
}

// admit checks p, waiting (bounded) for its registration if it is not
// live yet.
func (a *Admission) admit(p peer.ID) bool {
	if a.cached(p) {
		return true
	}
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	default:
		return a.check(p) // too many waiting: no wait for this one
	}
	deadline := time.Now().Add(a.wait)
	for {
		wake := a.waitFor(p)
		if a.check(p) {
			a.stopWaiting(p, wake)
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			a.stopWaiting(p, wake)
			return false
		}
		t := time.NewTimer(min(left, admissionPoll))
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
		a.stopWaiting(p, wake)
	}
}

func (a *Admission) cached(p peer.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.known[p]
	return ok && time.Since(at) < admissionCache
}

// check asks whether p is live, and remembers it if so.
func (a *Admission) check(p peer.ID) bool {
	ctx, cancel := context.WithTimeout(context.Background(), admissionTimeout)
	defer cancel()
	live, err := a.live(ctx, p)
	if err != nil {
		a.log.Warn("relay admission: checking the peer failed", "peer", p, "err", err)
		return false
	}
	if live {
		a.mu.Lock()
		a.remember(p)
		a.mu.Unlock()
	}
	return live
}

// remember notes p as live now; a.mu is held. Old entries go when the map
// grows.
func (a *Admission) remember(p peer.ID) {
	if len(a.known) >= 4*maxBuckets {
		for k, at := range a.known {
			if time.Since(at) >= admissionCache {
				delete(a.known, k)
			}
		}
	}
	if len(a.known) < 4*maxBuckets {
		a.known[p] = time.Now()
	}
}

func (a *Admission) waitFor(p peer.ID) chan struct{} {
	c := make(chan struct{})
	a.mu.Lock()
	a.waiters[p] = append(a.waiters[p], c)
	a.mu.Unlock()
	return c
}

func (a *Admission) stopWaiting(p peer.ID, c chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ws := a.waiters[p]
	for i, w := range ws {
		if w == c {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(a.waiters, p)
	} else {
		a.waiters[p] = ws
	}
}
