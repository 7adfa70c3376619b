package tracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// TestGroupCommit: many small deltas at once, some of them refused (a
// replay, a peer over its quota, an unknown peer; and a peer's updates
// racing each other: one arriving after a later ts is a replay), are
// applied in groups:
// each accepted one is in the registry when it is acknowledged, with the
// count it reports, and a refused one leaves nothing behind, whatever
// group it shared.
func TestGroupCommit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		reg := b.open(t)
		ctx := context.Background()
		now := t0
		live := now.Add(-time.Hour)
		const peers = 40
		ids := make([]string, peers)
		for i := range ids {
			ids[i] = newSigner(t).id.String()
			if _, err := upsert(ctx, reg, ids[i], nil, 1, now, live); err != nil {
				t.Fatal(err)
			}
			if _, err := setPackages(ctx, reg, ids[i], 2, live, true, hashes(i*1000, 10), nil); err != nil {
				t.Fatal(err)
			}
		}
		type result struct {
			count int64
			err   error
		}
		results := make([]result, 4*peers)
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := i % peers
				u := PackagesUpdate{PeerID: ids[p], TS: int64(10 + i), LiveSince: live,
					Add: hashes(p*1000+100+i, 5), Remove: hashes(p*1000, 2)}
				switch {
				case i%peers == 7:
					u.TS = 2 // a replay of the full set's ts
				case i%peers == 8:
					u.MaxHashes = 12 // 10 - 2 + 5 is over
				case i%peers == 9:
					u.PeerID = newSigner(t).id.String()
				}
				c, err := reg.SetPackages(ctx, u)
				results[i] = result{c, err}
			}()
		}
		wg.Wait()
		for i, r := range results {
			p := i % peers
			var want error
			switch p {
			case 7:
				var re *ReplayError
				if !errors.As(r.err, &re) {
					t.Errorf("update %d: %v, want a replay", i, r.err)
				}
				continue
			case 8:
				var qe *QuotaError
				if !errors.As(r.err, &qe) {
					t.Errorf("update %d: %v, want a quota refusal", i, r.err)
				}
				continue
			case 9:
				want = ErrUnknownPeer
			default:
				// A peer's updates race each other: one that arrives
				// after a later ts was accepted is a replay.
				var re *ReplayError
				if errors.As(r.err, &re) {
					continue
				}
			}
			if !errors.Is(r.err, want) {
				t.Errorf("update %d: %v, want %v", i, r.err, want)
			}
		}
		// What each peer holds: its 10, less the 2 removed if any update
		// of it went through, plus 5 per accepted update.
		for p, id := range ids {
			accepted := 0
			for i := p; i < len(results); i += peers {
				if results[i].err == nil {
					accepted++
				}
			}
			want := int64(10)
			if accepted > 0 {
				want = 8 + 5*int64(accepted)
			}
			var got int64 = -1
			ps, err := allPeers(ctx, reg, live)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range ps {
				if x.PeerID == id {
					got = x.Packages
				}
			}
			if got != want {
				t.Errorf("peer %d: %d hashes, want %d", p, got, want)
			}
			for i := p; i < len(results); i += peers {
				h := hashes(p*1000+100+i, 5)[0]
				found, err := findAll(ctx, reg, h, live, 10)
				if err != nil {
					t.Fatal(err)
				}
				if (len(found) == 1) != (results[i].err == nil) {
					t.Errorf("update %d (%v): its first hash held by %d peers", i, results[i].err, len(found))
				}
				if results[i].err == nil && (results[i].count < 8 || results[i].count > want) {
					t.Errorf("update %d: count %d, want 8..%d", i, results[i].count, want)
				}
			}
		}
	})
}

