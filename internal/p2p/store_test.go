package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/trust"
)

// holders starts n hosts serving one memStore each.
func holders(t *testing.T, n int) ([]*Host, []*memStore) {
	t.Helper()
	var hs []*Host
	var sts []*memStore
	for range n {
		h, st := newTestHost(t), newMemStore()
		srv := Serve(h, st, 0, testLog(t))
		t.Cleanup(func() { srv.Close() })
		hs = append(hs, h)
		sts = append(sts, st)
	}
	return hs, sts
}

func testData(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+i>>11) ^ salt
	}
	return b
}

func TestStoreNarInfo(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	s := NewStore(client, finder, swarm.Options{}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hash := randomHash(t)
	e := sts[0].add(hash, testData(1000, 1))
	sts[1].put(hash, *e)
	finder.set(hash, hs...)

	// Concurrent callers share one lookup.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ni, err := s.NarInfo(ctx, hash)
			if err != nil {
				errs <- err
				return
			}
			if ni.URL != p2pURL(hash, e) || ni.Compression != "none" ||
				ni.FileSize != ni.NarSize || ni.FileHash.String() != ni.NarHash.String() || ni.StorePath != e.ni.StorePath {
				errs <- errors.New("narinfo not rewritten: " + ni.URL)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if finder.calls != 1 {
		t.Errorf("tracker asked %d times, want 1", finder.calls)
	}

	// Nobody holds it: a fast miss.
	start := time.Now()
	if _, err := s.NarInfo(ctx, randomHash(t)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown path: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("miss took %v", d)
	}

	// The tracker names holders that do not have it (anymore), or refuse.
	gone := randomHash(t)
	sts[1].add(gone, []byte("x")).refused = true
	finder.set(gone, hs...)
	if _, err := s.NarInfo(ctx, gone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("path the holders lost: %v", err)
	}
	for _, h := range hs {
		if r, _ := s.Reputation().Get(h.ID().String()); r.Failures != 0 {
			t.Errorf("honest not-found counted as a failure: %+v", r)
		}
	}

	if _, err := s.NarInfo(ctx, "bad"); !errors.Is(err, store.ErrBadRequest) {
		t.Errorf("bad hash: %v", err)
	}
	ref := store.NarRef{Hash: hash, NarHash: narHashOf(e)}
	lan := ref
	lan.Source = "lan"
	for _, u := range []string{
		"nar/p2p/x.nar",
		ref.URL(), // the local store's form
		lan.URL(), // another source's
		p2pURL(hash, e) + "/..",
		"nar/p2p/../" + hash + "-" + narHashOf(e) + ".nar",
	} {
		if _, err := s.NAR(ctx, u, 0); !errors.Is(err, store.ErrBadRequest) {
			t.Errorf("NAR URL %q: %v, want ErrBadRequest", u, err)
		}
	}
	// A NarHash no holder named: a miss, not another NAR.
	other := "1" + narHashOf(e)[1:]
	if other == narHashOf(e) {
		other = "0" + narHashOf(e)[1:]
	}
	if _, err := s.NAR(ctx, store.NarRef{Source: Source, Hash: hash, NarHash: other}.URL(), 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("NAR of another NarHash: %v, want ErrNotFound", err)
	}

	peers := s.Peers()
	if len(peers) != 2 {
		t.Errorf("Peers: %+v", peers)
	}
	for _, p := range peers {
		if !p.Connected || !p.Direct || p.Relayed || len(p.Addrs) == 0 || p.Reputation.Successes == 0 && p.Reputation.Failures == 0 && p.LastFound.IsZero() {
			t.Errorf("peer status %+v", p)
		}
	}
}

// successes returns how many successes the store's reputation counts for
// each of hs.
func successes(s *Store, hs ...*Host) []int {
	out := make([]int, len(hs))
	for i, h := range hs {
		r, _ := s.Reputation().Get(h.ID().String())
		out[i] = r.Successes
	}
	return out
}

// waitAnswered waits until each of hs answered the lookup's narinfo query
// (its reputation counts more successes than before), so that a NAR
// transfer can use it as a source: the lookup records a holder's success
// and its confirmation together, under no lock that a transfer waits on.
func waitAnswered(t *testing.T, s *Store, before []int, hs ...*Host) {
	t.Helper()
	for range 500 {
		now := successes(s, hs...)
		done := true
		for i := range hs {
			done = done && now[i] > before[i]
		}
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("holders never answered: successes %v, before %v", successes(s, hs...), before)
}

// A holder that breaks mid-stream: the transfer resumes from the next one
// at the byte reached; the reader gets every byte exactly once, at any
// offset.
func TestStoreResumesFromAnotherHolder(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := swarm.NewReputation()
	s := NewStore(client, finder, swarm.Options{Rep: rep}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := testData(3<<20+123, 2)
	hash := randomHash(t)
	broken := sts[0].add(hash, data)
	broken.cutAfter = 1<<20 + 17
	sts[1].add(hash, data).delay = 100 * time.Millisecond // the broken holder's narinfo wins
	finder.set(hash, hs...)
	// The broken holder looks best.
	for range 5 {
		rep.Success(hs[0].ID().String(), time.Millisecond)
		rep.Success(hs[1].ID().String(), 300*time.Millisecond)
	}
	before := successes(s, hs...)

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, s, before, hs...)
	for _, off := range []int64{0, 1 << 19, int64(len(data)) - 1, int64(len(data))} {
		nar, err := s.NAR(ctx, ni.URL, off)
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		got, err := io.ReadAll(nar)
		nar.Close()
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		if nar.Size != int64(len(data)) || !bytes.Equal(got, data[off:]) {
			t.Fatalf("offset %d: %d bytes, not the NAR", off, len(got))
		}
	}
	if _, err := s.NAR(ctx, ni.URL, int64(len(data))+1); !errors.Is(err, store.ErrOffset) {
		t.Errorf("beyond the end: %v", err)
	}
	if r, _ := rep.Get(hs[0].ID().String()); r.Failures == 0 || r.Lies != 0 {
		t.Errorf("the broken holder's record %+v: want a failure and no lie", r)
	}
	if r, _ := rep.Get(hs[1].ID().String()); r.NARs == 0 || r.Lies != 0 {
		t.Errorf("the good holder's record %+v: want verified NARs", r)
	}
	for i, st := range sts {
		if st.nars() == 0 {
			t.Errorf("holder %d was never asked", i)
		}
	}
}

// A holder whose NAR does not match the NarHash (same narinfo, other
// bytes): the reader still gets the right NAR whole, from the honest
// holder, and never a wrong byte; the liar is blamed in the store's
// reputation and left out of later transfers.
func TestStoreHashMismatch(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := swarm.NewReputation()
	var lies []string
	var liesMu sync.Mutex
	s := NewStore(client, finder, swarm.Options{Rep: rep, OnLie: func(peer, hash, what string) {
		liesMu.Lock()
		lies = append(lies, peer+" "+hash+" "+what)
		liesMu.Unlock()
	}}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := testData(200<<10, 3)
	hash := randomHash(t)
	good := sts[1].add(hash, data)
	good.delay = 100 * time.Millisecond // the liar's narinfo wins
	bad := *good
	bad.data = testData(200<<10, 4) // same narinfo, other bytes
	bad.delay = 0
	sts[0].put(hash, bad)
	finder.set(hash, hs...)
	liar := hs[0].ID().String()
	rep.Success(liar, time.Millisecond)
	rep.Success(hs[1].ID().String(), time.Second)
	before := successes(s, hs...)

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, s, before, hs...)
	for i := range 2 { // the second transfer leaves the liar out
		nar, err := s.NAR(ctx, ni.URL, 0)
		if err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
		got, err := io.ReadAll(nar)
		nar.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("transfer %d: %d bytes (the NAR: %v), %v", i, len(got), bytes.Equal(got, data), err)
		}
		if n := sts[0].nars(); n != 1 {
			t.Errorf("after transfer %d the liar was asked for %d NARs, want 1", i, n)
		}
	}
	r, _ := rep.Get(liar)
	if r.Lies != 1 || r.LastFailure != swarm.FailLie.String() || rep.Available(liar) {
		t.Errorf("liar's reputation %+v", r)
	}
	if r, _ := rep.Get(hs[1].ID().String()); r.Lies != 0 || r.NARs != 2 {
		t.Errorf("honest holder's reputation %+v, want 2 verified NARs", r)
	}
	liesMu.Lock()
	defer liesMu.Unlock()
	if len(lies) != 1 || lies[0] != liar+" "+hash+" NAR" {
		t.Errorf("lies reported: %q", lies)
	}
}

// A holder whose NAR answer claims another size than its narinfo's
// NarSize lied: it is blamed and the NAR comes from another holder.
func TestStoreWrongNARSize(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := swarm.NewReputation()
	s := NewStore(client, finder, swarm.Options{Rep: rep}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := testData(10<<10, 5)
	hash := randomHash(t)
	good := sts[1].add(hash, data)
	good.delay = 100 * time.Millisecond
	bad := *good
	bad.data = append(bytes.Clone(data), 'x')
	bad.size, bad.delay = int64(len(bad.data)), 0
	sts[0].put(hash, bad)
	finder.set(hash, hs...)
	liar := hs[0].ID().String()
	rep.Success(liar, time.Millisecond)
	before := successes(s, hs...)

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, s, before, hs...)
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if sts[0].nars() == 0 {
		t.Error("the liar was never asked: the test proves nothing")
	}
	if r, _ := rep.Get(liar); r.Lies != 1 || rep.Available(liar) {
		t.Errorf("liar's reputation %+v", r)
	}
}

// verifierWithUpstream is a trust.Verifier whose upstream (on loopback)
// serves the given narinfos, with no key known: they are believed on the
// strength of its URL.
func verifierWithUpstream(t *testing.T, nis ...*narinfo.NarInfo) *trust.Verifier {
	t.Helper()
	byHash := map[string]string{}
	for _, ni := range nis {
		byHash[strings.TrimPrefix(ni.StorePath, store.StoreDir+"/")[:store.HashLen]] = ni.String()
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hash, _ := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".narinfo")
		body, ok := byHash[hash]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		io.WriteString(w, body)
	}))
	t.Cleanup(up.Close)
	v, err := trust.NewVerifier(trust.VerifierOptions{Upstream: up.URL, FetchTimeout: 5 * time.Second, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// A holder that answers at once with a narinfo the verifier calls a lie
// (another NarHash than the upstream's) does not win the race against an
// honest holder that answers later: the honest narinfo is taken, the liar
// is shunned and never asked for the NAR. A path the upstream does not
// know is a miss that blames nobody.
func TestStoreLyingNarInfoDoesNotWin(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	hash, unknown := randomHash(t), randomHash(t)
	data := testData(50<<10, 6)
	honest := sts[1].add(hash, data)
	honest.delay = 300 * time.Millisecond
	liarEntry := sts[0].add(hash, testData(50<<10, 7)) // a well-formed narinfo of other content
	sts[0].add(unknown, testData(100, 8))
	sts[1].add(unknown, testData(100, 8))
	finder.set(hash, hs...)
	finder.set(unknown, hs...)

	v := verifierWithUpstream(t, honest.ni)
	rep := swarm.NewReputation()
	liar := hs[0].ID().String()
	rep.Success(liar, time.Millisecond) // ranked first
	var lies atomic.Int32
	s := NewStore(client, finder, swarm.Options{Accept: v.Accept, Rep: rep,
		OnLie: func(peer, h, what string) {
			if peer == liar && h == hash && what == "narinfo" {
				lies.Add(1)
			}
		}}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	start := time.Now()
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatalf("NarInfo: %v (the honest holder's narinfo must be taken)", err)
	}
	if ni.NarHash.String() != honest.ni.NarHash.String() || ni.URL != p2pURL(hash, honest) {
		t.Fatalf("narinfo of NarHash %s (URL %s), want the honest %s", ni.NarHash, ni.URL, honest.ni.NarHash)
	}
	if d := time.Since(start); d < honest.delay {
		t.Errorf("answered after %v, before the honest holder could", d)
	}
	if r, _ := rep.Get(liar); r.Lies != 1 || rep.Available(liar) {
		t.Errorf("liar's record %+v, available %v: want one lie and a backoff", r, rep.Available(liar))
	}
	if lies.Load() != 1 {
		t.Errorf("%d lies reported, want 1", lies.Load())
	}
	if st := v.Stats(); st.VerifiedByUpstream != 1 || st.Rejected != 1 {
		t.Errorf("verifier stats %+v", st)
	}
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("NAR: %d bytes, %v", len(got), err)
	}
	if n := sts[0].nars(); n != 0 {
		t.Errorf("the liar was asked for %d NARs", n)
	}
	// The liar's own NAR URL names content nobody vouched for: a miss.
	if _, err := s.NAR(ctx, p2pURL(hash, liarEntry), 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the liar's NAR: %v, want ErrNotFound", err)
	}

	// Unverifiable (the upstream lacks it, no trusted signature): a miss,
	// and no holder is blamed for it.
	if _, err := s.NarInfo(ctx, unknown); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unverifiable path: %v, want ErrNotFound", err)
	}
	if r, _ := rep.Get(hs[1].ID().String()); r.Failures != 0 {
		t.Errorf("honest holder blamed for an unverifiable path: %+v", r)
	}
}

