package tracker

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Choosing the holders /v1/find lists. Identities cost nothing, so a hash
// can have any number of holders an attacker made up, heartbeating as
// often as it likes; listing the most recently seen (as the tracker once
// did) let 120 of them push every honest holder out of the answer. The
// choice here cannot be filled that way:
//
//   - diversity: holders are taken in rounds, one per source network (an
//     IPv4 /24, an IPv6 /48) per round, so a network contributes its
//     second holder only once every network has contributed its first;
//     the quota of live peers per network bounds how many rounds one
//     network can fill;
//   - age: within a network, holders that registered earlier (and
//     stayed live) come first; when a round has more networks than
//     there is room, half the room goes to the networks whose holder has
//     stayed longest, so a long-running honest holder is not outnumbered
//     by a flood of fresh identities;
//   - chance: the other half goes to networks drawn at random, so a
//     newcomer is listed too, and no fixed set of identities can be sure
//     to hold the slots.
//
// The answer lists round by round, each round in random order (load
// spreads over the holders), except that in a round with more networks
// than room the longest-staying half comes first. Clients may look at a
// prefix only (a daemon considers 16 holders): with holders in fewer
// networks than that, every network is in the prefix.
//
// A find considers at most maxHolderScan candidates (HolderKeys: the
// oldest registrations first), so the work per find is bounded whatever
// a hash's popularity; the choice is linear in the candidates (no sort of
// them all).

// maxHolderScan bounds the candidates one find reads.
const maxHolderScan = 4096

// candidates are a hash's live holders (HolderKeys, descCache.holders) in
// key order, grouped by network once (a popular hash's are cached, and
// each find draws afresh from them without grouping them again). The
// holders a find lists are described by the Server's descCache.
type candidates struct {
	hs   []Holder
	nets [][]int32 // each network's holders (indexes into hs), networks in order of first appearance
}

// groupByNet groups hs (in the registry's order) by network: one pass to
// number the networks and count their holders, one to place the holders
// in a single array (a slice of it per network).
func groupByNet(hs []Holder) *candidates {
	c := &candidates{hs: hs}
	// Sized once: grown from small, the map was rebuilt several times for
	// a popular hash (a thousand holders in as many networks).
	byNet := make(map[string]int32, len(hs))
	netOf := make([]int32, len(hs))
	var counts []int32
	for i, h := range hs {
		n, ok := byNet[h.Net]
		if !ok {
			n = int32(len(counts))
			byNet[h.Net] = n
			counts = append(counts, 0)
		}
		netOf[i] = n
		counts[n]++
	}
	flat := make([]int32, len(hs))
	c.nets = make([][]int32, len(counts))
	off := int32(0)
	for n, k := range counts {
		c.nets[n] = flat[off : off : off+k]
		off += k
	}
	for i, n := range netOf {
		c.nets[n] = append(c.nets[n], int32(i))
	}
	return c
}

// pickHolders chooses up to limit of hs (in the registry's order: oldest
// registrations first) and returns their keys in the answer's order.
func pickHolders(hs []Holder, limit int) []int64 {
	return groupByNet(hs).pick(limit)
}

// pick chooses up to limit of the candidates and returns their keys in
// the answer's order. It changes nothing in c (finds share it).
func (c *candidates) pick(limit int) []int64 {
	hs := c.hs
	if limit <= 0 || len(hs) == 0 {
		return nil
	}
	keys := make([]int64, 0, min(limit, len(hs)))
	if len(hs) <= limit {
		for _, h := range hs {
			keys = append(keys, h.Key)
		}
		rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		return keys
	}
	round := make([]int, 0, len(c.nets))
	for r := 0; len(keys) < limit; r++ {
		round = round[:0]
		for _, idx := range c.nets {
			if r < len(idx) {
				round = append(round, int(idx[r]))
			}
		}
		if len(round) == 0 {
			break
		}
		room := limit - len(keys)
		if len(round) <= room {
			keys = appendShuffled(keys, hs, round)
			continue
		}
		// More networks than room: the longest-staying half, then a
		// random draw from the rest.
		oldest := room - room/2
		selectOldest(hs, round, oldest)
		keys = appendShuffled(keys, hs, round[:oldest])
		rest := round[oldest:]
		for k := 0; k < room-oldest; k++ {
			j := k + rand.IntN(len(rest)-k)
			rest[k], rest[j] = rest[j], rest[k]
			keys = append(keys, hs[rest[k]].Key)
		}
		break
	}
	return keys
}

