package tracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/peerix/peerix/internal/tracker/trackerapi"
)

func TestPickHolders(t *testing.T) {
	type holders struct {
		net   string
		n     int
		since int64
	}
	mk := func(groups ...holders) []Holder {
		var hs []Holder
		key := int64(0)
		for _, g := range groups {
			for range g.n {
				key++
				hs = append(hs, Holder{Key: key, Net: g.net, Since: g.since})
			}
		}
		return hs
	}
	count := func(hs []Holder, keys []int64, net string) int {
		n := 0
		for _, k := range keys {
			if hs[k-1].Net == net {
				n++
			}
		}
		return n
	}
	t.Run("fewer than the limit: all", func(t *testing.T) {
		hs := mk(holders{"a", 3, 1}, holders{"b", 2, 2})
		got := pickHolders(hs, 10)
		slices.Sort(got)
		if !slices.Equal(got, []int64{1, 2, 3, 4, 5}) {
			t.Fatal(got)
		}
	})
	t.Run("one per network before a second", func(t *testing.T) {
		hs := mk(holders{"sybil", 500, 5}, holders{"h1", 1, 9}, holders{"h2", 2, 9}, holders{"h3", 1, 9})
		for range 50 {
			got := pickHolders(hs, 100)
			if len(got) != 100 || count(hs, got, "h1") != 1 || count(hs, got, "h2") != 2 || count(hs, got, "h3") != 1 {
				t.Fatalf("%d picked, h1 %d h2 %d h3 %d", len(got), count(hs, got, "h1"), count(hs, got, "h2"), count(hs, got, "h3"))
			}
			if u := slices.Compact(slices.Sorted(slices.Values(got))); len(u) != 100 {
				t.Fatalf("duplicates: %v", got)
			}
			// Round 0 (a holder of each network) comes first.
			if first := got[:4]; count(hs, first, "h1") != 1 || count(hs, first, "h2") != 1 || count(hs, first, "h3") != 1 || count(hs, first, "sybil") != 1 {
				t.Fatalf("first four %v: not one per network", first)
			}
		}
	})
	t.Run("more networks than room: oldest half, random half", func(t *testing.T) {
		// 300 fresh networks of one holder each (an attacker with many
		// addresses) and 10 honest networks that registered earlier.
		var hs []Holder
		for i := range 300 {
			hs = append(hs, Holder{Key: int64(i + 1), Net: fmt.Sprintf("s%d", i), Since: 1000})
		}
		for i := range 10 {
			hs = append(hs, Holder{Key: int64(301 + i), Net: fmt.Sprintf("h%d", i), Since: int64(100 + i)})
		}
		seenSybil := map[int64]bool{}
		for range 50 {
			got := pickHolders(hs, 20)
			if len(got) != 20 {
				t.Fatalf("%d picked", len(got))
			}
			for k := int64(301); k <= 310; k++ {
				if !slices.Contains(got[:10], k) {
					t.Fatalf("honest holder %d (among the 10 oldest) not among the first 10: %v", k, got)
				}
			}
			for _, k := range got {
				if k <= 300 {
					seenSybil[k] = true
				}
			}
		}
		if len(seenSybil) < 100 {
			t.Errorf("the random half drew only %d different fresh holders in 50 finds", len(seenSybil))
		}
	})
	t.Run("a newcomer is drawn sometimes", func(t *testing.T) {
		var hs []Holder
		for i := range 150 {
			hs = append(hs, Holder{Key: int64(i + 1), Net: fmt.Sprintf("n%d", i), Since: int64(i)})
		}
		newest := int64(150)
		drawn := 0
		for range 200 {
			if slices.Contains(pickHolders(hs, 100), newest) {
				drawn++
			}
		}
		if drawn < 50 || drawn == 200 {
			t.Errorf("the newest of 150 holders drawn in %d of 200 finds of 100", drawn)
		}
	})
}

func TestSelectOldest(t *testing.T) {
	for n := 1; n < 40; n++ {
		hs := make([]Holder, n)
		for i := range hs {
			hs[i] = Holder{Key: int64(i), Since: int64((i * 7919) % 13)}
		}
		for k := 0; k <= n; k++ {
			idx := make([]int, n)
			for i := range idx {
				idx[i] = i
			}
			selectOldest(hs, idx, k)
			worst := int64(-1)
			for _, i := range idx[:k] {
				worst = max(worst, hs[i].Since)
			}
			for _, i := range idx[k:] {
				if hs[i].Since < worst {
					t.Fatalf("n %d k %d: %d (since %d) left out, %d taken", n, k, i, hs[i].Since, worst)
				}
			}
		}
	}
}

