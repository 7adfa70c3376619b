package swarm

import (
	"slices"
	"strconv"
	"testing"
	"testing/synctest"
	"time"
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
	a, b, c, d := "a", "b", "c", "d"
	ok := func(p string, lat time.Duration) step { return step{p: p, latency: lat} }
	bad := func(p string, k Failure) step { return step{fail: true, p: p, kind: k} }
	wait := func(d time.Duration) step { return step{advance: d} }

	for _, tc := range []struct {
		name      string
		steps     []step
		rank      []string
		want      []string
		available map[string]bool
	}{
		{
			name: "unknown peers keep their order",
			rank: []string{c, a, b},
			want: []string{c, a, b},
		},
		{
			name:  "lower latency first",
			steps: []step{ok(a, 500*time.Millisecond), ok(b, 20*time.Millisecond)},
			rank:  []string{a, b},
			want:  []string{b, a},
		},
		{
			name:  "a measured fast peer beats an unknown one, an unknown beats a slow one",
			steps: []step{ok(a, 2*time.Second), ok(b, 10*time.Millisecond)},
			rank:  []string{a, c, b},
			want:  []string{b, c, a},
		},
		{
			name:      "a failed peer is backed off and ranked last",
			steps:     []step{ok(a, 10*time.Millisecond), bad(a, FailUnreachable), ok(b, time.Second)},
			rank:      []string{a, b, c},
			want:      []string{c, b, a},
			available: map[string]bool{a: false, b: true, c: true},
		},
		{
			name:      "backoff ends",
			steps:     []step{bad(a, FailUnreachable), wait(1100 * time.Millisecond)},
			rank:      []string{a},
			want:      []string{a},
			available: map[string]bool{a: true},
		},
		{
			name:      "backoff doubles with consecutive failures",
			steps:     []step{bad(a, FailUnreachable), bad(a, FailUnreachable), bad(a, FailUnreachable), wait(3 * time.Second)},
			rank:      []string{a},
			want:      []string{a},
			available: map[string]bool{a: false},
		},
		{
			name:      "a success clears the backoff",
			steps:     []step{bad(a, FailUnreachable), bad(a, FailUnreachable), ok(a, 10*time.Millisecond)},
			rank:      []string{a},
			want:      []string{a},
			available: map[string]bool{a: true},
		},
		{
			name:      "a stalled NAR is not excused by a quick narinfo answer",
			steps:     []step{bad(a, FailSlow), ok(a, 10*time.Millisecond)},
			rank:      []string{a},
			want:      []string{a},
			available: map[string]bool{a: false},
		},
		{
			name:      "a holder that delivers NARs ranks above one that stalls them",
			steps:     []step{ok(a, 10*time.Millisecond), ok(b, 10*time.Millisecond), bad(a, FailSlow), ok(a, 10*time.Millisecond), wait(time.Hour)},
			rank:      []string{a, b},
			want:      []string{b, a},
			available: map[string]bool{a: true, b: true},
		},
		{
			name:      "garbage costs more than a timeout",
			steps:     []step{bad(a, FailProtocol), bad(b, FailUnreachable), wait(2 * time.Second)},
			rank:      []string{a, b},
			want:      []string{b, a},
			available: map[string]bool{a: false, b: true},
		},
		{
			name:      "backed-off peers ordered by when the backoff ends",
			steps:     []step{bad(a, FailLie), bad(b, FailUnreachable)},
			rank:      []string{a, b, d},
			want:      []string{d, b, a},
			available: map[string]bool{a: false, b: false, d: true},
		},
		{
			name: "success rate counts",
			steps: []step{
				ok(a, 50*time.Millisecond), bad(a, FailRemote), ok(a, 50*time.Millisecond), bad(a, FailRemote),
				ok(a, 50*time.Millisecond), ok(b, 50*time.Millisecond), ok(b, 50*time.Millisecond),
				wait(time.Hour),
			},
			rank: []string{a, b},
			want: []string{b, a},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { checkReputation(t, tc.steps, tc.rank, tc.want, tc.available) })
		})
	}
}

type step struct {
	fail    bool
	kind    Failure
	p       string
	latency time.Duration
	advance time.Duration
}

func checkReputation(t *testing.T, steps []step, rank, want []string, available map[string]bool) {
	r := NewReputation()
	for _, s := range steps {
		switch {
		case s.advance > 0:
			time.Sleep(s.advance)
		case s.fail:
			r.Fail(s.p, s.kind)
		default:
			r.Success(s.p, s.latency)
		}
	}
	in := slices.Clone(rank)
	if got := r.Rank(rank); !slices.Equal(got, want) {
		t.Errorf("Rank(%v) = %v, want %v", rank, got, want)
	}
	if !slices.Equal(in, rank) {
		t.Error("Rank modified its input")
	}
	for p, want := range available {
		if got := r.Available(p); got != want {
			t.Errorf("Available(%s) = %v, want %v", p, got, want)
		}
	}
}

func TestReputationLatencyEWMA(t *testing.T) {
	r := NewReputation()
	p := "p"
	r.Success(p, 100*time.Millisecond)
	r.Success(p, 200*time.Millisecond)
	got, known := r.Get(p)
	if !known || got.LatencyMs != 130 || got.Successes != 2 {
		t.Errorf("after 100 ms and 200 ms: %+v", got)
	}
	r.Fail(p, FailLie)
	got, _ = r.Get(p)
	if got.Failures != FailLie.weight() || got.LastFailure != "lied" || got.Lies != 1 || got.BackoffEnds.IsZero() {
		t.Errorf("after a hash mismatch: %+v", got)
	}
	if _, known := r.Get("other"); known {
		t.Error("unknown peer known")
	}
}

func TestReputationBounded(t *testing.T) {
	r := NewReputation()
	for i := range maxReputationPeers + 10 {
		r.Success(strconv.Itoa(i), time.Millisecond)
	}
	if n := len(r.Known()); n > maxReputationPeers {
		t.Errorf("%d peers kept", n)
	}
}
