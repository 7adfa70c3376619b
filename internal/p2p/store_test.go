package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/peerix/peerix/internal/store"
)

// holders starts n hosts serving one memStore each.
func holders(t *testing.T, n int) ([]*Host, []*memStore) {
	t.Helper()
	var hs []*Host
	var sts []*memStore
	for range n {
		h, st := newTestHost(t), newMemStore()
		srv := Serve(h, st, testLog(t))
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
	s := NewStore(client, finder, nil, testLog(t))
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
			if ni.URL != URLPrefix+hash+"-"+narHashOf(e)+".nar" || ni.Compression != "none" ||
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
		if r, _ := s.rep.Get(h.ID()); r.Failures != 0 {
			t.Errorf("honest not-found counted as a failure: %+v", r)
		}
	}

	if _, err := s.NarInfo(ctx, "bad"); !errors.Is(err, store.ErrBadRequest) {
		t.Errorf("bad hash: %v", err)
	}
	for _, u := range []string{"nar/p2p/x.nar", "nar/" + hash + "-" + narHashOf(e) + ".nar", URLPrefix + hash + "-" + narHashOf(e) + ".nar/.."} {
		if _, err := s.NAR(ctx, u, 0); !errors.Is(err, store.ErrBadRequest) {
			t.Errorf("NAR URL %q: %v, want ErrBadRequest", u, err)
		}
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

// A holder that breaks mid-stream: the transfer resumes from the next one
// at the byte reached; every byte arrives exactly once.
func TestStoreResumesFromAnotherHolder(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := NewReputation()
	s := NewStore(client, finder, rep, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := testData(3<<20+123, 2)
	hash := randomHash(t)
	broken := sts[0].add(hash, data)
	broken.cutAfter = 1<<20 + 17
	sts[1].add(hash, data)
	finder.set(hash, hs...)
	// The broken holder looks best.
	for range 5 {
		rep.Success(hs[0].ID(), time.Millisecond)
		rep.Success(hs[1].ID(), 300*time.Millisecond)
	}

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, s, hash, 2) // so that the broken holder ranks first
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
	if r, _ := rep.Get(hs[0].ID()); r.Failures == 0 {
		t.Errorf("the broken holder kept a clean record: %+v", r)
	}
	for i, st := range sts {
		st.mu.Lock()
		n := st.narReqs
		st.mu.Unlock()
		if n == 0 {
			t.Errorf("holder %d was never asked", i)
		}
	}
}

// A NAR that does not match its NarHash never completes, and its sender
// is penalised and avoided afterwards.
func TestStoreHashMismatch(t *testing.T) {
	hs, sts := holders(t, 2)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := NewReputation()
	s := NewStore(client, finder, rep, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := testData(200<<10, 3)
	hash := randomHash(t)
	good := sts[1].add(hash, data)
	bad := *good
	bad.data = testData(200<<10, 4) // same narinfo, other bytes
	sts[0].put(hash, bad)
	finder.set(hash, hs...)
	rep.Success(hs[0].ID(), time.Millisecond)
	rep.Success(hs[1].ID(), time.Second)

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, s, hash, 2) // so that the liar ranks first
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err == nil || len(got) >= len(data) {
		t.Fatalf("a wrong NAR was delivered whole (%d bytes, err %v)", len(got), err)
	}
	r, _ := rep.Get(hs[0].ID())
	if r.Failures < FailHashMismatch.weight() || r.LastFailure != FailHashMismatch.String() {
		t.Errorf("liar's reputation %+v", r)
	}
	// The next transfer avoids it.
	s.SetHashNARs(false) // and ReportBadNAR works for a verifier in front
	nar, err = s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("second transfer: %d bytes, %v", len(got), err)
	}
	before, _ := rep.Get(hs[1].ID())
	s.ReportBadNAR(ni.URL)
	if after, _ := rep.Get(hs[1].ID()); after.Failures <= before.Failures || rep.Available(hs[1].ID()) {
		t.Errorf("ReportBadNAR did not blame the sender: %+v", after)
	}
	s.ReportBadNAR("nar/p2p/unknown.nar") // no transfer: nothing happens
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
	rep := NewReputation()
	s := NewStore(client, finder, rep, testLog(t))
	ctx := context.Background()
	hash := randomHash(t)
	sts[0].add(hash, []byte("nar"))
	// The good holder is ranked last; parallelQueries (3) slots are
	// taken by two bad holders and the good one.
	rep.Success(liar.ID(), time.Millisecond)
	rep.Success(mute.ID(), time.Millisecond)
	finder.set(hash, liar, mute, good)

	start := time.Now()
	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckNarInfo(ni, hash); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("lookup took %v", d)
	}
	time.Sleep(100 * time.Millisecond)
	if r, _ := rep.Get(liar.ID()); r.LastFailure != FailProtocol.String() || rep.Available(liar.ID()) {
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
	if r, _ := rep.Get(mute.ID()); r.Failures == 0 {
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
	finder.holders[""] = nil
	s := NewStore(client, finder, nil, testLog(t))
	hash := randomHash(t)
	data := testData(1<<20, 9)
	sts[0].add(hash, data)
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
	if n := sts[0].narReqs; n != 1 {
		t.Errorf("%d NAR requests for one relayed transfer", n)
	}

	// A direct connection appears mid-transfer (as after a hole punch):
	// the transfer moves to it, byte-exact.
	nar, err = s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(nar, head); err != nil {
		t.Fatal(err)
	}
	direct := loopbackInfo(natted)
	if err := client.Connect(network.WithForceDirectDial(ctx, "test"), direct); err != nil {
		t.Fatal(err)
	}
	if c := ConnectionTo(client, natted.ID()); !c.Direct {
		t.Fatalf("connection %+v, want direct", c)
	}
	time.Sleep(upgradeCheck + 50*time.Millisecond)
	rest, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("upgraded NAR: %d bytes, %v", len(head)+len(rest), err)
	}
	sts[0].mu.Lock()
	n := sts[0].narReqs
	sts[0].mu.Unlock()
	if n != 3 {
		t.Errorf("%d NAR requests, want 3 (relayed, relayed then direct)", n)
	}
	if r, _ := s.rep.Get(natted.ID()); r.Failures != 0 {
		t.Errorf("moving to a direct connection counted as a failure: %+v", r)
	}
}

func TestParseURLAndAddrInfo(t *testing.T) {
	hash := "0123456789abcdfghijklmnpqrsvwxyz"
	nh := "1" + string(bytes.Repeat([]byte("a"), 51))
	h, n, err := ParseURL(URLPrefix + hash + "-" + nh + ".nar")
	if err != nil || h != hash || n != nh {
		t.Errorf("ParseURL: %q %q %v", h, n, err)
	}
	for _, u := range []string{
		"", URLPrefix, "nar/lan/" + hash + "-" + nh + ".nar", URLPrefix + hash + "-" + nh,
		URLPrefix + hash + "-z" + nh[1:] + ".nar", // first character beyond 256 bits
		URLPrefix + "../" + hash[3:] + "-" + nh + ".nar",
	} {
		if _, _, err := ParseURL(u); !errors.Is(err, store.ErrBadRequest) {
			t.Errorf("ParseURL(%q): %v", u, err)
		}
	}

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

// waitConfirmed waits until n holders confirmed the lookup's narinfo.
func waitConfirmed(t *testing.T, s *Store, hash string, n int) {
	t.Helper()
	s.mu.Lock()
	l := s.lookups[hash]
	s.mu.Unlock()
	for range 100 {
		l.mu.Lock()
		c := len(l.confirmed)
		l.mu.Unlock()
		if c >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%d holders never confirmed", n)
}
