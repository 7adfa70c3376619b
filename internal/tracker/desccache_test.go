package tracker

import (
	"cmp"
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

type pausingReg struct {
	Registry
	armed  atomic.Bool
	paused chan struct{}
	resume chan struct{}
}

func (r *pausingReg) Describe(ctx context.Context, keys []int64, liveSince time.Time) ([]Described, error) {
	d, err := r.Registry.Describe(ctx, keys, liveSince)
	if r.armed.CompareAndSwap(true, false) {
		close(r.paused)
		<-r.resume
	}
	return d, err
}

// A holder of a popular hash deregisters through this tracker while a
// find is describing it: once the DELETE returned, no find lists it (the
// description read before the delete is not kept).
func TestDeregisteredNotListedAfterDelete(t *testing.T) {
	db := sqliteBackend.open(t)
	reg := &pausingReg{Registry: db, paused: make(chan struct{}), resume: make(chan struct{})}
	clock := &fakeClock{t: t0}
	s := NewServer(reg, ServerOptions{TTL: time.Hour, Now: clock.Now, Log: quietLog(), Limits: NoLimits()})
	h := hashN(13)
	ps := popularHash(t, s, clock, h, holderCacheMin+10)
	p := ps[0]
	listed := func() bool {
		for _, x := range serveFind(t, s, h) {
			if x.PeerID == p.id.String() {
				return true
			}
		}
		return false
	}
	if !listed() { // candidates and descriptions cached
		t.Fatal("not listed")
	}
	p.announceFrom(t, s, ms(clock.Now())+10, "10.0.0.7:1") // forgets its description
	reg.armed.Store(true)
	done := make(chan bool)
	go func() { done <- listed() }() // describes p afresh: paused after the registry answered
	<-reg.paused
	r := p.request(t, "DELETE", "/v1/peers/"+p.id.String(), mustJSON(t, map[string]any{"peer_id": p.id.String(), "ts": ms(clock.Now()) + 20}))
	if w := serve(s, r); w.Code != 200 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	close(reg.resume)
	<-done
	// The deregistration is done; the docs say it is not listed from then on.
	if listed() {
		t.Error("a holder that deregistered through this tracker is listed after its DELETE returned")
	}
	clock.Advance(holderCacheTTL - time.Millisecond)
	if listed() {
		t.Errorf("still listed %v after", holderCacheTTL-time.Millisecond)
	}
}

// countingReg counts the standings a registry is asked for.
type countingReg struct {
	Registry
	asked atomic.Int64
}

func (r *countingReg) Standings(ctx context.Context, keys []int64) ([]Standing, error) {
	r.asked.Add(int64(len(keys)))
	return r.Registry.Standings(ctx, keys)
}

// TestHoldersStandingsFromMemory: a find whose candidates are not cached
// reads the hash's keys and asks the registry only for the standings it
// does not know: none on the second read of the same holders; a peer
// that announced (here from another network) again at once, with its
// new network; an expired peer's row is not listed, and it is asked
// about at every read; a peer whose recorded last_seen went past the TTL
// is asked about again, and listed if it heartbeat since.
func TestHoldersStandingsFromMemory(t *testing.T) {
	const ttl = 20 * time.Second // shorter than descTTL
	reg := &countingReg{Registry: sqliteBackend.open(t)}
	clock := &fakeClock{t: t0}
	s := NewServer(reg, ServerOptions{TTL: ttl, Now: clock.Now, Log: quietLog(), Limits: NoLimits()})
	h := hashN(21)
	ps := make([]signer, 5)
	for i := range ps {
		ps[i] = newSigner(t)
		from := fmt.Sprintf("10.0.%d.7:1", i)
		ps[i].announceFrom(t, s, ms(clock.Now()), from)
		ps[i].packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
	}
	read := func(wantAsked int64) []Holder {
		t.Helper()
		reg.asked.Store(0)
		keys, err := reg.HolderKeys(t.Context(), h, maxHolderScan)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := s.descs.holders(t.Context(), reg, keys, s.liveSince(clock.Now()), clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if got := reg.asked.Load(); got != wantAsked {
			t.Fatalf("asked the registry for %d standings, want %d", got, wantAsked)
		}
		if !slices.IsSortedFunc(hs, func(a, b Holder) int { return cmp.Compare(a.Key, b.Key) }) {
			t.Fatalf("holders out of key order: %+v", hs)
		}
		return hs
	}
	nets := func(hs []Holder) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.Net)
		}
		return out
	}
	all := read(5)
	if len(all) != 5 || all[0].Net != "10.0.0.0/24" || all[0].Since != ms(t0) {
		t.Fatalf("first read: %+v", all)
	}
	if again := read(0); !reflect.DeepEqual(again, all) {
		t.Fatalf("from memory: %+v, want %+v", again, all)
	}
	// ps[2] announces from another network: asked again, its new network.
	clock.Advance(time.Second)
	ps[2].announceFrom(t, s, ms(clock.Now()), "10.9.9.7:1")
	if got := nets(read(1)); got[2] != "10.9.9.0/24" {
		t.Fatalf("after a move: nets %v", got)
	}
	// ps[1..3] heartbeat through this tracker (forgotten, asked again),
	// ps[4] through another on the same database (not forgotten: asked
	// again once the last_seen recorded for it is past the TTL); ps[0]
	// expires (its row stays until the sweep).
	clock.Advance(ttl - 2*time.Second)
	for i := 1; i <= 3; i++ {
		from := fmt.Sprintf("10.0.%d.7:1", i)
		if i == 2 {
			from = "10.9.9.7:1"
		}
		ps[i].announceFrom(t, s, ms(clock.Now()), from)
	}
	if _, err := reg.UpsertPeer(t.Context(), Announce{PeerID: ps[4].id.String(), Addrs: []string{"/ip4/198.51.100.9/tcp/1"},
		Net: "10.0.4.0/24", TS: ms(clock.Now()), Now: clock.Now(), LiveSince: s.liveSince(clock.Now())}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(1500 * time.Millisecond)
	if hs := read(5); len(hs) != 4 || hs[0].Key == all[0].Key || hs[3].Key != all[4].Key {
		t.Fatalf("after ps[0] expired: %+v", hs)
	}
	// The expired peer is asked about again at every read.
	read(1)
}

