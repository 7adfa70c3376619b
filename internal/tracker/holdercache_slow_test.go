package tracker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A read of a popular hash that takes longer than holderCacheMaxAge (a
// slow database): the finds arriving after that share one new read, not
// one read each, while the first is still under way.
func TestSlowReadIsShared(t *testing.T) {
	var c holderCache
	hs := make([]Holder, holderCacheMin)
	var reads, inFlight, peak atomic.Int32
	gate := make(chan struct{})
	slow := func(ctx context.Context) ([]Holder, error) {
		reads.Add(1)
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer inFlight.Add(-1)
		select {
		case <-gate:
			return hs, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	started := make(chan struct{})
	go func() {
		close(started)
		c.candidates(context.Background(), "h", t0, slow)
	}()
	<-started
	for reads.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	// 50 finds at t0+maxAge (the first read still under way).
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.candidates(context.Background(), "h", t0.Add(holderCacheMaxAge), slow)
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for reads.Load() < 51 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	t.Logf("reads %d, peak concurrent %d", reads.Load(), peak.Load())
	if reads.Load() > 2 {
		t.Errorf("%d reads (peak %d at once) for 51 finds of one hash while the database is slow", reads.Load(), peak.Load())
	}
}

// A background read that hits its holderCacheMaxAge timeout (a database
// slower than 4 s): the finds that joined it once the entry got too old
// share one retry when it fails, not one read each.
func TestFailedBackgroundReadIsRetriedShared(t *testing.T) {
	var c holderCache
	hs := make([]Holder, holderCacheMin)
	c.put("h", groupByNet(hs), t0)
	var reads atomic.Int32
	blockUntilCtx := func(ctx context.Context) ([]Holder, error) {
		reads.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	// t0+ttl: stale; starts the background read (which times out after 4 s).
	if _, err := c.candidates(context.Background(), "h", t0.Add(holderCacheTTL), blockUntilCtx); err != nil {
		t.Fatal(err)
	}
	for reads.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	var own atomic.Int32
	fast := func(ctx context.Context) ([]Holder, error) { own.Add(1); return hs, nil }
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.candidates(context.Background(), "h", t0.Add(holderCacheMaxAge+time.Second), fast); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	t.Logf("background reads %d; reads of their own by the 50 finds that waited: %d", reads.Load(), own.Load())
	if own.Load() > 1 {
		t.Errorf("%d reads after the background read timed out, for 50 finds of one hash", own.Load())
	}
}

var _ = errors.New
