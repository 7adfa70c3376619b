package tracker

import (
	"context"
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
	hs, err := liveHolders(t.Context(), reg, hashN(1), clock.Now().Add(-time.Minute), 10)
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
	hs, _ = liveHolders(t.Context(), reg, hashN(1), clock.Now().Add(-time.Minute), 10)
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
	if _, _, ok := c.get("small", now); ok {
		t.Fatal("a hash with few holders was cached")
	}
	if hs, fresh, ok := c.get("big", now.Add(holderCacheTTL-time.Millisecond)); !ok || !fresh || len(hs.hs) != len(big.hs) {
		t.Fatal("a popular hash's holders not cached")
	}
	if _, fresh, ok := c.get("big", now.Add(holderCacheTTL)); !ok || fresh {
		t.Fatal("not stale (usable, to be read again) at the TTL")
	}
	if _, _, ok := c.get("big", now.Add(holderCacheMaxAge)); ok {
		t.Fatal("used past the maximum age")
	}
	// Read a moment after a find read the clock: used, and fresh; read
	// holderCacheMaxAge after (the clock went back): not used.
	if _, fresh, ok := c.get("big", now.Add(-time.Millisecond)); !ok || !fresh {
		t.Fatal("a read begun just after now not used")
	}
	if _, _, ok := c.get("big", now.Add(-holderCacheMaxAge)); ok {
		t.Fatal("a read begun holderCacheMaxAge after now used")
	}
	// A read that began earlier does not replace one that began later.
	later := groupByNet(make([]Holder, holderCacheMin+1))
	c.put("big", later, now.Add(time.Second))
	c.put("big", big, now)
	if hs, _, _ := c.get("big", now.Add(time.Second)); hs != later {
		t.Fatal("an older read replaced a newer one")
	}
	for i := range holderCacheBudget/holderCacheMin + 10 {
		c.put(fmt.Sprint(i), big, now.Add(time.Second))
	}
	if c.entries > holderCacheBudget || len(c.m) > holderCacheBudget/holderCacheMin {
		t.Fatalf("%d entries in %d hashes; budget %d", c.entries, len(c.m), holderCacheBudget)
	}
	if _, _, ok := c.get("big", now.Add(time.Second)); ok {
		t.Fatal("the oldest entry survived the budget")
	}
	// Entries too old to be used go at the next put, asked about again
	// or not; stale ones stay.
	c.put("stale", big, now.Add(time.Second+holderCacheMaxAge-holderCacheTTL))
	c.put("later", big, now.Add(time.Second+holderCacheMaxAge))
	if len(c.m) != 2 || len(c.order) != 2 {
		t.Fatalf("%d entries (%d in order) after everything else got too old", len(c.m), len(c.order))
	}
}

