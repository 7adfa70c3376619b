package tracker

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"
)

// descCache keeps what finds need to know of peers, for every find: a peer
// holds many hashes, so the holders a find chooses among and the hundred
// it lists were mostly looked at moments ago for another hash. Of a peer
// it keeps its standing (source network, registration time, last_seen:
// what choosing needs) and, once a find listed it, the rendered JSON of
// its description (PeerInfo). Entries are kept for descTTL. A standing or
// description is used only while the last_seen it recorded is still live
// (a peer past it is asked about again, and counted or listed only if it
// heartbeat since: an expired peer, whose hashes stay until the sweep, is
// asked about at every find that reads the hash's holders). This
// tracker's own announces and deletions forget the peer at once; another
// tracker on a shared PostgreSQL database shows a changed address or
// network within descTTL (a peer announces when its addresses change,
// which is rare: a relay reservation, a new network).
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
	json     []byte // nil: the standing alone was read
	peerID   string
	net      string
	since    int64 // registered_at, unix ms
	lastSeen int64 // unix ms
	at       time.Time
}

// size is what e counts against descBudget.
func (e descEntry) size() int64 { return int64(len(e.json) + len(e.peerID) + len(e.net) + 64) }

// usable reports whether e, read at e.at, may be used at now.
func (e descEntry) usable(now time.Time) bool {
	return now.Sub(e.at) < descTTL && !now.Before(e.at)
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
		if e, ok := c.m[k]; ok && e.json != nil && e.usable(now) && e.lastSeen >= live {
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
				c.put(p.Key, descEntry{json: b, peerID: p.PeerID, net: p.Net, since: p.Since, lastSeen: p.LastSeen.UnixMilli(), at: now})
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

// holders returns the live peers among keys (a hash's holders from
// HolderKeys, in key order) as choosing needs them, in the same order,
// asking reg only about the standings not known within descTTL: a find
// whose candidates are not cached reads the hash's keys alone (an index
// range), where joining a thousand peers' rows to them cost four times as
// much on PostgreSQL.
func (c *descCache) holders(ctx context.Context, reg Registry, keys []int64, liveSince, now time.Time) ([]Holder, error) {
	live := liveSince.UnixMilli()
	slots := make([]Holder, len(keys))
	listed := make([]bool, len(keys)) // slots[i] is a live holder
	var missing []int64
	c.mu.Lock()
	for i, k := range keys {
		e, ok := c.m[k]
		if ok && e.usable(now) && e.lastSeen >= live {
			slots[i], listed[i] = Holder{Key: k, Net: e.net, Since: e.since}, true
		} else {
			// Not known, or seen last too long ago when read: it may
			// have heartbeat since (through another tracker on the
			// same database), or registered again.
			missing = append(missing, k)
		}
	}
	forgets := c.forgets
	c.mu.Unlock()
	if len(missing) > 0 {
		sts, err := reg.Standings(ctx, missing)
		if err != nil {
			return nil, err
		}
		read := make(map[int64]Holder, len(sts))
		c.mu.Lock()
		for _, st := range sts {
			// Strings copied: st's share the registry's whole answer,
			// which cached candidates would otherwise keep.
			st.PeerID, st.Net = strings.Clone(st.PeerID), strings.Clone(st.Net)
			if st.LastSeen >= live {
				read[st.Key] = st.Holder
			}
			if c.keepable(st.PeerID, forgets) {
				// Replaces no description that could be used (that of
				// a peer whose recorded last_seen is too old).
				c.put(st.Key, descEntry{peerID: st.PeerID, net: st.Net, since: st.Since, lastSeen: st.LastSeen, at: now})
			}
		}
		c.mu.Unlock()
		for i, k := range keys {
			if h, ok := read[k]; ok {
				slots[i], listed[i] = h, true
			}
		}
	}
	hs := slots[:0]
	for i, h := range slots {
		if listed[i] {
			hs = append(hs, h)
		}
	}
	return hs, nil
}

// put keeps e for key. c.mu is held.
func (c *descCache) put(key int64, e descEntry) {
	if c.m == nil || c.bytes+e.size() > descBudget {
		c.m, c.byID, c.bytes = map[int64]descEntry{}, map[string]int64{}, 0
	}
	if old, ok := c.m[key]; ok {
		c.bytes -= old.size()
	}
	c.m[key] = e
	c.byID[e.peerID] = key
	c.bytes += e.size()
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
		c.bytes -= e.size()
		delete(c.m, key)
	}
}

// len is the number of peers kept (standings, with or without a
// description).
func (c *descCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