// Garbage from a holder costs it reputation; a mute holder does not hold
// the lookup past its deadline, and a good holder still wins.
func TestStoreGarbageAndMuteHolders(t *testing.T) {
	hs, sts := holders(t, 1)
	good := hs[0]
	liar, mute, client := newTestHost(t), newTestHost(t), newTestHost(t)
	var liarAsked atomic.Int32
	liar.SetStreamHandler(NarInfoProtocol, func(s network.Stream) {
		defer s.Close()
		liarAsked.Add(1)
		readExactFrame(s, 32)
		writeFrame(s, []byte{StatusFound, 'g', 'a', 'r', 'b', 'a', 'g', 'e'})
	})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	mute.SetStreamHandler(NarInfoProtocol, func(s network.Stream) { <-release; s.Reset() })

	finder := newFakeFinder()
	rep := swarm.NewReputation()
	s := NewStore(client, finder, swarm.Options{Rep: rep}, testLog(t))
	ctx := context.Background()
	hash := randomHash(t)
	sts[0].add(hash, []byte("nar"))
	// The good holder is ranked last; the Parallel (3) slots are taken by
	// two bad holders and the good one.
	rep.Success(liar.ID().String(), time.Millisecond)
	rep.Success(mute.ID().String(), time.Millisecond)
	finder.set(hash, liar, mute, good)

	start := time.Now()
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.CheckPeerNarInfo(ni, hash); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("lookup took %v", d)
	}
	liarID := liar.ID().String()
	for range 100 {
		if r, _ := rep.Get(liarID); r.Failures > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r, _ := rep.Get(liarID); r.LastFailure != swarm.FailProtocol.String() || rep.Available(liarID) {
		t.Errorf("liar's reputation %+v", r)
	}

	// A backed-off holder is not asked while others answer.
	asked := liarAsked.Load()
	hash3 := randomHash(t)
	sts[0].add(hash3, []byte("nar3"))
	finder.set(hash3, liar, good)
	if _, err := s.NarInfo(ctx, hash3); err != nil {
		t.Fatal(err)
	}
	if n := liarAsked.Load(); n != asked {
		t.Errorf("backed-off liar asked again (%d times)", n-asked)
	}

	// Only a mute holder: a miss within the lookup deadline.
	hash2 := randomHash(t)
	finder.set(hash2, mute)
	start = time.Now()
	if _, err := s.NarInfo(ctx, hash2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("mute holder: %v", err)
	}
	if d := time.Since(start); d > lookupTimeout+time.Second {
		t.Errorf("mute holder held the lookup %v", d)
	}
	if r, _ := rep.Get(mute.ID().String()); r.Failures == 0 {
		t.Errorf("mute holder's reputation %+v", r)
	}
}