// TestHolders: both registries list holders oldest registration first,
// with their network and registration time; a peer coming back after
// expiry registers anew.
func TestHolders(t *testing.T) { eachBackend(t, testHolders) }

func testHolders(t *testing.T, be backend) {
	s, reg, clock := newTestServer(t, be, time.Minute)
	a, b := newSigner(t), newSigner(t)
	a.announceFrom(t, s, ms(clock.Now()), "198.51.100.7:1")
	a.packagesFrom(t, s, ms(clock.Now())+1, "198.51.100.7:1", []string{hashN(1)})
	clock.Advance(time.Second)
	b.announceFrom(t, s, ms(clock.Now()), "[2001:db8:1:2::3]:1")
	b.packagesFrom(t, s, ms(clock.Now())+1, "[2001:db8:1:2::3]:1", []string{hashN(1)})
	hs, err := reg.Holders(t.Context(), hashN(1), clock.Now().Add(-time.Minute), 10)
	if err != nil || len(hs) != 2 {
		t.Fatalf("%v %v", hs, err)
	}
	if hs[0].Net != "198.51.100.0/24" || hs[0].Since != ms(t0) || hs[1].Net != "2001:db8:1::/48" || hs[1].Since != ms(t0)+1000 {
		t.Fatalf("holders %+v", hs)
	}
	// a heartbeats, b expires and comes back.
	clock.Advance(50 * time.Second)
	a.announceFrom(t, s, ms(clock.Now()), "198.51.100.7:1")
	clock.Advance(20 * time.Second)
	b.announceFrom(t, s, ms(clock.Now()), "[2001:db8:1:2::3]:1")
	b.packagesFrom(t, s, ms(clock.Now())+1, "[2001:db8:1:2::3]:1", []string{hashN(1)})
	hs, _ = reg.Holders(t.Context(), hashN(1), clock.Now().Add(-time.Minute), 10)
	if len(hs) != 2 || hs[0].Since != ms(t0) || hs[1].Since != ms(clock.Now()) {
		t.Fatalf("after b's return: %+v", hs)
	}
}

func TestHolderCache(t *testing.T) {
	var c holderCache
	now := t0
	small := groupByNet(make([]Holder, holderCacheMin-1))
	big := groupByNet(make([]Holder, holderCacheMin))
	c.put("small", small, now)
	c.put("big", big, now)
	if _, ok := c.get("small", now); ok {
		t.Fatal("a hash with few holders was cached")
	}
	if hs, ok := c.get("big", now.Add(holderCacheTTL-time.Millisecond)); !ok || len(hs.hs) != len(big.hs) {
		t.Fatal("a popular hash's holders not cached")
	}
	if _, ok := c.get("big", now.Add(holderCacheTTL)); ok {
		t.Fatal("cached past the TTL")
	}
	for i := range holderCacheBudget/holderCacheMin + 10 {
		c.put(fmt.Sprint(i), big, now)
	}
	if c.entries > holderCacheBudget || len(c.m) > holderCacheBudget/holderCacheMin {
		t.Fatalf("%d entries in %d hashes; budget %d", c.entries, len(c.m), holderCacheBudget)
	}
	if _, ok := c.get("big", now); ok {
		t.Fatal("the oldest entry survived the budget")
	}
	// Expired entries go at the next put, asked about again or not.
	c.put("later", big, now.Add(holderCacheTTL))
	if len(c.m) != 1 || len(c.order) != 1 {
		t.Fatalf("%d entries (%d in order) after everything else expired", len(c.m), len(c.order))
	}
}

// TestPickSharesCandidates: finds of a cached hash share its candidates;
// drawing from them changes nothing in them.
func TestPickSharesCandidates(t *testing.T) {
	var hs []Holder
	for i := range 1000 {
		hs = append(hs, Holder{Key: int64(i), Net: fmt.Sprint(i % 300), Since: int64(1000 - i)})
	}
	c := groupByNet(hs)
	before := fmt.Sprint(c.hs, c.nets)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if n := len(c.pick(100)); n != 100 {
					t.Errorf("%d picked", n)
				}
			}
		}()
	}
	wg.Wait()
	if fmt.Sprint(c.hs, c.nets) != before {
		t.Fatal("pick changed the shared candidates")
	}
}

