package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/tracker"
	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// countingTracker runs a real tracker (SQLite) and counts the requests
// per route.
type countingTracker struct {
	*httptest.Server
	finds, indexes atomic.Int64
}

func startCountingTracker(t *testing.T) *countingTracker {
	t.Helper()
	reg, err := tracker.OpenSQLite(filepath.Join(t.TempDir(), "tracker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	api := tracker.NewServer(reg, tracker.ServerOptions{TTL: time.Minute, Log: testLog(t)})
	ct := &countingTracker{}
	ct.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/find/"):
			ct.finds.Add(1)
		case r.URL.Path == "/v1/index":
			ct.indexes.Add(1)
		}
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(ct.Close)
	return ct
}

// indexedStore is a Store whose index follows the tracker at url; the
// index stops with the returned function (and with the test).
func indexedStore(t *testing.T, url string) (*Store, *summary.Follower, func()) {
	t.Helper()
	h := newTestHost(t)
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	c := TrackerClient{trackerapi.NewClient(url, key)}
	s := NewStore(h, c, swarm.Options{}, testLog(t))
	ix := summary.NewFollower(c, summary.FollowerOptions{Log: testLog(t)})
	s.UseIndex(ix)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ix.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop) // before the tracker closes: it waits for pending polls
	waitUntil(t, "the index is current", ix.Current)
	return s, ix, stop
}

func waitUntil(t testing.TB, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s: not after 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// A miss is answered from memory: the tracker hears of it not at all.
func TestIndexMissWithoutTracker(t *testing.T) {
	tr := startCountingTracker(t)
	s, ix, stop := indexedStore(t, tr.URL)
	ctx := context.Background()
	for range 100 {
		start := time.Now()
		if _, err := s.NarInfo(ctx, randomHash(t)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("miss: %v", err)
		}
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Errorf("a miss from the index took %v", d)
		}
	}
	if n := tr.finds.Load(); n != 0 {
		t.Errorf("%d requests to /v1/find for misses the index answers", n)
	}
	if st := ix.Stats(); st.Absent != 100 || !st.Current || st.Loads != 1 {
		t.Errorf("index stats %+v", st)
	}
	// Without a current index, the tracker is asked as before.
	stop()
	if _, err := s.NarInfo(ctx, randomHash(t)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("miss: %v", err)
	}
	if n := tr.finds.Load(); n != 1 {
		t.Errorf("%d requests to /v1/find after the index stopped, want 1", n)
	}
}

// announce registers h at the tracker with its loopback addresses and the
// given hashes, signed with h's own key.
func announceAt(t *testing.T, url string, h *Host, hashes ...string) *trackerapi.Client {
	t.Helper()
	c := trackerapi.NewClient(url, h.Peerstore().PrivKey(h.ID()))
	ctx := context.Background()
	if _, err := c.Announce(ctx, loopbackInfo(h).Addrs); err != nil {
		t.Fatal(err)
	}
	if err := c.Packages(ctx, true, hashes, nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// A path announced after the index was loaded reaches it through the long
// poll, within milliseconds, and is found; with the index stale, lookups
// ask the tracker and find what was announced meanwhile.
func TestIndexFindsNewlyAnnounced(t *testing.T) {
	tr := startCountingTracker(t)
	hs, sts := holders(t, 1)
	holder := hs[0]
	s, ix, stop := indexedStore(t, tr.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	hash := randomHash(t)
	data := testData(5000, 3)
	sts[0].add(hash, data)
	if _, err := s.NarInfo(ctx, hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("before the announcement: %v", err)
	}
	if tr.finds.Load() != 0 {
		t.Fatal("the miss before the announcement asked the tracker")
	}
	c := announceAt(t, tr.URL, holder, hash)
	took := waitUntil(t, "the index learns of the announced hash", func() bool { return !ix.Absent(hash) })
	t.Logf("announced hash reached the index %v after the tracker took it", took)
	if took > 2*time.Second {
		t.Errorf("the announcement took %v to reach the index", took)
	}
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatalf("after the announcement: %v", err)
	}
	if ni.NarSize != uint64(len(data)) || tr.finds.Load() != 1 {
		t.Errorf("narinfo %+v after %d finds", ni, tr.finds.Load())
	}

	// The index goes stale (here: stopped); meanwhile another path is
	// announced. The lookup asks the tracker and finds it.
	stop()
	later := randomHash(t)
	sts[0].add(later, testData(300, 4))
	if err := c.Packages(ctx, false, []string{later}, nil); err != nil {
		t.Fatal(err)
	}
	if ix.Current() {
		t.Fatal("a stopped index is current")
	}
	if _, err := s.NarInfo(ctx, later); err != nil {
		t.Fatalf("with the index stale: %v", err)
	}
	if n := tr.finds.Load(); n != 2 {
		t.Errorf("%d finds, want 2", n)
	}
}