// A peer behind NAT reserves a slot with the relay and is reached through
// its circuit address alone; the peer protocols run over the limited
// relayed connection.
func TestRelayedTransfer(t *testing.T) {
	rc := relayv2.DefaultResources()
	rc.Limit = &relayv2.RelayLimit{Duration: time.Hour, Data: 1 << 30}
	rc.BufferSize = 64 << 10
	relayHost, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"),
		libp2p.EnableRelayService(relayv2.WithResources(rc)),
		libp2p.ForceReachabilityPublic(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relayHost.Close() })
	relayInfo := peer.AddrInfo{ID: relayHost.ID(), Addrs: relayHost.Addrs()}

	hs, sts := holders(t, 1)
	natted := hs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Wait for the relay service to start (it does once the relay host
	// believes it is public).
	if err := natted.UseRelay(ctx, relayInfo, "203.0.113.7:40000"); err != nil {
		// The first reservation may race the relay service's start; the
		// background loop retries.
		t.Logf("first reservation: %v", err)
	}
	if !natted.BehindNAT() {
		t.Fatal("host does not know it is behind NAT")
	}
	var circuit []string
	for ctx.Err() == nil {
		for _, a := range natted.CircuitAddrs() {
			circuit = append(circuit, a.String())
		}
		if len(circuit) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(circuit) == 0 {
		t.Fatal("no circuit address")
	}
	found := false
	for _, a := range natted.AnnounceAddrs() {
		found = found || isCircuit(a)
	}
	if !found {
		t.Errorf("circuit address not announced: %v", natted.AnnounceAddrs())
	}

	client := newTestHost(t)
	ai, err := AddrInfo(natted.ID().String(), circuit)
	if err != nil || len(ai.Addrs) == 0 {
		t.Fatalf("AddrInfo(%v): %+v %v", circuit, ai, err)
	}
	finder := newFakeFinder()
	s := NewStore(client, finder, swarm.Options{}, testLog(t))
	hash := randomHash(t)
	data := testData(1<<20, 9)
	e := sts[0].add(hash, data)
	finder.mu.Lock()
	finder.holders[hash] = []peer.AddrInfo{ai}
	finder.mu.Unlock()

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	if c := ConnectionTo(client, natted.ID()); !c.Relayed {
		t.Errorf("connection %+v, want relayed", c)
	}
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("relayed NAR: %d bytes, %v", len(got), err)
	}
	if n := sts[0].nars(); n != 1 {
		t.Errorf("%d NAR requests for one relayed transfer", n)
	}

	// A direct connection appears mid-transfer (as after a hole punch):
	// the transfer moves to it, byte-exact. The holder sends slowly
	// (16 KiB every 20 ms: 1.3 s for the NAR) so that the transfer, which
	// the store spools before the reader sees a byte, is still under way.
	sts[0].mu.Lock()
	e.throttle = 20 * time.Millisecond
	sts[0].mu.Unlock()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		nar, err := s.NAR(ctx, ni.URL, 0)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(nar)
		nar.Close()
		done <- result{b, err}
	}()
	for sts[0].nars() < 2 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // some bytes came over the relay
	direct := loopbackInfo(natted)
	if err := client.Connect(network.WithForceDirectDial(ctx, "test"), direct); err != nil {
		t.Fatal(err)
	}
	if c := ConnectionTo(client, natted.ID()); !c.Direct {
		t.Fatalf("connection %+v, want direct", c)
	}
	r := <-done
	if r.err != nil || !bytes.Equal(r.b, data) {
		t.Fatalf("upgraded NAR: %d bytes, %v", len(r.b), r.err)
	}
	if n := sts[0].nars(); n != 3 {
		t.Errorf("%d NAR requests, want 3 (relayed, relayed then direct)", n)
	}
	if r, _ := s.Reputation().Get(natted.ID().String()); r.Failures != 0 || r.NARs != 2 {
		t.Errorf("moving to a direct connection: record %+v, want 2 verified NARs and no failure", r)
	}
}

func TestAddrInfo(t *testing.T) {
	self := newTestHost(t)
	id := self.ID().String()
	ai, err := AddrInfo(id, []string{
		"/ip4/1.2.3.4/udp/12306/quic-v1",
		"/ip4/1.2.3.4/tcp/12306/p2p/" + id,
		"/ip4/5.6.7.8/tcp/12306/p2p/12D3KooWLRPJAA5o6KcuLNTAfHEWn95sbgCqAFxMcCPy8Pd4V3Sf/p2p-circuit",
		"/ip4/5.6.7.8/tcp/1/p2p/12D3KooWLRPJAA5o6KcuLNTAfHEWn95sbgCqAFxMcCPy8Pd4V3Sf", // another peer
		"garbage",
	})
	if err != nil || len(ai.Addrs) != 3 {
		t.Errorf("AddrInfo: %v %v", ai, err)
	}
	if _, err := AddrInfo("nope", nil); err == nil {
		t.Error("AddrInfo accepted a bad peer id")
	}
}