// TestFindFromMemory: finds of a popular hash answer from the cached
// candidates and descriptions, byte for byte what describing them afresh
// gives; a holder that deregistered is gone once the entry expires.
func TestFindFromMemory(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s, reg, clock := newTestServer(t, b, time.Hour)
		h := hashN(7)
		var first signer
		for i := range holderCacheMin + 10 {
			p := newSigner(t)
			if i == 0 {
				first = p
			}
			from := fmt.Sprintf("10.%d.%d.7:1", i/250, i%250)
			p.announceFrom(t, s, ms(clock.Now()), from, fmt.Sprintf("/ip4/198.51.100.%d/tcp/%d", i%250+1, 4000+i))
			p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
		}
		find := func() api.PeersAnswer {
			w := serve(s, request("GET", "/v1/find/"+h+"?limit=1000", nil, ""))
			if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("find: %d %s", w.Code, w.Body)
			}
			var ans api.PeersAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
				t.Fatal(err)
			}
			return ans
		}
		// Every holder is listed (limit 1000), the second time from memory.
		a1 := find()
		if s.descs.len() == 0 {
			t.Fatal("no descriptions cached")
		}
		a2 := find()
		want, err := findAll(t.Context(), reg, h, clock.Now().Add(-time.Hour), 1000)
		if err != nil {
			t.Fatal(err)
		}
		byID := func(ps []PeerInfo) map[string]string {
			m := map[string]string{}
			for _, p := range ps {
				m[p.PeerID] = fmt.Sprint(p)
			}
			return m
		}
		if w, g1, g2 := byID(want), byID(a1.Peers), byID(a2.Peers); len(g1) != len(w) || fmt.Sprint(g1) != fmt.Sprint(w) || fmt.Sprint(g2) != fmt.Sprint(w) {
			t.Fatalf("answers differ from the registry's descriptions: %d, %d, %d peers", len(w), len(g1), len(g2))
		}
		// The first holder leaves; after the TTL it is no longer listed.
		r := first.request(t, "DELETE", "/v1/peers/"+first.id.String(), mustJSON(t, map[string]any{"peer_id": first.id.String(), "ts": ms(clock.Now()) + 5}))
		if w := serve(s, r); w.Code != 200 {
			t.Fatalf("delete: %d %s", w.Code, w.Body)
		}
		clock.Advance(holderCacheTTL)
		for _, p := range find().Peers {
			if p.PeerID == first.id.String() {
				t.Fatal("a holder that left is still listed past the cache's TTL")
			}
		}
	})
}

