package tracker

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Group commit of small packages updates (SQLite). A delta announcement
// (a few hashes added and removed) costs a transaction of its own, and the
// one writer connection takes them one at a time, so under load most of a
// delta's time is spent queued behind other commits. (PostgreSQL runs
// transactions side by side and shares WAL flushes among commits itself;
// grouping there was slower: see pgSetPackagesTx.) Updates that arrive while a commit is
// under way are applied together in the next transaction, each inside its
// own savepoint (one refused for a quota or a replay is rolled back alone,
// the others stand), and one commit makes them all durable.
//
// No update is acknowledged before its group committed: SetPackages
// returns only after the commit of the transaction that applied it, and
// if that commit fails every update of the group gets the error (nothing
// of it was applied; the peers send them again).
//
// There is no goroutine of its own: the first update to arrive while no
// group is being committed leads: it takes the queue (itself first), runs
// the transaction, hands each waiting update its result, and passes the
// lead to the update at the head of the queue, if any. An update thus
// waits for at most the group being committed when it arrived and its own.

// groupMaxHashes: updates with more hashes than this (and full sets) are
// committed alone.
const groupMaxHashes = 1000

// groupMax bounds the updates of one group.
const groupMax = 64

// groupTimeout bounds one group's transaction: it runs on behalf of many
// requests, so no one request's cancellation stops it.
const groupTimeout = 30 * time.Second

// pkgJob is one update waiting for, or in, a group.
type pkgJob struct {
	ctx         context.Context
	u           PackagesUpdate
	add, remove [][]byte // decoded u.Add, u.Remove

	count int64
	err   error

	wake chan struct{} // a result, or the lead (lead set)
	lead bool
}

// grouper runs groups of pkgJobs through commit.
type grouper struct {
	// commit applies the jobs in one transaction, each in a savepoint,
	// and sets each job's count and err: the commit's error for all of
	// them if it failed. It returns when the transaction has ended.
	commit func(ctx context.Context, jobs []*pkgJob)

	mu    sync.Mutex
	queue []*pkgJob
	busy  bool // a leader is committing a group
}

// groupable reports whether u goes through a group.
func groupable(u PackagesUpdate) bool {
	return !u.Full && len(u.Add)+len(u.Remove) <= groupMaxHashes
}

// do applies u (add and remove decoded) in a group and returns once the
// group committed.
func (g *grouper) do(ctx context.Context, u PackagesUpdate, add, remove [][]byte) (int64, error) {
	j := &pkgJob{ctx: ctx, u: u, add: add, remove: remove, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, j)
	if g.busy {
		g.mu.Unlock()
		<-j.wake
		if !j.lead {
			return j.count, j.err
		}
	} else {
		g.busy = true
		g.mu.Unlock()
	}
	// j leads, and is at the head of the queue.
	g.mu.Lock()
	n := min(len(g.queue), groupMax)
	batch := slices.Clone(g.queue[:n])
	g.queue = append(g.queue[:0], g.queue[n:]...)
	g.mu.Unlock()

	// The transaction lives on after the leader's client is gone: it
	// carries the others' updates.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), groupTimeout)
	g.commit(tctx, batch)
	cancel()
	for _, b := range batch[1:] {
		b.wake <- struct{}{}
	}
	g.mu.Lock()
	if len(g.queue) > 0 {
		next := g.queue[0]
		next.lead = true
		next.wake <- struct{}{}
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	return j.count, j.err
}

// sortedByPeer orders a group's jobs by peer ID (jobs of one peer keep
// their order): rows of neighbouring peers are written together, and a
// registry that locks rows would lock them in one order.
func sortedByPeer(jobs []*pkgJob) []*pkgJob {
	s := slices.Clone(jobs)
	slices.SortStableFunc(s, func(a, b *pkgJob) int {
		switch {
		case a.u.PeerID < b.u.PeerID:
			return -1
		case a.u.PeerID > b.u.PeerID:
			return 1
		}
		return 0
	})
	return s
}