// appendShuffled appends the keys of hs[idx...] in random order.
func appendShuffled(keys []int64, hs []Holder, idx []int) []int64 {
	rand.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	for _, i := range idx {
		keys = append(keys, hs[i].Key)
	}
	return keys
}

// selectOldest reorders idx so that its first k entries are those of the k
// smallest Since (ties by key): quickselect, linear on average.
func selectOldest(hs []Holder, idx []int, k int) {
	less := func(a, b int) bool {
		if hs[a].Since != hs[b].Since {
			return hs[a].Since < hs[b].Since
		}
		return hs[a].Key < hs[b].Key
	}
	lo, hi := 0, len(idx)-1
	for lo < hi {
		p := idx[lo+rand.IntN(hi-lo+1)]
		// Three-way partition around p.
		lt, i, gt := lo, lo, hi
		for i <= gt {
			switch {
			case less(idx[i], p):
				idx[lt], idx[i] = idx[i], idx[lt]
				lt++
				i++
			case less(p, idx[i]):
				idx[i], idx[gt] = idx[gt], idx[i]
				gt--
			default:
				i++
			}
		}
		switch {
		case k <= lt:
			hi = lt - 1
		case k > gt+1:
			lo = gt + 1
		default:
			return
		}
	}
}

// holderCache keeps the candidates of popular hashes (at least
// holderCacheMin live holders): reading a thousand holders is most of a
// find's cost once its holders are described from memory (descCache), and
// popular hashes are what peers ask for most. An entry is the result of
// one read, stamped with the time the read began; by its age it is
//
//   - fresh (younger than holderCacheTTL): finds draw from it;
//   - stale (holderCacheTTL up to holderCacheMaxAge): finds still draw
//     from it, and the first of them starts one read in the background
//     that replaces it (stale-while-revalidate): a popular hash asked for
//     at least every holderCacheMaxAge-holderCacheTTL (2 s) is read while
//     a find waits only for its first find;
//   - older: not used; a find reads the candidates and waits for them,
//     sharing the read with the finds that miss at once.
//
// So the candidates a find draws from were read at most holderCacheMaxAge
// ago: a holder that stopped holding the hash (removed it, or
// deregistered through another tracker sharing the database) may be
// listed up to that long after, one that started may be missing that
// long. A holder that expired, or deregistered through this tracker, is
// not listed at all: every find checks the liveness of those it lists
// (descCache). Hashes with fewer holders, where one holder can be the only
// one, are always read afresh. At most holderCacheBudget candidates are
// kept in all.
type holderCache struct {
	mu      sync.Mutex
	m       map[string]cachedHolders
	order   []cacheRef // in the order of puts: the oldest first, for eviction
	entries int
	loading map[string]*holderLoad
}

// holderLoad is a read of a hash's candidates under way, begun at at:
// finds of the same hash that need one meanwhile wait for it rather than
// read the same thousand rows again (when a popular hash's entry is too
// old, every find in flight misses at once).
type holderLoad struct {
	at   time.Time
	done chan struct{}
	c    *candidates
	err  error
}

// readHolders reads a hash's candidates: its holders' keys from the
// registry, their standings from memory where known (descCache.holders).
type readHolders func(ctx context.Context) ([]Holder, error)

// cacheRef is a put in holderCache.order; a later put of the hash makes
// it stale (at differs from the entry's).
type cacheRef struct {
	hash string
	at   time.Time
}

type cachedHolders struct {
	at time.Time // when the read began
	c  *candidates
}

const (
	holderCacheMin    = 256
	holderCacheTTL    = 2 * time.Second // fresh; then refreshed in the background
	holderCacheMaxAge = 4 * time.Second // used at most this long after the read began
	holderCacheBudget = 1 << 18         // about 10 MiB
)