// TestHolderLoadShared: finds of one hash that miss the cache at once
// share one read of its candidates; one whose shared read failed reads
// for itself.
func TestHolderLoadShared(t *testing.T) {
	var c holderCache
	hs := make([]Holder, holderCacheMin)
	var reads atomic.Int32
	release := make(chan struct{})
	read := func() ([]Holder, error) {
		reads.Add(1)
		<-release
		return hs, nil
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, cached, err := c.load(t.Context(), "h", t0, read)
			if err != nil || !cached || len(cs.hs) != len(hs) {
				t.Errorf("load: %v, cached %v", err, cached)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let them all find the read under way
	close(release)
	wg.Wait()
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads for 8 finds at once", n)
	}
	// A failed shared read: the waiter reads again.
	fail := make(chan struct{})
	var second atomic.Int32
	go c.load(t.Context(), "g", t0, func() ([]Holder, error) { <-fail; return nil, errors.New("canceled") })
	for {
		c.mu.Lock()
		_, ok := c.loading["g"]
		c.mu.Unlock()
		if ok {
			break
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan error)
	go func() {
		_, _, err := c.load(t.Context(), "g", t0, func() ([]Holder, error) { second.Add(1); return hs, nil })
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	close(fail)
	if err := <-done; err != nil || second.Load() != 1 {
		t.Fatalf("after a failed shared read: %v, %d reads of its own", err, second.Load())
	}
}

// TestSybilCached: a popular hash (served from the holder cache) keeps
// holder selection's defence: 300 fresh identities from three networks
// announcing it after an honest holder in a fourth do not push the honest
// one out of the first entries of any find.
func TestSybilCached(t *testing.T) {
	s, _, clock := newTestServer(t, sqliteBackend, time.Hour)
	h := hashN(9)
	honest := newSigner(t)
	honest.announceFrom(t, s, ms(clock.Now()), "203.0.113.7:1")
	honest.packagesFrom(t, s, ms(clock.Now())+1, "203.0.113.7:1", []string{h})
	clock.Advance(time.Minute)
	for i := range 300 {
		p := newSigner(t)
		from := fmt.Sprintf("10.%d.0.%d:1", i%3, i/3+1)
		p.announceFrom(t, s, ms(clock.Now()), from)
		p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
	}
	for i := range 50 {
		clock.Advance(100 * time.Millisecond) // mostly from the cache
		ids := findIDs(t, s, h)
		if len(ids) != 100 {
			t.Fatalf("find %d: %d holders", i, len(ids))
		}
		if !slices.Contains(ids[:16], honest.id.String()) {
			t.Fatalf("find %d: the honest holder is not among the first 16", i)
		}
	}
	if _, ok := s.holders.get(h, clock.Now()); !ok {
		t.Fatal("the hash's candidates are not cached: the test does not test the cache")
	}
}

// TestDescriptionsShared: a find describes a holder once for every hash
// it holds, within descTTL; its new addresses are listed at once after it
// announces them; a holder whose last_seen is no longer live is asked
// about again, not listed from memory.
func TestDescriptionsShared(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		const ttl = time.Minute
		s, _, clock := newTestServer(t, b, ttl)
		p := newSigner(t)
		from := "10.1.2.3:1"
		h1, h2 := hashN(1), hashN(2)
		p.announceFrom(t, s, ms(clock.Now()), from, "/ip4/198.51.100.1/tcp/4001")
		p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h1, h2})
		find := func(h string) []PeerInfo {
			t.Helper()
			w := serve(s, request("GET", "/v1/find/"+h, nil, ""))
			if w.Code != 200 {
				t.Fatalf("find: %d %s", w.Code, w.Body)
			}
			var ans api.PeersAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
				t.Fatal(err)
			}
			return ans.Peers
		}
		if ps := find(h1); len(ps) != 1 || len(ps[0].Addrs) != 1 || s.descs.len() != 1 {
			t.Fatalf("first find: %+v, %d described", ps, s.descs.len())
		}
		if ps := find(h2); len(ps) != 1 || ps[0].Addrs[0] != "/ip4/198.51.100.1/tcp/4001" {
			t.Fatalf("find of its other hash: %+v", ps)
		}
		clock.Advance(time.Second)
		p.announceFrom(t, s, ms(clock.Now()), from, "/ip4/198.51.100.2/tcp/4002")
		if ps := find(h1); len(ps) != 1 || ps[0].Addrs[0] != "/ip4/198.51.100.2/tcp/4002" {
			t.Fatalf("after a new announce: %+v, want the new address at once", ps)
		}
		// Silent past the TTL: not live, not listed, though described
		// less than descTTL ago (the holder cache is not in play: one
		// holder).
		clock.Advance(ttl + time.Second)
		if ps := find(h1); len(ps) != 0 {
			t.Fatalf("a holder past its TTL is listed: %+v", ps)
		}
	})
}

// TestDescCacheBudget: past descBudget the cache starts over; forget
// gives an entry's bytes back.
func TestDescCacheBudget(t *testing.T) {
	var c descCache
	big := make([]byte, descBudget/3)
	c.mu.Lock()
	for k := range int64(3) {
		c.put(k, descEntry{json: big, peerID: fmt.Sprint(k)})
	}
	n, bytes := len(c.m), c.bytes
	c.put(3, descEntry{json: big, peerID: "3"})
	after := len(c.m)
	c.mu.Unlock()
	if n != 3 || bytes != 3*int64(len(big)) || after != 1 {
		t.Fatalf("%d entries (%d bytes), then %d: want 3, then a new start", n, bytes, after)
	}
	c.forget("3")
	if c.len() != 0 || c.bytes != 0 {
		t.Fatalf("after forget: %d entries, %d bytes", c.len(), c.bytes)
	}
}
