package tracker

import (
	"context"
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
