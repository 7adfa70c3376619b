package tracker

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/config"
)

// TestPostgresMigrations: trackers starting together on a new database
// migrate it once; a newer schema is refused.
func TestPostgresMigrations(t *testing.T) {
	url := newTestSchema(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	dbs := make([]*Postgres, 8)
	errs := make([]error, len(dbs))
	for i := range dbs {
		wg.Go(func() { dbs[i], errs[i] = OpenPostgres(ctx, url) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		defer dbs[i].Close()
	}
	var version, rows int
	if err := dbs[0].w.QueryRow(ctx, `SELECT max(version), count(*) FROM schema_version`).Scan(&version, &rows); err != nil {
		t.Fatal(err)
	}
	if version != len(pgMigrations) || rows != 1 {
		t.Fatalf("schema_version: version %d, %d rows", version, rows)
	}
	if _, err := dbs[0].w.Exec(ctx, `UPDATE schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	if db, err := OpenPostgres(ctx, url); err == nil || !strings.Contains(err.Error(), "newer") {
		if err == nil {
			db.Close()
		}
		t.Fatalf("opening a newer schema: %v", err)
	}
}

// twoTrackers serves two tracker APIs over two registries (two connection
// pools) on one PostgreSQL database, as two tracker processes would.
func twoTrackers(t *testing.T, ttl time.Duration) (a, b *httptest.Server, regA, regB *Postgres) {
	url := newTestSchema(t)
	regA, regB = openTestPostgres(t, url), openTestPostgres(t, url)
	a = httptest.NewServer(NewServer(regA, ServerOptions{TTL: ttl, Log: quietLog()}))
	b = httptest.NewServer(NewServer(regB, ServerOptions{TTL: ttl, Log: quietLog()}))
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	return a, b, regA, regB
}

func clientFindIDs(t *testing.T, c *Client, hash string) []string {
	t.Helper()
	peers, err := c.Find(context.Background(), hash)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, p := range peers {
		ids = append(ids, p.PeerID)
	}
	slices.Sort(ids)
	return ids
}

// TestTwoTrackersOnePostgres: a peer announced through one tracker is
// found through the other; its deltas, deregistration and expiry are seen
// by both.
func TestTwoTrackersOnePostgres(t *testing.T) {
	const ttl = time.Second
	a, b, _, _ := twoTrackers(t, ttl)
	ctx := context.Background()
	p1, p2 := newSigner(t), newSigner(t)
	viaA, viaB := NewClient(a.URL, p1.key), NewClient(b.URL, p1.key) // p1 talks to both
	other := NewClient(b.URL, p2.key)
	readA, readB := NewClient(a.URL, nil), NewClient(b.URL, nil)
	both := func(hash string, want ...string) {
		t.Helper()
		slices.Sort(want)
		if want == nil {
			want = []string{}
		}
		for name, c := range map[string]*Client{"a": readA, "b": readB} {
			if got := clientFindIDs(t, c, hash); !slices.Equal(got, want) {
				t.Fatalf("find %s through %s: %v, want %v", hash[:8], name, got, want)
			}
		}
	}

	res, err := viaA.Announce(ctx, []ma.Multiaddr{ma.StringCast("/ip4/198.51.100.7/tcp/12306")})
	if err != nil || !res.Registered {
		t.Fatalf("announce through a: %+v %v", res, err)
	}
	if err := viaA.Packages(ctx, true, hashes(0, 100), nil); err != nil {
		t.Fatal(err)
	}
	both(hashN(5), p1.id.String())
	// A heartbeat through b is a heartbeat, not a registration.
	if res, err := viaB.Announce(ctx, nil); err != nil || res.Registered {
		t.Fatalf("heartbeat through b: %+v %v", res, err)
	}
	// A delta through b, seen through a.
	if err := viaB.Packages(ctx, false, []string{hashN(1000)}, []string{hashN(5)}); err != nil {
		t.Fatal(err)
	}
	both(hashN(5))
	both(hashN(1000), p1.id.String())
	if _, err := other.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := other.Packages(ctx, true, []string{hashN(1000)}, nil); err != nil {
		t.Fatal(err)
	}
	both(hashN(1000), p1.id.String(), p2.id.String())
	for _, c := range []*Client{readA, readB} {
		peers, err := c.Peers(ctx)
		if err != nil || len(peers) != 2 || peers[0].Packages+peers[1].Packages != 101 {
			t.Fatalf("peers: %+v %v", peers, err)
		}
	}

	// Deregistered through b: gone through a at once.
	if err := viaB.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	both(hashN(1000), p2.id.String())
	both(hashN(6))

	// p2 falls silent: expired for both.
	deadline := time.Now().Add(ttl + 2*time.Second)
	for len(clientFindIDs(t, readA, hashN(1000))) > 0 || len(clientFindIDs(t, readB, hashN(1000))) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("expired peer still found")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []*Client{readA, readB} {
		if peers, err := c.Peers(ctx); err != nil || len(peers) != 0 {
			t.Fatalf("peers after expiry: %+v %v", peers, err)
		}
	}
	// Packages through a for the expired peer: unknown, announce again.
	if err := NewClient(a.URL, p2.key).Packages(ctx, false, []string{hashN(1)}, nil); err == nil || !strings.Contains(err.Error(), "announce") {
		t.Fatalf("packages of an expired peer: %v", err)
	}
}

// TestTwoTrackersReplay: the same signed request sent to both trackers at
// once is accepted exactly once.
func TestTwoTrackersReplay(t *testing.T) {
	a, b, _, _ := twoTrackers(t, time.Minute)
	me := newSigner(t)
	me.announce(t, a.Config.Handler, time.Now().UnixMilli()-1000)
	for i := range 20 {
		body := mustJSON(t, map[string]any{"peer_id": me.id.String(), "ts": time.Now().UnixMilli() + int64(i), "full": false, "add": []string{hashN(i)}})
		codes := make([]int, 2)
		var wg sync.WaitGroup
		for j, srv := range []*httptest.Server{a, b} {
			wg.Go(func() { codes[j] = serve(srv.Config.Handler, me.request(t, "POST", "/v1/packages", body)).Code })
		}
		wg.Wait()
		slices.Sort(codes)
		if !slices.Equal(codes, []int{200, 409}) {
			t.Fatalf("request %d: %v, want one 200 and one 409", i, codes)
		}
	}
}

// TestConcurrentSweeps: several trackers sweeping one database at once
// split the work: every expired peer and hash goes, none twice, no error.
func TestConcurrentSweeps(t *testing.T) {
	url := newTestSchema(t)
	regs := []*Postgres{openTestPostgres(t, url), openTestPostgres(t, url), openTestPostgres(t, url), openTestPostgres(t, url)}
	ctx := context.Background()
	now := time.Now()
	past := now.Add(-time.Hour)
	const peers = 16
	for i := range peers {
		id := newSigner(t).id.String()
		if _, err := upsert(ctx, regs[i%4], id, nil, past.UnixMilli(), past, past.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := setPackages(ctx, regs[i%4], id, past.UnixMilli()+1, past.Add(-time.Minute), true, hashes(i*sweepChunk, sweepChunk+i), nil); err != nil {
			t.Fatal(err)
		}
	}
	live := newSigner(t).id.String()
	if _, err := upsert(ctx, regs[0], live, nil, now.UnixMilli(), now, now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := setPackages(ctx, regs[0], live, now.UnixMilli()+1, now.Add(-time.Minute), true, hashes(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for _, r := range regs {
		wg.Go(func() {
			n, err := r.Sweep(ctx, now.Add(-time.Minute), now.Add(-MaxClockSkew).UnixMilli())
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	// Peers skipped because another sweeper held them go in a later sweep.
	n, err := regs[0].Sweep(ctx, now.Add(-time.Minute), now.Add(-MaxClockSkew).UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	if total+n != peers {
		t.Fatalf("swept %d+%d peers, want %d", total, n, peers)
	}
	var rows, peerRows int
	regs[0].w.QueryRow(ctx, `SELECT (SELECT count(*) FROM packages), (SELECT count(*) FROM peers)`).Scan(&rows, &peerRows)
	if rows != 10 || peerRows != 1 {
		t.Fatalf("left %d hash rows and %d peers, want 10 and 1", rows, peerRows)
	}
	if got, _ := findAll(ctx, regs[1], hashN(3), now.Add(-time.Minute), 10); len(got) != 1 || got[0].PeerID != live || got[0].Packages != 10 {
		t.Fatalf("live peer: %+v", got)
	}
}

// TestRunPostgres: `peerix tracker --db postgres://...` twice on one
// database (two tracker processes), the second started while the first
// serves.
func TestRunPostgres(t *testing.T) {
	url := newTestSchema(t)
	var trackers []*Tracker
	for range 2 {
		tr, err := New(&config.Tracker{Listen: "127.0.0.1:0", DB: url, PeerTTL: time.Minute}, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
		trackers = append(trackers, tr)
	}
	ctx := context.Background()
	me := newSigner(t)
	c := NewClient("http://"+trackers[0].Addr().String(), me.key)
	if _, err := c.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Packages(ctx, true, hashes(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	other := NewClient("http://"+trackers[1].Addr().String(), nil)
	if got := clientFindIDs(t, other, hashN(3)); !slices.Equal(got, []string{me.id.String()}) {
		t.Fatalf("find through the second tracker: %v", got)
	}
	if trackers[0].Relay().ID() == trackers[1].Relay().ID() {
		t.Fatal("two trackers share a relay identity")
	}
}

// TestPostgresEachHash: the index's scan yields every stored hash.
func TestPostgresEachHash(t *testing.T) {
	db := openTestPostgres(t, newTestSchema(t))
	ctx := context.Background()
	now := time.Now()
	want := map[string]bool{}
	for i := range 3 {
		id := newSigner(t).id.String()
		if _, err := upsert(ctx, db, id, nil, 1, now, now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		set := hashes(i*100, 150) // overlapping sets
		if _, err := setPackages(ctx, db, id, 2, now.Add(-time.Minute), true, set, nil); err != nil {
			t.Fatal(err)
		}
		for _, h := range set {
			want[h] = true
		}
	}
	got := map[string]bool{}
	rows := 0
	err := db.EachHash(ctx, func(b []byte) error {
		got[nixbase32.EncodeToString(b)] = true
		rows++
		return nil
	})
	if err != nil || rows != 450 || len(got) != len(want) {
		t.Fatalf("%d rows, %d distinct hashes (want 450, %d): %v", rows, len(got), len(want), err)
	}
	for h := range want {
		if !got[h] {
			t.Fatalf("hash %s missing", h)
		}
	}
}