// TestGroupCommitCanceled: an update whose request is gone before its
// group starts is not applied and says so; the others of its group are.
func TestGroupCommitCanceled(t *testing.T) {
	var g grouper
	started := make(chan struct{})
	release := make(chan struct{})
	var applied []string
	var mu sync.Mutex
	g.commit = func(ctx context.Context, jobs []*pkgJob) {
		if len(applied) == 0 && jobs[0].u.PeerID == "first" {
			close(started)
			<-release
		}
		for _, j := range jobs {
			if j.err = j.ctx.Err(); j.err == nil {
				mu.Lock()
				applied = append(applied, j.u.PeerID)
				mu.Unlock()
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, errs[0] = g.do(context.Background(), PackagesUpdate{PeerID: "first"}, nil, nil)
	}()
	<-started
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 1; i < 4; i++ {
		ctx := context.Background()
		if i == 2 {
			ctx = canceled
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = g.do(ctx, PackagesUpdate{PeerID: fmt.Sprint("p", i)}, nil, nil)
		}()
	}
	// Let the three queue behind the first group.
	for {
		g.mu.Lock()
		n := len(g.queue)
		g.mu.Unlock()
		if n == 3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || errs[3] != nil || !errors.Is(errs[2], context.Canceled) {
		t.Fatalf("errors %v", errs)
	}
	if len(applied) != 3 {
		t.Fatalf("applied %v", applied)
	}
	if g.busy || len(g.queue) != 0 {
		t.Fatalf("grouper left busy %v with %d queued", g.busy, len(g.queue))
	}
}

// TestRunCheckpoints: while RunCheckpoints runs, the writer leaves the
// WAL to it (its autocheckpoint raised to the valve) and the WAL is
// copied back within a round or two; once it stops, the writer
// checkpoints at SQLite's default again.
func TestRunCheckpoints(t *testing.T) {
	db := openTestDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- db.RunCheckpoints(ctx) }()
	autockpt := func() int {
		var n int
		if err := db.w.QueryRow(`PRAGMA wal_autocheckpoint`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	for autockpt() != checkpointValve {
		if time.Now().After(deadline) {
			t.Fatal("the writer still checkpoints itself")
		}
		time.Sleep(10 * time.Millisecond)
	}
	now := t0
	live := now.Add(-time.Hour)
	id := newSigner(t).id.String()
	if _, err := upsert(ctx, db, id, nil, 1, now, live); err != nil {
		t.Fatal(err)
	}
	// The database file grows only when a checkpoint copies the WAL
	// into it; the writer's own checkpoints wait for 64 MiB of WAL.
	var seq int
	var name, path string
	if err := db.w.QueryRow(`PRAGMA database_list`).Scan(&seq, &name, &path); err != nil {
		t.Fatal(err)
	}
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	if _, err := setPackages(ctx, db, id, 3, live, true, hashes(0, 20000), nil); err != nil {
		t.Fatal(err)
	}
	for size() < before+500_000 {
		if time.Now().After(deadline) {
			t.Fatalf("database file %d bytes, was %d: the WAL was not checkpointed", size(), before)
		}
		time.Sleep(checkpointEvery / 4)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := autockpt(); n != 1000 {
		t.Fatalf("writer's wal_autocheckpoint %d after RunCheckpoints ended", n)
	}
}

// TestDeltaOverlap: a delta's removals go before its additions: a hash in
// both is held afterwards, whether it was before or not, and the count
// says so.
func TestDeltaOverlap(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		reg := b.open(t)
		ctx := context.Background()
		live := t0.Add(-time.Hour)
		id := newSigner(t).id.String()
		if _, err := upsert(ctx, reg, id, nil, 1, t0, live); err != nil {
			t.Fatal(err)
		}
		hs := hashes(0, 4) // A B C D
		if _, err := setPackages(ctx, reg, id, 2, live, true, hs[:2], nil); err != nil {
			t.Fatal(err)
		}
		// Held {A, B}; remove {A, B, C}, add {B, C, D}: held {B, C, D}.
		n, err := setPackages(ctx, reg, id, 3, live, false, hs[1:], hs[:3])
		if err != nil || n != 3 {
			t.Fatalf("count %d, %v; want 3", n, err)
		}
		for i, want := range []bool{false, true, true, true} {
			got, err := findAll(ctx, reg, hs[i], live, 10)
			if err != nil {
				t.Fatal(err)
			}
			if (len(got) == 1) != want {
				t.Errorf("hash %d held: %v, want %v", i, len(got) == 1, want)
			}
		}
		// Over the quota: nothing of the delta stays.
		_, err = reg.SetPackages(ctx, PackagesUpdate{PeerID: id, TS: 4, LiveSince: live, Add: hashes(10, 3), Remove: hs[1:2], MaxHashes: 4})
		var qe *QuotaError
		if !errors.As(err, &qe) {
			t.Fatalf("%v, want a quota refusal", err)
		}
		if got, _ := findAll(ctx, reg, hs[1], live, 10); len(got) != 1 {
			t.Fatal("a refused delta's removal stayed")
		}
		if got, _ := findAll(ctx, reg, hashes(10, 1)[0], live, 10); len(got) != 0 {
			t.Fatal("a refused delta's addition stayed")
		}
	})
}