// TestHolderCacheAges: what a find of a popular hash draws from, step by
// step on a fake clock, with the cache's reads of the candidates held up
// or let through: an entry younger than holderCacheTTL is used as it is;
// one up to holderCacheMaxAge old is used while exactly one background
// read replaces it; an older one is never used (the find waits for a
// read). Whatever the reads do, no find draws from a read that began
// holderCacheMaxAge or more before it.
func TestHolderCacheAges(t *testing.T) {
	const ms = time.Millisecond
	// A step is a find at t0+at. want is the read it draws from (1 the
	// first read), 0 if it must wait for a read that is held up (it is
	// made with a canceled context, so it returns at once with the
	// error instead). reads is how many reads have begun after it.
	// Before each step, release lets held-up reads through and waits
	// for them; hold holds up the reads that begin from then on.
	type step struct {
		at            time.Duration
		release, hold bool
		want, reads   int
	}
	ttl, maxAge := holderCacheTTL, holderCacheMaxAge
	cases := []struct {
		name  string
		steps []step
	}{
		{"fresh: no read", []step{
			{at: 0, want: 1, reads: 1},
			{at: ttl - ms, want: 1, reads: 1},
		}},
		{"stale: used, one background read replaces it", []step{
			{at: 0, want: 1, reads: 1},
			{at: ttl, hold: true, want: 1, reads: 2},
			{at: ttl + ms, want: 1, reads: 2}, // no second background read
			{at: maxAge - ms, want: 1, reads: 2},
			{at: maxAge - ms, release: true, want: 2, reads: 2},
			{at: ttl + ttl - ms, want: 2, reads: 2}, // read 2 began at ttl: fresh
			{at: ttl + ttl, want: 2, reads: 3},
		}},
		{"too old: not used, the find waits", []step{
			{at: 0, want: 1, reads: 1},
			{at: maxAge, hold: true, want: 0, reads: 2},
			// That find's read failed (canceled): the next reads again.
			{at: maxAge, release: true, want: 3, reads: 3},
		}},
		{"a held-up background read: finds wait for it once the entry is too old", []step{
			{at: 0, want: 1, reads: 1},
			{at: ttl, hold: true, want: 1, reads: 2},
			{at: maxAge, want: 0, reads: 2},
			{at: ttl + maxAge - ms, want: 0, reads: 2},
			// Read 2 began maxAge ago: not waited for; a read of its own.
			{at: ttl + maxAge, want: 0, reads: 3},
			// Read 2 is done now, but began too long ago to be used.
			{at: ttl + maxAge, release: true, want: 4, reads: 4},
		}},
		{"asked for every ttl: never waits after the first", []step{
			{at: 0, want: 1, reads: 1},
			{at: ttl, want: 1, reads: 2},
			{at: 2 * ttl, want: 2, reads: 3},
			{at: 3 * ttl, want: 3, reads: 4},
			{at: 4*ttl + ttl/2, want: 4, reads: 5},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var (
				c      holderCache
				mu     sync.Mutex
				began  []time.Time // when each read began (the find that made it)
				start  = make(chan struct{}, 100)
				seen   int // reads taken from start
				gate   = make(chan struct{})
				closed = true // gate closed: reads go through
			)
			close(gate)
			readAt := func(now time.Time) readHolders {
				return func(ctx context.Context) ([]Holder, error) {
					mu.Lock()
					began = append(began, now)
					n, g := len(began), gate
					mu.Unlock()
					start <- struct{}{}
					select {
					case <-g:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					hs := make([]Holder, holderCacheMin)
					hs[0].Key = int64(n) // which read
					return hs, nil
				}
			}
			canceled, cancel := context.WithCancel(t.Context())
			cancel()
			for i, st := range tc.steps {
				if st.release && !closed {
					close(gate)
					closed = true
					waitLoad(&c, "h")
				}
				if st.hold && closed {
					gate, closed = make(chan struct{}), false
				}
				now := t0.Add(st.at)
				ctx := t.Context()
				if !closed {
					ctx = canceled // a find that waits for a held-up read returns at once
				}
				cs, err := c.candidates(ctx, "h", now, readAt(now))
				got := 0
				if err == nil {
					got = int(cs.hs[0].Key)
					mu.Lock()
					age := now.Sub(began[got-1])
					mu.Unlock()
					if age >= holderCacheMaxAge || age < 0 {
						t.Fatalf("step %d (t0+%v): drew from read %d, begun %v before", i, st.at, got, age)
					}
				} else if !errors.Is(err, context.Canceled) {
					t.Fatalf("step %d: %v", i, err)
				}
				// A background read begins in a goroutine: wait until as
				// many reads as the step wants have begun (failing if they
				// do not), then see that no more have.
				for ; seen < st.reads; seen++ {
					select {
					case <-start:
					case <-time.After(10 * time.Second):
						t.Fatalf("step %d (t0+%v): %d reads begun; want %d", i, st.at, seen, st.reads)
					}
				}
				mu.Lock()
				reads := len(began)
				mu.Unlock()
				if got != st.want || reads != st.reads {
					t.Fatalf("step %d (t0+%v): drew from read %d after %d reads; want %d after %d", i, st.at, got, reads, st.want, st.reads)
				}
				if closed {
					waitLoad(&c, "h") // a background read it started is done
				}
			}
			if !closed {
				close(gate)
			}
			waitLoad(&c, "h")
		})
	}
}

// waitLoad waits for the read of hash's candidates under way, if any.
func waitLoad(c *holderCache, hash string) {
	c.mu.Lock()
	l := c.loading[hash]
	c.mu.Unlock()
	if l != nil {
		<-l.done
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
// gives.
func TestFindFromMemory(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s, reg, clock := newTestServer(t, b, time.Hour)
		h := hashN(7)
		popularHash(t, s, clock, h, holderCacheMin+10)
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
		if _, fresh, _ := s.holders.get(h, clock.Now()); !fresh {
			t.Fatal("the candidates are not cached")
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
	})
}

// popularHash makes n live holders of h, each from a network of its own,
// and returns them, the first registered first.
func popularHash(t *testing.T, s *Server, clock *fakeClock, h string, n int) []signer {
	t.Helper()
	ps := make([]signer, n)
	for i := range ps {
		p := newSigner(t)
		from := fmt.Sprintf("10.%d.%d.7:1", i/250, i%250)
		p.announceFrom(t, s, ms(clock.Now()), from, fmt.Sprintf("/ip4/198.51.100.%d/tcp/%d", i%250+1, 4000+i))
		p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
		ps[i] = p
	}
	return ps
}

// TestFindLeaverBound: how long a holder that stops holding a popular hash
// (whose candidates are cached) is still listed, per way of leaving, on
// both backends. Removing the hash: up to holderCacheMaxAge after the
// read of the candidates that listed it began, and no longer once a
// background read (started by the first find after holderCacheTTL) has
// replaced them. Deregistering through this tracker, or expiring: not at
// all, whatever the cache holds.
func TestFindLeaverBound(t *testing.T) {
	const peerTTL = time.Minute
	type check struct {
		advance time.Duration // then a find, at limit 1000
		listed  bool
		settle  bool // then wait for the background read the find started, if any
	}
	cases := []struct {
		name   string
		leave  func(t *testing.T, s *Server, clock *fakeClock, holders []signer, p signer, h string)
		checks []check
	}{
		{"removes the hash; finds in every window", removeHash, []check{
			{advance: holderCacheTTL - time.Millisecond, listed: true},     // fresh
			{advance: time.Millisecond, listed: true, settle: true},        // stale: listed, read again in the background
			{advance: 0, listed: false},                                    // the new read
			{advance: holderCacheMaxAge - time.Millisecond, listed: false}, // (still not)
		}},
		{"removes the hash; the background read done or not", removeHash, []check{
			{advance: holderCacheTTL, listed: true}, // stale: listed; its background read is not waited for
			{advance: holderCacheMaxAge - holderCacheTTL, listed: false},
		}},
		{"removes the hash; no find until the entry is too old", removeHash, []check{
			{advance: holderCacheMaxAge - time.Millisecond, listed: true},
			// No settle above: whether the background read that find
			// started is done or not, at holderCacheMaxAge the old
			// candidates are not used.
			{advance: time.Millisecond, listed: false},
		}},
		{"deregisters", func(t *testing.T, s *Server, clock *fakeClock, _ []signer, p signer, h string) {
			r := p.request(t, "DELETE", "/v1/peers/"+p.id.String(), mustJSON(t, map[string]any{"peer_id": p.id.String(), "ts": ms(clock.Now()) + 5}))
			if w := serve(s, r); w.Code != 200 {
				t.Fatalf("delete: %d %s", w.Code, w.Body)
			}
		}, []check{
			{advance: 0, listed: false},
			{advance: holderCacheTTL, listed: false},
		}},
		{"expires", func(t *testing.T, s *Server, clock *fakeClock, holders []signer, p signer, h string) {
			// Everyone else heartbeats; p does not, and expires.
			clock.Advance(peerTTL - time.Second)
			for i, q := range holders {
				if q.id != p.id {
					q.announceFrom(t, s, ms(clock.Now())+10, fmt.Sprintf("10.%d.%d.7:1", i/250, i%250))
				}
			}
			findIDs(t, s, h) // the candidates read again: p is among them
			if _, fresh, _ := s.holders.get(h, clock.Now()); !fresh {
				t.Fatal("not cached")
			}
		}, []check{
			{advance: time.Second - time.Millisecond, listed: true},
			{advance: time.Millisecond, listed: true}, // last seen exactly peerTTL ago: still live
			{advance: time.Millisecond, listed: false},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eachBackend(t, func(t *testing.T, b backend) {
				s, _, clock := newTestServer(t, b, peerTTL)
				h := hashN(11)
				ps := popularHash(t, s, clock, h, holderCacheMin+10)
				leaver := ps[len(ps)/2]
				listed := func() bool {
					peers := serveFind(t, s, h)
					if len(peers) < len(ps)-1 {
						t.Fatalf("%d holders listed of %d", len(peers), len(ps))
					}
					for _, p := range peers {
						if p.PeerID == leaver.id.String() {
							return true
						}
					}
					return false
				}
				if !listed() {
					t.Fatal("not listed before it left")
				}
				tc.leave(t, s, clock, ps, leaver, h)
				var since time.Duration
				for i, c := range tc.checks {
					clock.Advance(c.advance)
					since += c.advance
					if got := listed(); got != c.listed {
						t.Fatalf("check %d, %v after it left: listed %v, want %v", i, since, got, c.listed)
					}
					if c.settle {
						waitLoad(&s.holders, h)
					}
				}
				waitLoad(&s.holders, h)
			})
		})
	}
}

// removeHash: p removes h from its set (a delta), staying live.
func removeHash(t *testing.T, s *Server, clock *fakeClock, _ []signer, p signer, h string) {
	p.packages(t, s, ms(clock.Now())+5, false, nil, []string{h})
}

// TestHolderLoadShared: finds of one hash that miss the cache at once
// share one read of its candidates; one whose shared read failed reads
// for itself.
func TestHolderLoadShared(t *testing.T) {
	var c holderCache
	hs := make([]Holder, holderCacheMin)
	var reads atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	go c.candidates(t.Context(), "h", t0, func(context.Context) ([]Holder, error) {
		reads.Add(1)
		close(started)
		<-release
		return hs, nil
	})
	<-started
	// A find that would wait for the read under way returns with its
	// context's error, having read nothing.
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	for range 8 {
		if _, err := c.candidates(canceled, "h", t0, func(context.Context) ([]Holder, error) {
			reads.Add(1)
			return hs, nil
		}); !errors.Is(err, context.Canceled) {
			t.Fatalf("a find that waits: %v", err)
		}
	}
	// Finds that wait get the shared read's candidates.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, err := c.candidates(t.Context(), "h", t0, func(context.Context) ([]Holder, error) {
				reads.Add(1)
				return nil, errors.New("read again")
			})
			if err != nil || len(cs.hs) != len(hs) {
				t.Errorf("candidates: %v", err)
			}
		}()
	}
	close(release)
	wg.Wait()
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads for 17 finds at once", n)
	}
	// A failed shared read: the waiter reads again.
	fail := make(chan struct{})
	failing := make(chan struct{})
	go c.candidates(t.Context(), "g", t0, func(context.Context) ([]Holder, error) {
		close(failing)
		<-fail
		return nil, errors.New("canceled")
	})
	<-failing
	var second atomic.Int32
	done := make(chan error)
	go func() {
		_, err := c.candidates(t.Context(), "g", t0, func(context.Context) ([]Holder, error) { second.Add(1); return hs, nil })
		done <- err
	}()
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
	if _, _, ok := s.holders.get(h, clock.Now()); !ok {
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
		find := func(h string) []PeerInfo { t.Helper(); return serveFind(t, s, h) }
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
	big := make([]byte, descBudget/3-100) // three fit, with what else an entry counts
	c.mu.Lock()
	for k := range int64(3) {
		c.put(k, descEntry{json: big, peerID: fmt.Sprint(k)})
	}
	n, bytes := len(c.m), c.bytes
	c.put(3, descEntry{json: big, peerID: "3"})
	after := len(c.m)
	c.mu.Unlock()
	if n != 3 || bytes != 3*(descEntry{json: big, peerID: "0"}).size() || after != 1 {
		t.Fatalf("%d entries (%d bytes), then %d: want 3, then a new start", n, bytes, after)
	}
	c.forget("3")
	if c.len() != 0 || c.bytes != 0 {
		t.Fatalf("after forget: %d entries, %d bytes", c.len(), c.bytes)
	}
}
