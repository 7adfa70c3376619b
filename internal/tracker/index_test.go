package tracker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/summary"
)

// newIndexServer is a Server over a fresh SQLite database. Tests that move
// time make it inside a synctest bubble and sleep.
func newIndexServer(t testing.TB) *Server {
	t.Helper()
	// The TTL outlives the tests' sleeps past indexMinEpoch.
	return NewServer(openTestDB(t), ServerOptions{TTL: time.Hour, Log: quietLog()})
}

// newIndexTracker serves a real-clock Server over a fresh SQLite database.
func newIndexTracker(t testing.TB) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewServer(openTestDB(t), ServerOptions{TTL: time.Minute, Log: quietLog()}))
	t.Cleanup(srv.Close)
	return srv
}

// getIndex asks the server for its index and decodes the answer.
func getIndex(t testing.TB, h http.Handler, query string) *summary.Update {
	t.Helper()
	w := serve(h, request("GET", "/v1/index"+query, nil, ""))
	if w.Code != 200 {
		t.Fatalf("GET /v1/index%s: %d %s", query, w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != summary.ContentType {
		t.Errorf("Content-Type %q", ct)
	}
	u, err := summary.ReadUpdate(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func since(u *summary.Update, wait string) string {
	q := fmt.Sprintf("?epoch=%016x&gen=%d", u.Epoch, u.Gen)
	if wait != "" {
		q += "&wait=" + wait
	}
	return q
}

func hasAll(f *summary.Filter, hs []string) error {
	for _, s := range hs {
		h, _ := summary.ParseHash(s)
		if !f.Has(h) {
			return fmt.Errorf("filter lacks %s", s)
		}
	}
	return nil
}

// apply adds a delta to f, as a peer does.
func apply(t testing.TB, f *summary.Filter, u *summary.Update) {
	t.Helper()
	if u.Full() || u.Bits != f.Bits() || u.Probes != f.Probes() {
		t.Fatalf("want a delta for the filter held, got %+v", u)
	}
	for _, h := range u.Add {
		f.Add(h)
	}
}

func TestIndexFullAndDeltas(t *testing.T) {
	// A short history, so that one large delta below drops the older ones.
	old := indexHistory
	indexHistory = 60
	t.Cleanup(func() { indexHistory = old })
	synctest.Test(t, testIndexFullAndDeltas)
}

func testIndexFullAndDeltas(t *testing.T) {
	s := newIndexServer(t)
	a, b := newSigner(t), newSigner(t)
	now := ms(time.Now())
	a.announce(t, s, now)
	a.packages(t, s, now+1, true, hashes(0, 300), nil)

	full := getIndex(t, s, "")
	if !full.Full() || full.Lag != 0 || full.Entries != 300 || full.Bits != summary.MinBits {
		t.Fatalf("first answer %+v: want the whole filter of 300 entries, no lag", full)
	}
	f := full.Filter
	if err := hasAll(f, hashes(0, 300)); err != nil {
		t.Fatal(err)
	}
	absent := 0
	for _, h := range hashes(1000, 1000) {
		if hh, _ := summary.ParseHash(h); !f.Has(hh) {
			absent++
		}
	}
	if absent < 990 {
		t.Errorf("only %d of 1000 hashes nobody holds are absent from the filter", absent)
	}

	// Nothing new: an empty delta of the same generation.
	u := getIndex(t, s, since(full, ""))
	if u.Full() || len(u.Add) != 0 || u.Gen != full.Gen || u.Epoch != full.Epoch {
		t.Fatalf("no change: got %+v", u)
	}

	// Another peer adds hashes, some held already: the delta carries
	// only the new ones.
	b.announce(t, s, now+2)
	b.packages(t, s, now+3, true, hashes(250, 100), nil)
	u = getIndex(t, s, since(full, ""))
	if u.Full() || u.Gen != full.Gen+1 || len(u.Add) != 50 {
		t.Fatalf("after b's 50 new hashes: got gen %d, %d hashes (full %v)", u.Gen, len(u.Add), u.Full())
	}
	apply(t, f, u)
	a.packages(t, s, now+4, false, hashes(400, 2), nil)
	u2 := getIndex(t, s, since(u, ""))
	if len(u2.Add) != 2 || u2.Gen != u.Gen+1 {
		t.Fatalf("second delta: %+v", u2)
	}
	apply(t, f, u2)
	if err := hasAll(f, append(hashes(0, 350), hashes(400, 2)...)); err != nil {
		t.Fatal(err)
	}
	// From further back, both deltas at once.
	if u3 := getIndex(t, s, since(full, "")); len(u3.Add) != 52 || u3.Gen != u2.Gen {
		t.Fatalf("from gen %d: %d hashes, gen %d", full.Gen, len(u3.Add), u3.Gen)
	}

	// Removing keeps the hash in the filter (it only over-approximates).
	a.packages(t, s, now+5, false, nil, hashes(0, 10))
	if u4 := getIndex(t, s, since(u2, "")); u4.Gen != u2.Gen || len(u4.Add) != 0 {
		t.Fatalf("a removal made a delta: %+v", u4)
	}

	// Another epoch, a generation never made, or one whose hashes were
	// dropped from the history: the whole filter.
	a.packages(t, s, now+6, false, hashes(500, 70), nil)
	for name, q := range map[string]string{
		"other epoch":   fmt.Sprintf("?epoch=%016x&gen=%d", full.Epoch+1, u2.Gen),
		"future gen":    fmt.Sprintf("?epoch=%016x&gen=%d", full.Epoch, u2.Gen+10),
		"history gone":  since(u2, ""),
		"no epoch held": "",
	} {
		if u := getIndex(t, s, q); !u.Full() || u.Gen != u2.Gen+1 || hasAll(u.Filter, hashes(500, 70)) != nil {
			t.Errorf("%s: got %+v, want the whole filter at gen %d", name, u, u2.Gen+1)
		}
	}
}

func TestIndexBadRequests(t *testing.T) {
	t.Parallel()
	s := newIndexServer(t)
	for _, q := range []string{
		"?epoch=12&gen=1",
		"?epoch=zzzzzzzzzzzzzzzz&gen=1",
		"?epoch=0000000000000001",
		"?epoch=0000000000000001&gen=-1",
		"?gen=1",
		"?wait=-5",
		"?wait=soon",
	} {
		if w := serve(s, request("GET", "/v1/index"+q, nil, "")); w.Code != 400 || !containsCode(w.Body.String(), CodeBadRequest) {
			t.Errorf("%s: %d %s", q, w.Code, w.Body)
		}
	}
	if w := serve(s, request("POST", "/v1/index", nil, "")); w.Code != 405 {
		t.Errorf("POST: %d", w.Code)
	}
}

func containsCode(body, code string) bool {
	return strings.Contains(body, `"code":"`+code+`"`)
}

// A registry without HashSource: no index, and the server says so.
func TestIndexUnavailable(t *testing.T) {
	t.Parallel()
	reg := struct{ Registry }{openTestDB(t)}
	s := NewServer(reg, ServerOptions{TTL: time.Minute, Log: quietLog()})
	w := serve(s, request("GET", "/v1/index", nil, ""))
	if w.Code != 503 || !containsCode(w.Body.String(), CodeUnavailable) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	// Writes do not care.
	me := newSigner(t)
	me.announce(t, s, ms(time.Now()))
	me.packages(t, s, ms(time.Now())+1, true, hashes(0, 3), nil)
}

// A long poll answers as soon as a peer adds a hash, and when its wait is
// over otherwise. Time is a synctest bubble's.
func TestIndexLongPoll(t *testing.T) { synctest.Test(t, testIndexLongPoll) }

func testIndexLongPoll(t *testing.T) {
	s := newIndexServer(t)
	me := newSigner(t)
	now := ms(time.Now())
	me.announce(t, s, now)
	full := getIndex(t, s, "")

	start := time.Now()
	if u := getIndex(t, s, since(full, "50")); u.Full() || len(u.Add) != 0 || u.Gen != full.Gen {
		t.Fatalf("timed-out poll: %+v", u)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Errorf("a poll waiting 50 ms took %v", d)
	}

	got := make(chan *summary.Update, 1)
	go func() {
		w := serve(s, request("GET", "/v1/index"+since(full, "10000"), nil, ""))
		u, err := summary.ReadUpdate(w.Body)
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	synctest.Wait() // the poll waits
	start = time.Now()
	me.packages(t, s, now+1, true, hashes(7, 1), nil)
	select {
	case u := <-got:
		if len(u.Add) != 1 || u.Gen != full.Gen+1 {
			t.Fatalf("woken poll: %+v", u)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the poll answered %v after the add", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not answer the add")
	}

	// A poll whose asker goes away ends.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(s, request("GET", "/v1/index"+since(full, "30000"), nil, "").WithContext(ctx))
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a poll outlived its request")
	}
}

// The filter is rebuilt under a new epoch once it fills up: removed hashes
// leave it, writes made while it is rebuilt do not get lost. Time is a
// synctest bubble's.
func TestIndexRebuild(t *testing.T) { synctest.Test(t, testIndexRebuild) }

func testIndexRebuild(t *testing.T) {
	s := newIndexServer(t)
	me := newSigner(t)
	now := ms(time.Now())
	me.announce(t, s, now)
	me.packages(t, s, now+1, true, hashes(0, 100), nil)
	full := getIndex(t, s, "")
	me.packages(t, s, now+2, false, nil, hashes(0, 50))

	old := indexRebuildFP
	indexRebuildFP = 0 // the next new hash fills it up
	me.packages(t, s, now+3, false, hashes(100, 1), nil)
	if d := getIndex(t, s, since(full, "")); d.Full() {
		t.Fatal("rebuilt less than indexMinEpoch after the build")
	}
	time.Sleep(indexMinEpoch)
	me.packages(t, s, now+4, false, hashes(101, 1), nil)
	indexRebuildFP = old
	// Written while the rebuild may run.
	me.packages(t, s, now+5, false, hashes(102, 1), nil)
	var u *summary.Update
	for range 500 {
		if u = getIndex(t, s, since(full, "")); u.Full() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !u.Full() || u.Epoch == full.Epoch {
		t.Fatalf("after the rebuild: %+v; want a new epoch's whole filter", u)
	}
	if err := hasAll(u.Filter, hashes(50, 53)); err != nil {
		t.Fatal(err)
	}
	gone := 0
	for _, h := range hashes(0, 50) {
		if hh, _ := summary.ParseHash(h); !u.Filter.Has(hh) {
			gone++
		}
	}
	if gone < 45 {
		t.Errorf("only %d of 50 removed hashes left the rebuilt filter", gone)
	}
	me.packages(t, s, now+6, false, hashes(200, 1), nil)
	if d := getIndex(t, s, since(u, "")); len(d.Add) != 1 {
		t.Fatalf("delta after the rebuild: %+v", d)
	}
}

// sharedReg is a registry other trackers write to as well (it lacks
// soleWriter): the index rereads it.
type sharedReg struct {
	Registry
	HashSource
}

// Two trackers on one database: what a peer announces through one reaches
// the other's index when it rereads the database, with the lag reported.
// Time is a synctest bubble's.
func TestIndexSharedRegistry(t *testing.T) { synctest.Test(t, testIndexSharedRegistry) }

func testIndexSharedRegistry(t *testing.T) {
	db := openTestDB(t)
	newServer := func() *Server {
		return NewServer(sharedReg{db, db}, ServerOptions{TTL: time.Minute, Log: quietLog()})
	}
	a, b := newServer(), newServer()
	me := newSigner(t)
	now := ms(time.Now())
	me.announce(t, b, now)
	me.packages(t, b, now+1, true, hashes(0, 10), nil)

	full := getIndex(t, a, "")
	if err := hasAll(full.Filter, hashes(0, 10)); err != nil {
		t.Fatal(err)
	}
	me.packages(t, b, now+2, false, hashes(10, 5), nil)
	time.Sleep(3 * time.Second)
	u := getIndex(t, a, since(full, ""))
	if len(u.Add) != 0 || u.Lag != 3*time.Second {
		t.Fatalf("before a reread: %+v; want nothing new, 3 s lag", u)
	}
	time.Sleep(sharedIndexRefresh)
	// This request starts the reread; a long poll gets its result.
	getIndex(t, a, since(full, ""))
	u = getIndex(t, a, since(full, "5000"))
	if len(u.Add) != 5 || u.Lag > time.Second {
		t.Fatalf("after the reread: %+v; want the 5 hashes added through b, no lag", u)
	}
	// Its own writes need no reread.
	other := newSigner(t)
	other.announce(t, a, now+3)
	other.packages(t, a, now+4, true, hashes(20, 1), nil)
	if d := getIndex(t, a, since(u, "")); len(d.Add) != 1 {
		t.Fatalf("own write: %+v", d)
	}
}

// The client end to end, and what it makes of a tracker without an index.
func TestClientIndex(t *testing.T) {
	t.Parallel()
	srv := newIndexTracker(t)
	ctx := context.Background()
	me := newSigner(t)
	c := NewClient(srv.URL, me.key)
	if _, err := c.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Packages(ctx, true, hashes(0, 5), nil); err != nil {
		t.Fatal(err)
	}
	full, err := c.Index(ctx, 0, 0, false, 0)
	if err != nil || !full.Full() || hasAll(full.Filter, hashes(0, 5)) != nil {
		t.Fatalf("%+v %v", full, err)
	}
	done := make(chan *summary.Update, 1)
	go func() {
		u, err := c.Index(ctx, full.Epoch, full.Gen, true, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- u
	}()
	time.Sleep(20 * time.Millisecond)
	if err := c.Packages(ctx, false, hashes(5, 1), nil); err != nil {
		t.Fatal(err)
	}
	if u := <-done; u == nil || len(u.Add) != 1 {
		t.Fatalf("long poll through the client: %+v", u)
	}

	old := httptest.NewServer(http.NotFoundHandler())
	defer old.Close()
	_, err = NewClient(old.URL, me.key).Index(ctx, 0, 0, false, 0)
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 {
		t.Errorf("tracker without /v1/index: %v", err)
	}
}

// A tracker shutting down answers pending long polls at once instead of
// waiting for them (up to ShutdownGrace).
func TestIndexPollsEndOnShutdown(t *testing.T) {
	cfg := &config.Tracker{Listen: "127.0.0.1:0", DB: filepath.Join(t.TempDir(), "tracker.db"), PeerTTL: time.Minute}
	tr, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	c := NewClient("http://"+tr.Addr().String(), newSigner(t).key)
	full, err := c.Index(context.Background(), 0, 0, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	polled := make(chan error, 1)
	go func() {
		_, err := c.Index(context.Background(), full.Epoch, full.Gen, true, 20*time.Second)
		polled <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown with a pending poll took %v", d)
	}
	if err := <-polled; err != nil {
		t.Errorf("the pending poll: %v; want an empty answer", err)
	}
}

// BenchmarkIndexBuild: reading the database into a filter, the cost of the
// first build and of every rebuild. INDEX_BENCH_PEERS x INDEX_BENCH_HASHES
// (default 100 x 20,000, no overlap) rows of random hashes.
func BenchmarkIndexBuild(b *testing.B) {
	peers, perPeer := envInt("INDEX_BENCH_PEERS", 100), envInt("INDEX_BENCH_HASHES", 20000)
	var db *SQLite
	if path := os.Getenv("INDEX_BENCH_DB"); path != "" {
		// A database kept for the next run: loading 20 M rows takes minutes.
		var err error
		if db, err = OpenSQLite(path); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
	} else {
		db = openTestDB(b)
	}
	ctx := context.Background()
	now := time.Now()
	start := time.Now()
	if ps, err := db.Peers(ctx, time.Time{}); err != nil {
		b.Fatal(err)
	} else if len(ps) > 0 {
		peers = 0
		b.Logf("using the %d peers in INDEX_BENCH_DB", len(ps))
	}
	for p := range peers {
		id := fmt.Sprintf("peer-%d", p)
		if _, err := db.UpsertPeer(ctx, id, nil, 1, now, now.Add(-time.Hour)); err != nil {
			b.Fatal(err)
		}
		hs := make([]string, perPeer)
		for i, h := range randHashes(uint64(p)+100, perPeer) {
			hs[i] = nixbase32.EncodeToString(h[:])
		}
		if _, err := db.SetPackages(ctx, id, 2, now.Add(-time.Hour), true, hs, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("%d rows loaded in %v", peers*perPeer, time.Since(start).Round(time.Millisecond))
	x := newServerIndex(db, time.Now, quietLog())
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		scanned := 0
		if err := db.EachHash(ctx, func([]byte) error { scanned++; return nil }); err != nil {
			b.Fatal(err)
		}
		scan := time.Since(start)
		start = time.Now()
		f, entries, err := x.read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		f.Fold(entries * summary.BitsPerEntry)
		b.ReportMetric(float64(scan.Milliseconds()), "scan-ms")
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "build-ms")
		b.ReportMetric(float64(f.Bits()/8), "filter-bytes")
		b.ReportMetric(float64(entries), "entries")
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// randHashes returns n pseudo-random decoded hashes.
func randHashes(seed uint64, n int) []summary.Hash {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]summary.Hash, n)
	for i := range out {
		for j := 0; j < summary.HashBytes; j += 4 {
			binary.LittleEndian.PutUint32(out[i][j:], r.Uint32())
		}
	}
	return out
}
