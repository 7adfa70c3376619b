package swarm

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
)

// Small NARs are fetched ahead of Nix. Once a narinfo whose NAR is at
// most Options.PrefetchMax bytes was handed to Nix (PrefetchNAR), the
// Finder fetches and verifies that NAR at once, so that when Nix asks for
// it (it gathers the narinfos it needs, then substitutes) it is answered
// from memory instead of waiting for a round trip to the holder. Lookups
// started ahead of Nix (references, closures) prefetch nothing until Nix
// asks for their narinfo: most of a closure is often already in Nix's
// store. A prefetched NAR is handed out
// once and then forgotten (a second request fetches it again); one Nix
// never asks for is forgotten after the lookup's HitTTL. All prefetched
// NARs together stay within Options.PrefetchBudget; beyond it a NAR is
// fetched when Nix asks, as without prefetching. At most prefetchSlots
// run at once, so that prefetches never take all of a holder's
// connections from the transfers Nix waits for; one Nix asks for while it
// still waits for a slot is not waited for: Nix's request fetches it.

// prefetched is one small NAR fetched ahead.
type prefetched struct {
	narHash string
	done    chan struct{} // closed when data is set, or the fetch failed or was given up

	mu      sync.Mutex
	running bool   // it has a slot: the fetch is under way
	data    []byte // the verified NAR; nil once taken, expired or failed
	release func() // gives data's bytes back to the budget; nil once given up
}

// prefetchSlots bounds the prefetches running at once, prefetchQueue
// those waiting for a slot (beyond it, Nix's request fetches the NAR).
const (
	prefetchSlots = 8
	prefetchQueue = 256
)

// take returns the verified NAR and forgets it, or nil.
func (p *prefetched) take() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	data := p.data
	p.drop()
	return data
}

// drop forgets the data and releases its budget. p.mu is held.
func (p *prefetched) drop() {
	p.data = nil
	if p.release != nil {
		p.release()
		p.release = nil
	}
}

// prefetchTimeout bounds a prefetch; a NAR that takes longer is fetched
// again when Nix asks.
const prefetchTimeout = 10 * time.Second

// PrefetchNAR starts fetching the NAR of x's accepted narinfo, if it is
// small enough and the budget allows. Call it when the narinfo is handed
// to Nix, which asks for the NAR next; it does nothing after the first
// call, or without an accepted narinfo.
func (x *Found) PrefetchNAR() {
	x.mu.Lock()
	ni := x.ni
	x.mu.Unlock()
	if ni != nil {
		x.prefetch(ni.NarHash.Format(nixhash.NixBase32, false), int64(ni.NarSize))
	}
}

// prefetch starts fetching x's accepted NAR, if it is small enough and
// the budget allows.
func (x *Found) prefetch(narHash string, size int64) {
	f := x.f
	if size > f.opt.PrefetchMax || f.prefetchWaiting.Load() >= prefetchQueue || !f.prefetchBudget.TryAcquire(size) {
		return
	}
	p := &prefetched{narHash: narHash, done: make(chan struct{}),
		release: sync.OnceFunc(func() { f.prefetchBudget.Release(size) })}
	x.mu.Lock()
	if x.ahead != nil {
		x.mu.Unlock()
		p.release()
		return
	}
	x.ahead = p
	x.mu.Unlock()
	go func() {
		defer close(p.done)
		f.prefetchWaiting.Add(1)
		f.prefetchSlots <- struct{}{}
		f.prefetchWaiting.Add(-1)
		defer func() { <-f.prefetchSlots }()
		p.mu.Lock()
		if p.release == nil { // taken over by Nix's request meanwhile
			p.mu.Unlock()
			return
		}
		p.running = true
		p.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
		defer cancel()
		data, err := x.fetchWhole(ctx, narHash, size)
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil || p.release == nil {
			p.drop()
			return
		}
		p.data = data
		time.AfterFunc(f.opt.HitTTL, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.drop()
		})
	}()
}

// fetchWhole fetches and verifies the whole NAR into memory.
func (x *Found) fetchWhole(ctx context.Context, narHash string, size int64) ([]byte, error) {
	nar, err := x.openNAR(ctx, narHash, size, 0)
	if err != nil {
		return nil, err
	}
	defer nar.Close()
	data := make([]byte, nar.Size)
	if _, err := io.ReadFull(nar, data); err != nil {
		return nil, err
	}
	return data, nil
}

// takePrefetched waits for a prefetch of narHash under way and returns
// its NAR from offset on, or nil when there is none to take.
func (x *Found) takePrefetched(ctx context.Context, narHash string, offset int64) (*store.NAR, error) {
	x.mu.Lock()
	p := x.ahead
	x.mu.Unlock()
	if p == nil || p.narHash != narHash {
		return nil, nil
	}
	p.mu.Lock()
	running := p.running
	if !running {
		p.drop() // still waiting for a slot: this request fetches it
	}
	p.mu.Unlock()
	if !running {
		return nil, nil
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	data := p.take()
	if data == nil || offset > int64(len(data)) {
		return nil, nil
	}
	return &store.NAR{Size: int64(len(data)), ReadCloser: io.NopCloser(bytes.NewReader(data[offset:]))}, nil
}
