package p2p

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{9, 256 * time.Second}, {10, BackoffMax}, {100, BackoffMax},
	} {
		if got := backoff(tc.n); got != tc.want {
			t.Errorf("backoff(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestReputation(t *testing.T) {
	a, b, c, d := peer.ID("a"), peer.ID("b"), peer.ID("c"), peer.ID("d")
	type step struct {
		fail    bool
		kind    Failure
		p       peer.ID
		latency time.Duration
		advance time.Duration
	}
	ok := func(p peer.ID, lat time.Duration) step { return step{p: p, latency: lat} }
	bad := func(p peer.ID, k Failure) step { return step{fail: true, p: p, kind: k} }
	wait := func(d time.Duration) step { return step{advance: d} }

	for _, tc := range []struct {
		name      string
		steps     []step
		rank      []peer.ID
		want      []peer.ID
		available map[peer.ID]bool
	}{
		{
			name: "unknown peers keep their order",
			rank: []peer.ID{c, a, b},
			want: []peer.ID{c, a, b},
		},
		{
			name:  "lower latency first",
			steps: []step{ok(a, 500*time.Millisecond), ok(b, 20*time.Millisecond)},
			rank:  []peer.ID{a, b},
			want:  []peer.ID{b, a},
		},
		{
			name:  "a measured fast peer beats an unknown one, an unknown beats a slow one",
			steps: []step{ok(a, 2*time.Second), ok(b, 10*time.Millisecond)},
			rank:  []peer.ID{a, c, b},
			want:  []peer.ID{b, c, a},
		},
		{
			name:      "a failed peer is backed off and ranked last",
			steps:     []step{ok(a, 10*time.Millisecond), bad(a, FailUnreachable), ok(b, time.Second)},
			rank:      []peer.ID{a, b, c},
			want:      []peer.ID{c, b, a},
			available: map[peer.ID]bool{a: false, b: true, c: true},
		},
		{
			name:      "backoff ends",
			steps:     []step{bad(a, FailUnreachable), wait(1100 * time.Millisecond)},
			rank:      []peer.ID{a},
			want:      []peer.ID{a},
			available: map[peer.ID]bool{a: true},
		},
		{
			name:      "backoff doubles with consecutive failures",
			steps:     []step{bad(a, FailUnreachable), bad(a, FailUnreachable), bad(a, FailUnreachable), wait(3 * time.Second)},
			rank:      []peer.ID{a},
			want:      []peer.ID{a},
			available: map[peer.ID]bool{a: false},
		},
		{
			name:      "a success clears the backoff",
			steps:     []step{bad(a, FailUnreachable), bad(a, FailUnreachable), ok(a, 10*time.Millisecond)},
			rank:      []peer.ID{a},
			want:      []peer.ID{a},
			available: map[peer.ID]bool{a: true},
		},
		{
			name:      "garbage costs more than a timeout",
			steps:     []step{bad(a, FailProtocol), bad(b, FailUnreachable), wait(2 * time.Second)},
			rank:      []peer.ID{a, b},
			want:      []peer.ID{b, a},
			available: map[peer.ID]bool{a: false, b: true},
		},
		{
			name:      "backed-off peers ordered by when the backoff ends",
			steps:     []step{bad(a, FailHashMismatch), bad(b, FailUnreachable)},
			rank:      []peer.ID{a, b, d},
			want:      []peer.ID{d, b, a},
			available: map[peer.ID]bool{a: false, b: false, d: true},
		},
		{
			name: "success rate counts",
			steps: []step{
				ok(a, 50*time.Millisecond), bad(a, FailRemote), ok(a, 50*time.Millisecond), bad(a, FailRemote),
				ok(a, 50*time.Millisecond), ok(b, 50*time.Millisecond), ok(b, 50*time.Millisecond),
				wait(time.Hour),
			},
			rank: []peer.ID{a, b},
			want: []peer.ID{b, a},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Time is the bubble's: it moves only by the steps' waits.
			synctest.Test(t, func(t *testing.T) {
				r := NewReputation()
				for _, s := range tc.steps {
					switch {
					case s.advance > 0:
						time.Sleep(s.advance)
					case s.fail:
						r.Fail(s.p, s.kind)
					default:
						r.Success(s.p, s.latency)
					}
				}
				in := slices.Clone(tc.rank)
				if got := r.Rank(tc.rank); !slices.Equal(got, tc.want) {
					t.Errorf("Rank(%v) = %v, want %v", tc.rank, got, tc.want)
				}
				if !slices.Equal(in, tc.rank) {
					t.Error("Rank modified its input")
				}
				for p, want := range tc.available {
					if got := r.Available(p); got != want {
						t.Errorf("Available(%s) = %v, want %v", p, got, want)
					}
				}
			})
		})
	}
}

func TestReputationLatencyEWMA(t *testing.T) {
	r := NewReputation()
	p := peer.ID("p")
	r.Success(p, 100*time.Millisecond)
	r.Success(p, 200*time.Millisecond)
	got, known := r.Get(p)
	if !known || got.LatencyMs != 130 || got.Successes != 2 {
		t.Errorf("after 100 ms and 200 ms: %+v", got)
	}
	r.Fail(p, FailHashMismatch)
	got, _ = r.Get(p)
	if got.Failures != FailHashMismatch.weight() || got.LastFailure != "hash mismatch" || got.BackoffEnds.IsZero() {
		t.Errorf("after a hash mismatch: %+v", got)
	}
	if _, known := r.Get("other"); known {
		t.Error("unknown peer known")
	}
}

func TestReputationBounded(t *testing.T) {
	r := NewReputation()
	for i := range maxReputationPeers + 10 {
		r.Success(peer.ID(rune(i)), time.Millisecond)
	}
	if n := len(r.Known()); n > maxReputationPeers {
		t.Errorf("%d peers kept", n)
	}
}
