package tracker

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"
)

// descCache keeps the rendered JSON of peers' descriptions (PeerInfo) for
// every find: a peer holds many hashes, so the hundred holders a find
// lists were mostly described moments ago for another hash. Only the
// registry's live peers are kept, each for descTTL; an entry is used only
// while the last_seen it recorded is still live (a peer past it is asked
// about again, and listed only if it heartbeat since). This tracker's own
// announces and deletions forget the peer at once; another tracker on a
// shared PostgreSQL database shows a changed address within descTTL (a
// peer announces when its addresses change, which is rare: a relay
// reservation, a new network).
type descCache struct {
	mu    sync.Mutex
	m     map[int64]descEntry
	byID  map[string]int64
	bytes int64
	// forgets counts forget calls and forgotten holds the peers of the
	// last of them (at most maxForgotten, oldest first): a description
	// read while its peer was forgotten (read before its deregistration
	// or announce) is used by its find but not kept.
	forgets   uint64
	forgotten []string
}

// maxForgotten bounds the forgets a description read remembers; a read
// during more of them keeps nothing.
const maxForgotten = 256

// keepable reports whether a description of peerID read when forgets was
// c.forgets may be kept. c.mu is held.
func (c *descCache) keepable(peerID string, forgets uint64) bool {
	n := c.forgets - forgets
	if n == 0 {
		return true
	}
	if n > uint64(len(c.forgotten)) {
		return false
	}
	return !slices.Contains(c.forgotten[uint64(len(c.forgotten))-n:], peerID)
}

type descEntry struct {
	json     []byte
	peerID   string
	lastSeen int64 // unix ms
	at       time.Time
}

const (
	descTTL = 30 * time.Second
	// descBudget bounds the descriptions kept, whatever addresses peers
	// announce (up to 8 KiB a peer); past it the cache starts over.
	descBudget = 32 << 20
)

// describe appends to buf the JSON array of the live peers of keys, in
// that order, asking reg only about those not described within descTTL.
func (c *descCache) describe(ctx context.Context, reg Registry, keys []int64, liveSince, now time.Time, buf []byte) ([]byte, error) {
	live := liveSince.UnixMilli()
	found := make([][]byte, len(keys))
	var missing []int64
	c.mu.Lock()
	for i, k := range keys {
		if e, ok := c.m[k]; ok && now.Sub(e.at) < descTTL && !now.Before(e.at) && e.lastSeen >= live {
			found[i] = e.json
		} else {
			missing = append(missing, k)
		}
	}
	forgets := c.forgets
	c.mu.Unlock()
	if len(missing) > 0 {
		ps, err := reg.Describe(ctx, missing, liveSince)
		if err != nil {
			return nil, err
		}
		fresh := make(map[int64][]byte, len(ps))
		c.mu.Lock()
		for _, p := range ps {
			b, err := json.Marshal(p.PeerInfo)
			if err != nil {
				c.mu.Unlock()
				return nil, err
			}
			fresh[p.Key] = b
			if c.keepable(p.PeerID, forgets) {
				c.put(p.Key, descEntry{json: b, peerID: p.PeerID, lastSeen: p.LastSeen.UnixMilli(), at: now})
			}
		}
		c.mu.Unlock()
		for i, k := range keys {
			if found[i] == nil {
				found[i] = fresh[k] // nil: not live
			}
		}
	}
	// Grown once to the answer's size: an answer of 100 holders with 8
	// addresses each is about 85 KiB, and growing into it by appends
	// copied and allocated it twice over.
	size := 2
	for _, b := range found {
		size += len(b) + 1
	}
	buf = slices.Grow(buf, size)
	buf = append(buf, '[')
	n := 0
	for _, b := range found {
		if b == nil {
			continue
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, b...)
		n++
	}
	return append(buf, ']'), nil
}

// put keeps e for key. c.mu is held.
func (c *descCache) put(key int64, e descEntry) {
	if c.m == nil || c.bytes+int64(len(e.json)) > descBudget {
		c.m, c.byID, c.bytes = map[int64]descEntry{}, map[string]int64{}, 0
	}
	if old, ok := c.m[key]; ok {
		c.bytes -= int64(len(old.json))
	}
	c.m[key] = e
	c.byID[e.peerID] = key
	c.bytes += int64(len(e.json))
}

// forget drops the description of peerID (it announced other addresses,
// or left).
func (c *descCache) forget(peerID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	if len(c.forgotten) == maxForgotten {
		c.forgotten = slices.Delete(c.forgotten, 0, 1)
	}
	c.forgotten = append(c.forgotten, peerID)
	key, ok := c.byID[peerID]
	if !ok {
		return
	}
	delete(c.byID, peerID)
	if e, ok := c.m[key]; ok {
		c.bytes -= int64(len(e.json))
		delete(c.m, key)
	}
}

// len is the number of descriptions kept.
func (c *descCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
