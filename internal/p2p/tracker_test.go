package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/tracker"
	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// End to end through a real tracker: a peer announces what it shares,
// another finds it through the tracker and fetches it; after the first
// says goodbye, the tracker no longer names it.
func TestTrackerEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := testLog(t)

	api, relay := startTracker(t)

	// The holder.
	keyA, _ := LoadOrCreateIdentity(t.TempDir())
	a, err := NewHost(ctx, keyA, 0, nil, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	shared := newMemStore()
	hash := randomHash(t)
	data := testData(2<<20+5, 7)
	shared.add(hash, data)
	private := randomHash(t)
	shared.add(private, []byte("secret")).refused = true
	srv := Serve(a, shared, 0, log)
	t.Cleanup(func() { srv.Close() })
	clientA := trackerapi.NewClient(api.URL, keyA)
	followCtx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	go a.FollowTracker(followCtx, clientA)

	paths := &fakePaths{}
	paths.set(hash, private)
	stateDir := t.TempDir()
	ann := NewAnnouncer(AnnouncerConfig{
		Registry: TrackerClient{clientA},
		Paths:    paths,
		Shareable: func(ctx context.Context, h string) bool {
			_, err := shared.NarInfo(ctx, h)
			return err == nil
		},
		Addrs:    a.AnnounceAddrs,
		StateDir: stateDir,
		Tracker:  api.URL,
		PeerID:   a.ID(),
		Log:      log,
	})
	annCtx, stopAnn := context.WithCancel(ctx)
	annDone := make(chan struct{})
	go func() {
		defer close(annDone)
		ann.Run(annCtx)
	}()
	defer func() { stopAnn(); <-annDone }()

	// The fetcher.
	keyB, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	b, err := NewHost(ctx, keyB, 0, nil, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	clientB := trackerapi.NewClient(api.URL, keyB)
	for ctx.Err() == nil {
		if ps, err := clientB.Find(ctx, hash); err == nil && len(ps) == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for range 100 {
		if ann.Stats().Announced == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := ann.Stats(); s.Announced != 1 {
		t.Errorf("announcer stats %+v, want 1 path announced (the private one withheld)", s)
	}
	if ps, err := clientB.Find(ctx, private); err != nil || len(ps) != 0 {
		t.Errorf("private path announced: %v %v", ps, err)
	}

	s := NewStore(b, TrackerClient{clientB}, swarm.Options{}, log)
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("NAR through the tracker: %d bytes, %v", len(got), err)
	}
	if _, err := s.NarInfo(ctx, private); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("private path: %v", err)
	}

	// Behind NAT, the holder announces a circuit address through the
	// tracker's relay, and the tracker takes it.
	relayInfo, err := (&trackerapi.PeerAddrs{PeerID: relay.ID().String(), Addrs: relayAddrs(relay)}).AddrInfo()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.UseRelay(ctx, relayInfo, "203.0.113.9:4000"); err != nil {
		t.Fatal(err)
	}
	if _, err := clientA.Announce(ctx, a.AnnounceAddrs()); err != nil {
		t.Fatalf("announcing circuit addresses: %v", err)
	}
	ps, err := clientB.Find(ctx, hash)
	if err != nil || len(ps) != 1 {
		t.Fatalf("find: %v %v", ps, err)
	}
	circuit := false
	for _, s := range ps[0].Addrs {
		circuit = circuit || strings.Contains(s, "/p2p-circuit")
	}
	if !circuit {
		t.Errorf("no circuit address at the tracker: %v", ps[0].Addrs)
	}

	// Goodbye: the tracker forgets the holder at once.
	stopAnn()
	<-annDone
	fresh := NewStore(b, TrackerClient{clientB}, swarm.Options{}, log)
	start := time.Now()
	if _, err := fresh.NarInfo(ctx, hash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after deregistering: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("miss took %v", d)
	}
}

func relayAddrs(r *tracker.Relay) []string {
	var out []string
	for _, a := range r.Addrs() {
		out = append(out, a.String())
	}
	return out
}

// startTracker runs a tracker API (SQLite, relay on 127.0.0.1 admitting
// only registered peers, as `peerix tracker` does) for a test.
func startTracker(t *testing.T) (*httptest.Server, *tracker.Relay) {
	return startTrackerWith(t, nil)
}

// startTrackerWith is startTracker with the relay's resources rc (nil:
// the tracker's).
func startTrackerWith(t *testing.T, rc *relayv2.Resources) (*httptest.Server, *tracker.Relay) {
	t.Helper()
	log := testLog(t)
	reg, err := tracker.OpenSQLite(filepath.Join(t.TempDir(), "tracker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	var srv *tracker.Server
	adm := tracker.NewAdmission(func(ctx context.Context, id peer.ID) (bool, error) { return srv.Live(ctx, id) }, log)
	relayKey, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	relay, err := tracker.StartRelay(relayKey, []string{"127.0.0.1"}, 0, tracker.RelayOptions{Admission: adm, Resources: rc}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	srv = tracker.NewServer(reg, tracker.ServerOptions{TTL: time.Minute, Relay: relay.Info, Registered: adm.Registered, Log: log})
	api := httptest.NewServer(srv)
	t.Cleanup(api.Close)
	return api, relay
}

// The daemon's one-call wiring: two nodes find each other's paths through
// the tracker; closing a node deregisters it.
func TestNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api, _ := startTracker(t)

	sharedA := newMemStore()
	hash := randomHash(t)
	data := testData(100<<10, 5)
	sharedA.add(hash, data)
	paths := &fakePaths{}
	paths.set(hash)
	a, err := Start(ctx, Config{StateDir: t.TempDir(), TrackerURL: api.URL, Shared: sharedA, Paths: paths, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Start(ctx, Config{StateDir: t.TempDir(), TrackerURL: api.URL, Shared: newMemStore(), Paths: &fakePaths{}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	for ctx.Err() == nil {
		if ps, err := b.Tracker.Find(ctx, hash); err == nil && len(ps) == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// b's index hears of it through its long poll, a moment after the
	// tracker took it; until then it answers "nobody" (index.go).
	waitUntil(t, "b's index knows the hash", func() bool { return b.Index.Current() && !b.Index.Absent(hash) })
	if _, err := b.Store.NarInfo(ctx, randomHash(t)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("miss: %v", err)
	}
	if st := b.Index.Stats(); st.Absent != 1 {
		t.Errorf("b's index answered %d misses, want 1: %+v", st.Absent, st)
	}
	ni, err := b.Store.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	nar, err := b.Store.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("NAR: %d bytes, %v", len(got), err)
	}
	if ps := b.Peers(); len(ps) != 1 || ps[0].PeerID != a.ID().String() || !ps[0].Connected {
		t.Errorf("b's peers: %+v", ps)
	}

	a.Close()
	if ps, err := b.Tracker.Find(ctx, hash); err != nil || len(ps) != 0 {
		t.Errorf("after closing the holder the tracker still names %v (%v)", ps, err)
	}
}

// TestRelayLimitResumes: the tracker's relay limits what one relayed
// connection carries; when the limit ends it in the middle of a NAR, the
// transfer resumes at the byte it reached over another connection, and
// the reader gets the whole NAR.
func TestRelayLimitResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := testLog(t)
	const limit = 2 << 20
	rc := tracker.RelayResources()
	rc.Limit = &relayv2.RelayLimit{Duration: time.Minute, Data: limit}
	api, relay := startTrackerWith(t, &rc)
	relayInfo, err := (&trackerapi.PeerAddrs{PeerID: relay.ID().String(), Addrs: relayAddrs(relay)}).AddrInfo()
	if err != nil {
		t.Fatal(err)
	}

	a, b := newTestHost(t), newTestHost(t)
	for _, h := range []*Host{a, b} {
		if _, err := trackerapi.NewClient(api.URL, h.Peerstore().PrivKey(h.ID())).Announce(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	shared := newMemStore()
	hash := randomHash(t)
	e := shared.addGenerated(hash, 3*limit/2, 11)
	srv := Serve(a, shared, 0, log)
	t.Cleanup(func() { srv.Close() })
	if err := a.UseRelay(ctx, relayInfo, "203.0.113.9:4000"); err != nil {
		t.Fatal(err)
	}

	// B knows A only by its circuit addresses.
	var mu sync.Mutex
	var conns []string
	b.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() == a.ID() {
			mu.Lock()
			conns = append(conns, c.RemoteMultiaddr().String())
			mu.Unlock()
		}
	}})
	finder := newFakeFinder()
	finder.holders[hash] = []peer.AddrInfo{{ID: a.ID(), Addrs: trackerapi.CircuitAddrs(relayInfo, a.ID())}}
	s := NewStore(b, finder, swarm.Options{}, log)
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, nar)
	nar.Close()
	if err != nil || n != e.size || !bytes.Equal(h.Sum(nil), e.ni.NarHash.Digest()) {
		t.Fatalf("NAR through a relay limited to %d bytes a connection: %d of %d bytes, %v", limit, n, e.size, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) < 2 || !strings.Contains(conns[0], "/p2p-circuit") {
		t.Fatalf("connections from B to A: %v; want a relayed one that the limit ended, then another", conns)
	}
	t.Logf("%d-byte NAR over a relay limited to %d bytes a connection: connections %v", n, limit, conns)
}

// A Node without a tracker serves the peer protocols until Close, and New
// alone serves nothing.
func TestNodeLifecycleWithoutTracker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := newMemStore()
	hash := randomHash(t)
	st.add(hash, []byte("served"))
	client := newTestHost(t)

	idle, err := New(Config{StateDir: t.TempDir(), Shared: st, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	know(client, idle.Host)
	if _, err := QueryNarInfo(ctx, client, idle.ID(), hash); err == nil {
		t.Error("a Node that was only made answered a peer")
	}
	if err := idle.Close(); err != nil {
		t.Errorf("closing a Node that never ran: %v", err)
	}

	n, err := Start(ctx, Config{StateDir: t.TempDir(), Shared: st, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	know(client, n.Host)
	time.Sleep(100 * time.Millisecond) // whatever Run would end early does
	if _, err := QueryNarInfo(ctx, client, n.ID(), hash); err != nil {
		t.Errorf("a running Node without a tracker: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := QueryNarInfo(ctx, client, n.ID(), hash); err == nil {
		t.Error("a closed Node answered a peer")
	}
}
