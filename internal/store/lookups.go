package store

import (
	"sync"
	"time"
)

// A Lookup is one search for a store path on peers, shared by every caller
// that asks for the same hash while it is fresh, so that Nix's parallel
// queries never multiply broadcasts, tracker requests or peer queries.
type Lookup interface {
	// Fresh reports whether the lookup may still answer callers at now: it
	// is running, or it finished recently enough (a hit stays fresh longer
	// than a miss).
	Fresh(now time.Time) bool
}

// Lookups is a table of lookups by hash: it returns the fresh lookup for a
// hash or starts a new one, and forgets stale ones. The zero value is
// ready to use; it is safe for concurrent use.
type Lookups[L Lookup] struct {
	mu      sync.Mutex
	m       map[string]L
	sweepAt int // table size that triggers the next sweep of stale lookups
}

// lookupsSweepMin: below this many entries the table is never swept.
const lookupsSweepMin = 4096

// Get returns the fresh lookup for hash, or the one start returns (start
// runs with the table locked: it must only create the lookup and start
// its goroutine).
func (t *Lookups[L]) Get(hash string, start func() L) L {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if l, ok := t.m[hash]; ok && l.Fresh(now) {
		return l
	}
	if t.m == nil {
		t.m = make(map[string]L)
	}
	if len(t.m) >= max(t.sweepAt, lookupsSweepMin) {
		for h, l := range t.m {
			if !l.Fresh(now) {
				delete(t.m, h)
			}
		}
		// Sweep again only after the table doubled: a burst of fresh
		// lookups must not make every new one walk the whole table.
		t.sweepAt = 2 * len(t.m)
	}
	l := start()
	t.m[hash] = l
	return l
}

// Peek returns the lookup for hash if one is fresh.
func (t *Lookups[L]) Peek(hash string) (L, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, ok := t.m[hash]
	if ok && !l.Fresh(time.Now()) {
		var zero L
		return zero, false
	}
	return l, ok
}