// TestHolderBackThroughAnotherTracker: a peer that expired, then
// registered again through another tracker on the same database, is
// listed by this one at once for a hash it alone holds (this tracker's
// standing of it, read while it was expired, is not believed).
func TestHolderBackThroughAnotherTracker(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		const ttl = 20 * time.Second
		reg := be.open(t)
		clock := &fakeClock{t: t0}
		t1 := NewServer(reg, ServerOptions{TTL: ttl, Now: clock.Now, Log: quietLog(), Limits: NoLimits()})
		t2 := NewServer(reg, ServerOptions{TTL: ttl, Now: clock.Now, Log: quietLog(), Limits: NoLimits()})
		x, y := hashN(31), hashN(32)
		p := newSigner(t)
		const from = "10.0.1.7:1"
		p.announceFrom(t, t1, ms(clock.Now()), from)
		p.packagesFrom(t, t1, ms(clock.Now())+1, from, []string{y})
		clock.Advance(ttl + time.Second) // p expired; its hash y stays until the sweep
		if got := serveFind(t, t1, y); len(got) != 0 {
			t.Fatalf("expired p listed: %+v", got)
		}
		clock.Advance(500 * time.Millisecond)
		p.announceFrom(t, t2, ms(clock.Now()), from) // registers again, through t2
		p.packagesFrom(t, t2, ms(clock.Now())+1, from, []string{x})
		clock.Advance(500 * time.Millisecond)
		for i, s := range []*Server{t1, t2} {
			if got := serveFind(t, s, x); len(got) != 1 {
				t.Errorf("tracker %d: the only holder of x, registered through t2 1 s ago, listed %d times, want 1", i+1, len(got))
			}
		}
	})
}