// candidates returns the hash's candidates at now: from the cache while
// its entry is younger than holderCacheMaxAge (starting one background
// read to replace it once it is holderCacheTTL old), otherwise from a
// read it waits for: the one under way if it began recently enough for
// its result to be used now, or else one it starts for every find that
// asks meanwhile (so a database slower than holderCacheMaxAge costs one
// read at a time per hash, not one per find). Popular hashes' results
// are cached. A shared read that failed (the request running it was
// canceled, or a background read timed out) is tried once more, shared
// again. A background read's error is dropped: the entry stays until it
// is too old, and the finds that then read report the error.
func (c *holderCache) candidates(ctx context.Context, hash string, now time.Time, read readHolders) (*candidates, error) {
	for retried := false; ; retried = true {
		c.mu.Lock()
		if e, ok := c.usable(hash, now); ok {
			if now.Sub(e.at) >= holderCacheTTL && c.loading[hash] == nil {
				l := c.begin(hash, now)
				go func() {
					// Bounded by the age at which its result would be
					// useless; canceled by nobody (no find waits for it).
					ctx, cancel := context.WithTimeout(context.Background(), holderCacheMaxAge)
					defer cancel()
					c.finish(ctx, hash, l, read)
				}()
			}
			c.mu.Unlock()
			return e.c, nil
		}
		l, ok := c.loading[hash]
		if !ok || !near(now, l.at) {
			// None under way, or one begun too long ago to be used (the
			// database is that slow; it finishes on its own): this find
			// reads, for the finds that ask meanwhile too.
			l = c.begin(hash, now)
			c.mu.Unlock()
			c.finish(ctx, hash, l, read)
			return l.c, l.err
		}
		c.mu.Unlock()
		select {
		case <-l.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if l.err == nil || retried {
			return l.c, l.err
		}
	}
}

// usable returns the hash's entry if it may be used at now. c.mu is held.
// An entry read after now (a find that took its time after reading the
// clock, while another's read was done) is as good as a fresh one; one
// read holderCacheMaxAge after now is not used either (the clock went
// back).
func (c *holderCache) usable(hash string, now time.Time) (cachedHolders, bool) {
	e, ok := c.m[hash]
	if !ok || !near(now, e.at) {
		return cachedHolders{}, false // replaced by the next put, or evicted
	}
	return e, true
}

// near reports whether a read begun at at may be used at now.
func near(now, at time.Time) bool {
	d := now.Sub(at)
	return d < holderCacheMaxAge && d > -holderCacheMaxAge
}

// begin registers a read of hash begun at now. c.mu is held.
func (c *holderCache) begin(hash string, now time.Time) *holderLoad {
	l := &holderLoad{at: now, done: make(chan struct{})}
	if c.loading == nil {
		c.loading = make(map[string]*holderLoad)
	}
	c.loading[hash] = l
	return l
}

// finish runs read for l, caches its result if the hash is popular, and
// tells the finds waiting for it.
func (c *holderCache) finish(ctx context.Context, hash string, l *holderLoad, read readHolders) {
	hs, err := read(ctx)
	if err == nil {
		l.c = groupByNet(hs)
		c.put(hash, l.c, l.at)
	}
	l.err = err
	c.mu.Lock()
	if c.loading[hash] == l { // not replaced by a later read
		delete(c.loading, hash)
	}
	c.mu.Unlock()
	close(l.done)
}

// get returns the hash's candidates if they may be used at now, and
// whether they are fresh (no read needed).
func (c *holderCache) get(hash string, now time.Time) (cs *candidates, fresh, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.usable(hash, now)
	return e.c, ok && now.Sub(e.at) < holderCacheTTL, ok
}

// put caches cs, read at at, if the hash is popular enough, and reports
// whether it did. An entry read later is kept.
func (c *holderCache) put(hash string, cs *candidates, at time.Time) bool {
	if len(cs.hs) < holderCacheMin {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedHolders)
	}
	if old, ok := c.m[hash]; ok {
		if old.at.After(at) {
			return true
		}
		c.entries -= len(old.c.hs)
	}
	c.order = append(c.order, cacheRef{hash, at})
	c.m[hash] = cachedHolders{at, cs}
	c.entries += len(cs.hs)
	// Evict from the oldest put: entries past the budget, and those too
	// old to be used (a hash nobody asks about again would otherwise
	// hold its candidates until the budget pushed it out).
	for len(c.order) > 0 {
		ref := c.order[0]
		e, ok := c.m[ref.hash]
		if ok && e.at.Equal(ref.at) {
			if c.entries <= holderCacheBudget && at.Sub(e.at) < holderCacheMaxAge {
				break
			}
			c.entries -= len(e.c.hs)
			delete(c.m, ref.hash)
		}
		c.order[0] = cacheRef{}
		c.order = c.order[1:]
	}
	return true
}
