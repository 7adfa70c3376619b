package summary_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/summary"
)

// scriptedSource hands each poll of the Follower to the test.
type scriptedSource struct{ reqs chan poll }

type poll struct {
	epoch, gen uint64
	have       bool
	reply      chan reply
}

type reply struct {
	u   *summary.Update
	err error
}

func (s *scriptedSource) Update(ctx context.Context, epoch, gen uint64, have bool, _ time.Duration) (*summary.Update, error) {
	p := poll{epoch, gen, have, make(chan reply, 1)}
	select {
	case s.reqs <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case a := <-p.reply:
		return a.u, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func randomHash(t testing.TB) string {
	b := make([]byte, summary.HashBytes)
	rand.Read(b)
	return nixbase32.EncodeToString(b)
}

func parse(t testing.TB, s string) summary.Hash {
	h, ok := summary.ParseHash(s)
	if !ok {
		t.Fatalf("hash %q", s)
	}
	return h
}

func filterOf(t testing.TB, hashes ...string) *summary.Filter {
	f := summary.NewFilter(summary.MinBits, summary.DefaultProbes)
	for _, h := range hashes {
		f.Add(parse(t, h))
	}
	return f
}

// TestFollowerStaleness: the follower answers "absent" only while a poll
// vouches for its filter, and only as far as the filter knows.
func TestFollowerStaleness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait, grace, maxLag = 25 * time.Second, 5 * time.Second, 30 * time.Second
		src := &scriptedSource{reqs: make(chan poll)}
		f := summary.NewFollower(src, summary.FollowerOptions{Wait: wait, Grace: grace, MaxLag: maxLag, RetryMin: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); f.Run(ctx) }()
		defer func() { cancel(); <-done }()

		held, added, nobody := randomHash(t), randomHash(t), randomHash(t)
		next := func(wantHave bool) poll {
			t.Helper()
			select {
			case p := <-src.reqs:
				if p.have != wantHave {
					t.Fatalf("poll with have=%v, want %v", p.have, wantHave)
				}
				return p
			case <-time.After(time.Minute):
				t.Fatal("the follower sent no poll")
			}
			panic("unreachable")
		}
		check := func(step string, want map[string]bool) {
			t.Helper()
			for h, absent := range want {
				if got := f.Absent(h); got != absent {
					t.Errorf("%s: Absent(%s) = %v, want %v", step, h[:6], got, absent)
				}
			}
		}

		p := next(false)
		check("before the first filter", map[string]bool{nobody: false, held: false})
		p.reply <- reply{u: &summary.Update{Epoch: 7, Gen: 3, Filter: filterOf(t, held)}}
		p = next(true)
		if p.epoch != 7 || p.gen != 3 {
			t.Fatalf("poll for epoch %d gen %d, want 7 and 3", p.epoch, p.gen)
		}
		check("fresh", map[string]bool{nobody: true, held: false, added: true})

		time.Sleep(wait + grace - time.Millisecond)
		check("poll pending just under wait+grace", map[string]bool{nobody: true})
		time.Sleep(time.Millisecond)
		check("poll pending for wait+grace", map[string]bool{nobody: false})
		if s := f.Stats(); s.Current || s.Stale != 1 || s.Absent != 3 {
			t.Errorf("stats %+v", s)
		}

		// The poll answers at last, with a hash added meanwhile: the next
		// poll vouches for the filter again.
		p.reply <- reply{u: &summary.Update{Epoch: 7, Gen: 4, Bits: summary.MinBits,
			Probes: summary.DefaultProbes, Add: []summary.Hash{parse(t, added)}}}
		p = next(true)
		if p.gen != 4 {
			t.Fatalf("poll for gen %d, want 4", p.gen)
		}
		check("after the delta", map[string]bool{nobody: true, added: false, held: false})

		// A publisher lagging its source by more than MaxLag.
		p.reply <- reply{u: &summary.Update{Epoch: 7, Gen: 4, Lag: maxLag + time.Second,
			Bits: summary.MinBits, Probes: summary.DefaultProbes}}
		p = next(true)
		check("lagging publisher", map[string]bool{nobody: false})
		p.reply <- reply{u: &summary.Update{Epoch: 7, Gen: 4, Lag: time.Second,
			Bits: summary.MinBits, Probes: summary.DefaultProbes}}
		p = next(true)
		check("publisher caught up", map[string]bool{nobody: true})

		// A failed poll: not current until a poll is pending again (after
		// RetryMin, an hour here).
		p.reply <- reply{err: errors.New("connection reset")}
		synctest.Wait()
		check("after a failed poll", map[string]bool{nobody: false})
		time.Sleep(time.Hour)
		p = next(true)
		check("polling again", map[string]bool{nobody: true})

		// A delta for another epoch: the filter is dropped and fetched whole.
		p.reply <- reply{u: &summary.Update{Epoch: 8, Gen: 1, Bits: summary.MinBits,
			Probes: summary.DefaultProbes}}
		synctest.Wait()
		check("after a delta that does not fit", map[string]bool{nobody: false})
		time.Sleep(time.Hour)
		p = next(false)
		p.reply <- reply{u: &summary.Update{Epoch: 8, Gen: 1, Filter: filterOf(t)}}
		next(true)
		check("new epoch", map[string]bool{nobody: true, held: true})
	})
}
