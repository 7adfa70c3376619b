package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// newTestTracker serves a real-clock Server over HTTP, over a fresh
// database of backend b.
func newTestTracker(t testing.TB, b backend, ttl time.Duration, wrap func(http.Handler) http.Handler) (*httptest.Server, Registry) {
	t.Helper()
	db := b.open(t)
	var h http.Handler = NewServer(db, ServerOptions{TTL: ttl, Log: quietLog()})
	if wrap != nil {
		h = wrap(h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, db
}

func TestClientRoundTrip(t *testing.T) { eachBackend(t, testClientRoundTrip) }

func testClientRoundTrip(t *testing.T, be backend) {
	srv, _ := newTestTracker(t, be, time.Minute, nil)
	ctx := context.Background()
	me := newSigner(t)
	c := NewClient(srv.URL+"/", me.key)
	if c.ID() != me.id {
		t.Fatal("client ID")
	}

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.TTL != time.Minute || !strings.HasPrefix(info.ObservedAddr, "127.0.0.1:") || info.Relay.PeerID != "" {
		t.Fatalf("info: %+v", info)
	}

	addr := ma.StringCast("/ip4/198.51.100.7/udp/12306/quic-v1")
	res, err := c.Announce(ctx, []ma.Multiaddr{addr})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Registered || res.TTL != time.Minute || !strings.HasPrefix(res.ObservedAddr, "127.0.0.1:") {
		t.Fatalf("announce: %+v", res)
	}
	if res, err = c.Announce(ctx, []ma.Multiaddr{addr}); err != nil || res.Registered {
		t.Fatalf("heartbeat: %+v %v", res, err)
	}
	if err := c.Packages(ctx, true, []string{hashN(1), hashN(2)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Packages(ctx, false, []string{hashN(3)}, []string{hashN(1)}); err != nil {
		t.Fatal(err)
	}
	for h, want := range map[int]int{1: 0, 2: 1, 3: 1} {
		peers, err := c.Find(ctx, hashN(h))
		if err != nil || len(peers) != want {
			t.Fatalf("find %d: %v %v", h, peers, err)
		}
	}
	peers, err := c.Find(ctx, hashN(2))
	if err != nil {
		t.Fatal(err)
	}
	p := peers[0]
	if p.PeerID != me.id.String() || !slices.Equal(p.Addrs, []string{addr.String()}) || time.Since(p.LastSeen) > time.Minute || p.Packages != 2 {
		t.Fatalf("find: %+v", p)
	}
	ai, err := p.AddrInfo()
	if err != nil || ai.ID != me.id || len(ai.Addrs) != 1 || !ai.Addrs[0].Equal(addr) {
		t.Fatalf("AddrInfo: %v %v", ai, err)
	}
	all, err := c.Peers(ctx)
	if err != nil || len(all) != 1 {
		t.Fatalf("peers: %v %v", all, err)
	}

	if _, err := c.Find(ctx, "nope"); err == nil {
		t.Fatal("find of an invalid hash")
	}
	if err := c.Packages(ctx, false, []string{"nope"}, nil); err == nil {
		t.Fatal("packages with an invalid hash")
	}

	if err := c.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if peers, _ := c.Find(ctx, hashN(2)); len(peers) != 0 {
		t.Fatalf("find after deregister: %v", peers)
	}
	err = c.Packages(ctx, false, []string{hashN(4)}, nil)
	if !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("packages after deregister: %v", err)
	}
	var te *Error
	if !errors.As(err, &te) || te.Status != 404 {
		t.Fatalf("error type: %#v", err)
	}
	if res, err := c.Announce(ctx, nil); err != nil || !res.Registered {
		t.Fatalf("announce after deregister: %+v %v", res, err)
	}
}

// TestManyClientsShareHash: a dozen signed clients all found as holders.
func TestManyClientsShareHash(t *testing.T) { eachBackend(t, testManyClientsShareHash) }

func testManyClientsShareHash(t *testing.T, be backend) {
	srv, _ := newTestTracker(t, be, time.Minute, nil)
	ctx := context.Background()
	shared := hashN(42)
	want := []string{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := []error{}
	for i := range 12 {
		me := newSigner(t)
		want = append(want, me.id.String())
		wg.Go(func() {
			c := NewClient(srv.URL, me.key)
			_, err := c.Announce(ctx, []ma.Multiaddr{ma.StringCast("/ip4/198.51.100.7/tcp/" + string(rune('1'+i%9)))})
			if err == nil {
				err = c.Packages(ctx, true, append(hashes(1000*i, 100), shared), nil)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	c := NewClient(srv.URL, newSigner(t).key)
	peers, err := c.Find(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, p := range peers {
		got = append(got, p.PeerID)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("holders:\n got %v\nwant %v", got, want)
	}
	if own, _ := c.Find(ctx, hashN(1000*3+5)); len(own) != 1 {
		t.Fatalf("a hash only one peer holds: %v", own)
	}
	all, _ := c.Peers(ctx)
	if len(all) != 12 {
		t.Fatalf("%d peers", len(all))
	}
}

// memRegistry keeps sets in memory: the client's splitting is tested
// without paying for SQLite inserts (very slow under -race).
type memRegistry struct {
	Registry // methods not needed here are nil
	mu       sync.Mutex
	lastTS   map[string]int64
	sets     map[string]map[string]bool
}

func (m *memRegistry) TrackerID() string { return "memory" }

func (m *memRegistry) UpsertPeer(_ context.Context, a Announce) (bool, error) {
	id, ts := a.PeerID, a.TS
	m.mu.Lock()
	defer m.mu.Unlock()
	if last, ok := m.lastTS[id]; ok && ts <= last {
		return false, &ReplayError{ts, last}
	}
	m.lastTS[id] = ts
	_, known := m.sets[id]
	if !known {
		m.sets[id] = map[string]bool{}
	}
	return !known, nil
}

func (m *memRegistry) SetPackages(_ context.Context, u PackagesUpdate) (int64, error) {
	id, ts, full, add, remove := u.PeerID, u.TS, u.Full, u.Add, u.Remove
	m.mu.Lock()
	defer m.mu.Unlock()
	set, ok := m.sets[id]
	if !ok {
		return 0, ErrUnknownPeer
	}
	if ts <= m.lastTS[id] {
		return 0, &ReplayError{ts, m.lastTS[id]}
	}
	m.lastTS[id] = ts
	if full {
		clear(set)
	}
	for _, h := range remove {
		delete(set, h)
	}
	for _, h := range add {
		set[h] = true
	}
	return int64(len(set)), nil
}

// TestClientSplitsFullSet: 120k hashes go as a full part and two deltas.
func TestClientSplitsFullSet(t *testing.T) {
	reg := &memRegistry{lastTS: map[string]int64{}, sets: map[string]map[string]bool{}}
	var mu sync.Mutex
	var parts []trackerapi.PackagesRequest
	api := NewServer(reg, ServerOptions{TTL: time.Minute, Log: quietLog()})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/packages" {
			b, _ := io.ReadAll(r.Body)
			var req trackerapi.PackagesRequest
			json.Unmarshal(b, &req)
			mu.Lock()
			parts = append(parts, req)
			mu.Unlock()
			r.Body = io.NopCloser(strings.NewReader(string(b)))
		}
		api.ServeHTTP(w, r)
	}))
	defer srv.Close()

	ctx := context.Background()
	me := newSigner(t)
	c := NewClient(srv.URL, me.key)
	if _, err := c.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	set := hashes(0, 120000)
	if err := c.Packages(ctx, true, set, []string{hashN(1)}); err != nil {
		t.Fatal(err)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	for i, want := range []struct {
		full bool
		n    int
	}{{true, 50000}, {false, 50000}, {false, 20000}} {
		p := parts[i]
		if p.Full != want.full || len(p.Add) != want.n || len(p.Remove) != 0 || p.PeerID != me.id.String() {
			t.Fatalf("part %d: full %v, %d add, %d remove", i, p.Full, len(p.Add), len(p.Remove))
		}
		if i > 0 && p.TS <= parts[i-1].TS {
			t.Fatalf("ts not increasing: %d then %d", parts[i-1].TS, p.TS)
		}
	}
	if got := reg.sets[me.id.String()]; len(got) != 120000 || !got[set[0]] || !got[set[119999]] {
		t.Fatalf("tracker holds %d hashes", len(got))
	}
	// A big delta is split too: removes first, then adds.
	parts = nil
	if err := c.Packages(ctx, false, hashes(200000, 30000), set[:60000]); err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 || len(parts[0].Remove) != 50000 || len(parts[0].Add) != 0 ||
		len(parts[1].Remove) != 10000 || len(parts[1].Add) != 30000 {
		t.Fatalf("delta parts: %d", len(parts))
	}
	if got := reg.sets[me.id.String()]; len(got) != 90000 || got[set[0]] || !got[hashN(200000)] {
		t.Fatalf("after delta the tracker holds %d hashes", len(got))
	}
	// An empty full set is still sent: it clears.
	parts = nil
	if err := c.Packages(ctx, true, nil, nil); err != nil || len(parts) != 1 || !parts[0].Full || len(reg.sets[me.id.String()]) != 0 {
		t.Fatalf("empty full set: %v, %d parts", err, len(parts))
	}
}

// TestLargeSet: 120k hashes through the client into the registry, then a
// large delta, a resent full set and find.
func TestLargeSet(t *testing.T) { eachBackend(t, testLargeSet) }

func testLargeSet(t *testing.T, be backend) {
	if raceEnabled && be.name == "sqlite" {
		t.Skip("SQLite inserts are too slow under -race")
	}
	srv, db := newTestTracker(t, be, time.Minute, nil)
	ctx := context.Background()
	c := NewClient(srv.URL, newSigner(t).key)
	if _, err := c.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	set := hashes(0, 120000)
	start := time.Now()
	if err := c.Packages(ctx, true, set, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("120k-hash full set in %v", time.Since(start))
	for _, h := range []string{set[0], set[50000], set[119999]} {
		if peers, _ := c.Find(ctx, h); len(peers) != 1 || peers[0].Packages != 120000 {
			t.Fatalf("find %s: %v", h, peers)
		}
	}
	start = time.Now()
	if err := c.Packages(ctx, false, hashes(200000, 30000), set[:60000]); err != nil {
		t.Fatal(err)
	}
	t.Logf("90k-hash delta in %v", time.Since(start))
	peers, _ := allPeers(ctx, db, time.Time{})
	if len(peers) != 1 || peers[0].Packages != 90000 {
		t.Fatalf("after delta: %+v", peers)
	}
	if p, _ := c.Find(ctx, set[0]); len(p) != 0 {
		t.Fatal("removed hash still found")
	}
	// Resending a 50k full set that mostly matches costs a diff.
	start = time.Now()
	if err := c.Packages(ctx, true, set[60000:110000], nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("50k-hash full set over 90k held in %v", time.Since(start))
	peers, _ = allPeers(ctx, db, time.Time{})
	if peers[0].Packages != 50000 {
		t.Fatalf("after resend: %d", peers[0].Packages)
	}
}

// TestClientConcurrentWrites: writes from many goroutines never collide.
func TestClientConcurrentWrites(t *testing.T) { eachBackend(t, testClientConcurrentWrites) }

func testClientConcurrentWrites(t *testing.T, be backend) {
	srv, _ := newTestTracker(t, be, time.Minute, nil)
	ctx := context.Background()
	c := NewClient(srv.URL, newSigner(t).key)
	if _, err := c.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() {
			if _, err := c.Announce(ctx, nil); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if err := c.Packages(ctx, false, []string{hashN(i)}, nil); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestClientRecovers: a second process with the same key (whose ts
// collide) and a client whose clock is far off both get through.
func TestClientRecovers(t *testing.T) { eachBackend(t, testClientRecovers) }

func testClientRecovers(t *testing.T, be backend) {
	srv, _ := newTestTracker(t, be, time.Minute, nil)
	ctx := context.Background()
	me := newSigner(t)
	a, b := NewClient(srv.URL, me.key), NewClient(srv.URL, me.key)
	if _, err := a.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	a.SetClock(func() time.Time { return time.Now().Add(10 * time.Second) }) // a runs ahead
	if _, err := a.Announce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Announce(ctx, nil); err != nil {
		t.Fatalf("second client: %v", err)
	}

	skewed := NewClient(srv.URL, newSigner(t).key)
	skewed.SetClock(func() time.Time { return time.Now().Add(-10 * time.Minute) })
	if _, err := skewed.Announce(ctx, nil); err != nil {
		t.Fatalf("skewed clock: %v", err)
	}
	if err := skewed.Packages(ctx, true, []string{hashN(1)}, nil); err != nil {
		t.Fatalf("skewed clock, second write: %v", err)
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	c := NewClient("http://127.0.0.1:1", newSigner(t).key)
	if _, err := c.Info(ctx); err == nil {
		t.Fatal("no error from a dead tracker")
	}
	if err := NewClient("http://127.0.0.1:1", nil).Deregister(ctx); err == nil {
		t.Fatal("no error without a key")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, err := NewClient(srv.URL, nil).Peers(ctx)
	var te *Error
	if !errors.As(err, &te) || te.Status != 502 || te.Message != "boom" {
		t.Fatalf("%#v", err)
	}
}
