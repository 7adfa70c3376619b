package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

// Attacks on `peerix tracker` and its relay (issue 12), each driven over
// the wire against the real binary, by an attacker written here from
// docs/protocol.md, on a simulated LAN or on loopback. Each fails against
// a tracker without the defence it checks. Each also logs a BENCH line:
// the honest peer's finds and the tracker's memory and descriptors without
// and under the attack (docs/benchmarks.md, "The tracker under attack"):
//
//	CI=true NIX_REMOTE=local go test ./test/e2e/ -run 'TestTrackerAttack' -v | grep BENCH

// heartbeat re-announces the identities beat chooses (with the client and
// addresses it gives) every 2 s, as an attacker keeping its identities
// alive does, until the returned stop is called.
func (tr *peerixProc) heartbeat(t testing.TB, ids []attackID, beat func(i int) (*http.Client, []string, bool)) (stop func()) {
	quit := make(chan struct{})
	var beats sync.WaitGroup
	beats.Go(func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			for i, a := range ids {
				if c, addrs, ok := beat(i); ok {
					tr.writeFrom(t, c, tr.hostURL, a.key, http.MethodPost, "/v1/announce", announceBody(t, a.id, addrs))
				}
			}
		}
	})
	return func() { close(quit); beats.Wait() }
}

// attackTTL is the tracker's --peer-ttl in these tests: honest daemons
// heartbeat every 10 s, the attacker every 2 s.
const attackTTL = 30 * time.Second

// TestTrackerAttackSybil: 120 throwaway identities from four networks,
// announcing the hashes an honest daemon shares with long junk addresses
// and heartbeating every 2 s, do not hide the honest holder: it is among
// the first holders of every find, and a daemon looking the paths up
// (once, as Nix does: a miss is remembered for an hour) finds them.
func TestTrackerAttackSybil(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	l := newLAN(t, "T", "A", "B", "X")
	T, A, B, X := l.host("T"), l.host("A"), l.host("B"), l.host("X")
	tr := startPeerix(t, trackerServer(t, T, attackTTL))
	key := keygen(t, "peerix-attack-a")
	da := p2pOnly(t, A, "A", tr.hostURL, fx.src, "--signing-key-file", key.secretFile)
	db := p2pOnly(t, B, "B", tr.hostURL, initStore(t, "b-store"), "--trusted-public-key", key.public)
	paths := []string{fx.byName["leaf"], fx.byName["single-exec"], fx.byName["refs"]}
	var hs []string
	for _, p := range paths {
		hs = append(hs, hashPart(p))
		waitHolder(t, tr, "A", da.peerID, hashPart(p))
	}
	bc := B.httpClient()
	before := honestFinds(bc, tr.hostURL, hs[0], da.peerID, 40, 50*time.Millisecond)
	ub := tr.usage(t)

	// The attack: 30 identities from each of four networks.
	srcs := append([]netip.Addr{X.addr}, l.extraNets(t, X, 3, T)...)
	ids := newAttackIDs(t, 120)
	junk := junkAddrs(32)
	clients := map[netip.Addr]*http.Client{}
	for _, s := range srcs {
		clients[s] = X.httpClientFrom(s)
	}
	src := func(i int) netip.Addr { return srcs[i%len(srcs)] }
	for i, a := range ids {
		c := clients[src(i)]
		if ans, err := tr.writeFrom(t, c, tr.hostURL, a.key, http.MethodPost, "/v1/announce", announceBody(t, a.id, junk)); err != nil || ans.status != 200 {
			t.Fatalf("sybil %d announce: %v %d %s", i, err, ans.status, ans.body)
		}
		if ans, err := tr.writeFrom(t, c, tr.hostURL, a.key, http.MethodPost, "/v1/packages", packagesBody(t, a.id, true, hs)); err != nil || ans.status != 200 {
			t.Fatalf("sybil %d packages: %v %d %s", i, err, ans.status, ans.body)
		}
	}
	stopBeats := tr.heartbeat(t, ids, func(i int) (*http.Client, []string, bool) { return clients[src(i)], junk, true })
	defer stopBeats()
	time.Sleep(3 * time.Second) // a round of heartbeats: the sybils are the most recently seen

	if ps := tr.mustFind(t, hs[0]); len(ps) < 100 {
		t.Fatalf("the tracker lists %d holders of %s; the attack did not take", len(ps), hs[0])
	}
	during := honestFinds(bc, tr.hostURL, hs[0], da.peerID, 40, 250*time.Millisecond)
	ud := tr.usage(t)
	benchLine(t, "Sybil hiding (120 identities, 4 networks, heartbeat 2 s)", before, during, ub, ud)
	if during.ok != during.n {
		t.Errorf("under the Sybil attack the honest holder A was among the first 16 holders in %d of %d finds; want all", during.ok, during.n)
	}
	// B's daemon looks each path up once, as Nix would.
	for _, p := range paths {
		start := time.Now()
		resp, body, err := clientDo(db.client, http.MethodGet, db.url+"/"+hashPart(p)+".narinfo")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("B's one lookup of %s under the Sybil attack: %v %v %.200s; want it found on A", p, err, resp, body)
			continue
		}
		t.Logf("B found %s on A in %v under the attack", p, time.Since(start).Round(time.Millisecond))
	}
	da.alive(t)
	db.alive(t)
	tr.alive(t)
}

// TestTrackerAttackQuota: a few identities announcing 220,000 random
// hashes each are refused past the quotas (hashes per peer and per
// network), and the index does not fill with them; requests beyond the
// limits are refused (too many hashes at once, too many identities from
// one network, a flood of finds); /v1/peers is bounded. Meanwhile the
// honest peer's finds keep working and the tracker's memory stays bounded.
func TestTrackerAttackQuota(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	l := newLAN(t, "T", "A", "B", "X")
	T, A, B, X := l.host("T"), l.host("A"), l.host("B"), l.host("X")
	tr := startPeerix(t, trackerServer(t, T, attackTTL))
	da := p2pOnly(t, A, "A", tr.hostURL, fx.src)
	h := hashPart(fx.byName["leaf"])
	waitHolder(t, tr, "A", da.peerID, h)
	bc := B.httpClient()
	before := honestFinds(bc, tr.hostURL, h, da.peerID, 40, 50*time.Millisecond)
	ub := tr.usage(t)
	srcs := l.extraNets(t, X, 3, T)
	xc := X.httpClientFrom(srcs[0])

	// The honest peer keeps asking while the attack runs.
	var during findStats
	measured := make(chan struct{})
	go func() {
		defer close(measured)
		during = honestFinds(bc, tr.hostURL, h, da.peerID, 120, 250*time.Millisecond)
	}()

	// Six identities from one network, 220,000 random hashes each, sent
	// as the protocol says: 50,000 at a time, the first part full.
	const perID, part = 220000, 50000
	ids := newAttackIDs(t, 6)
	accepted := make([]int, len(ids))
	refused := make([]string, len(ids))
	// The attacker keeps its identities alive (heartbeat every 2 s), as
	// one that wants its hashes counted must: on a loaded machine the
	// flood outlasts the peer TTL, and an identity that expired would no
	// longer count against the network's quota.
	// Only identities done sending beat: a write signed while another of
	// the same identity is in flight could arrive out of order (replay).
	var done sync.Map // identity index -> true once it sent its last part
	stopBeats := tr.heartbeat(t, ids, func(i int) (*http.Client, []string, bool) {
		_, ok := done.Load(i)
		return xc, nil, ok
	})
	var wg sync.WaitGroup
	start := time.Now()
	for i, a := range ids {
		wg.Go(func() {
			if ans, err := tr.writeFrom(t, xc, tr.hostURL, a.key, http.MethodPost, "/v1/announce", announceBody(t, a.id, nil)); err != nil || ans.status != 200 {
				refused[i] = fmt.Sprintf("announce: %v %d %s", err, ans.status, ans.body)
				return
			}
			defer done.Store(i, true)
			for p := 0; p*part < perID; p++ {
				n := min(part, perID-p*part)
				hashes := make([]string, n)
				for k := range hashes {
					hashes[k] = randomNix32(32)
				}
				ans, err := tr.writeFrom(t, xc, tr.hostURL, a.key, http.MethodPost, "/v1/packages", packagesBody(t, a.id, p == 0, hashes))
				if err != nil || ans.status != 200 {
					refused[i] = fmt.Sprintf("part %d: %v HTTP %d %s", p+1, err, ans.status, ans.Code)
					return
				}
				accepted[i] += n
			}
		})
		if i%2 == 1 {
			wg.Wait() // two at a time
		}
	}
	wg.Wait()
	stopBeats()
	total := 0
	for i := range ids {
		total += accepted[i]
		t.Logf("identity %d: %d hashes accepted; then %s", i, accepted[i], refused[i])
	}
	t.Logf("hash flood: %d of %d hashes accepted in %v", total, len(ids)*perID, time.Since(start).Round(time.Millisecond))
	if total > 1_000_000 {
		t.Errorf("the tracker took %d hashes from one network's identities; want at most its quota of 1,000,000 (200,000 per peer)", total)
	}
	for i := range ids {
		if accepted[i] > 200000 || !strings.Contains(refused[i], "HTTP 403 quota") {
			t.Errorf("identity %d: %d hashes accepted, then %q; want at most 200,000, then 403 quota", i, accepted[i], refused[i])
		}
	}
	// The index: no more than the quotas let in, and not saturated for
	// long (a saturated filter sends every lookup to /v1/find).
	var (
		entries uint32
		size    uint64
		fp      float64
	)
	took, err := poll(45*time.Second, time.Second, func() (bool, error) {
		entries, size, fp = indexFill(t, bc, tr.hostURL)
		return fp < 0.2, nil
	})
	if err != nil {
		t.Errorf("the hash index holds %d hashes in %d bytes, false-positive rate %.2f, %v after the flood: saturated", entries, size, fp, took.Round(time.Second))
	} else {
		t.Logf("the hash index holds %d hashes in %d bytes, false-positive rate %.4f, %v after the flood", entries, size, fp, took.Round(time.Second))
	}
	if entries > 1_000_000+1000 {
		t.Errorf("the hash index holds %d hashes; want only what the quotas let in", entries)
	}

	// Too many hashes at once.
	big := make([]string, 60000)
	for k := range big {
		big[k] = randomNix32(32)
	}
	fresh := newAttackIDs(t, 1)[0]
	xc2 := X.httpClientFrom(srcs[1])
	tr.writeFrom(t, xc2, tr.hostURL, fresh.key, http.MethodPost, "/v1/announce", announceBody(t, fresh.id, nil))
	if ans, err := tr.writeFrom(t, xc2, tr.hostURL, fresh.key, http.MethodPost, "/v1/packages", packagesBody(t, fresh.id, true, big)); err != nil || ans.status != 413 {
		t.Errorf("60,000 hashes in one request: %v HTTP %d %s; want 413", err, ans.status, ans.Code)
	}

	// Identities: 300 from one network.
	var ok, quota int
	for _, a := range newAttackIDs(t, 300) {
		ans, err := tr.writeFrom(t, xc2, tr.hostURL, a.key, http.MethodPost, "/v1/announce", announceBody(t, a.id, junkAddrs(32)))
		switch {
		case err != nil:
			t.Fatal(err)
		case ans.status == 200:
			ok++
		case ans.status == 403 && ans.Code == "quota":
			quota++
		}
	}
	t.Logf("identity flood: %d of 300 registered, %d refused by quota", ok, quota)
	if ok > 256 || quota == 0 {
		t.Errorf("300 identities from one network: %d registered, %d refused; want at most 256 registered", ok, quota)
	}

	// A flood of finds from a third network.
	xc3 := X.httpClientFrom(srcs[2])
	var limited, other atomic.Int64
	var fw sync.WaitGroup
	for range 16 {
		fw.Go(func() {
			for range 250 {
				code, _, err := getJSON(xc3, tr.hostURL+"/v1/find/"+randomNix32(32), nil)
				switch {
				case err == nil && code == 429:
					limited.Add(1)
				case err != nil || code != 200:
					other.Add(1)
				}
			}
		})
	}
	fw.Wait()
	t.Logf("find flood: 4000 finds, %d refused with 429, %d other failures", limited.Load(), other.Load())
	if limited.Load() == 0 {
		t.Error("4000 finds as fast as one network can ask: none refused with 429")
	}

	// /v1/peers is bounded and paged.
	var page struct {
		Peers []trackerPeer `json:"peers"`
		Next  string        `json:"next"`
	}
	code, body, err := getJSON(bc, tr.hostURL+"/v1/peers?limit=100000", &page)
	if err != nil || code != 200 || len(page.Peers) > 1000 {
		t.Errorf("GET /v1/peers?limit=100000: HTTP %d, %d peers, %d bytes, %v; want at most 1000", code, len(page.Peers), len(body), err)
	}
	code, body, err = getJSON(bc, tr.hostURL+"/v1/peers", &page)
	if err != nil || code != 200 || len(page.Peers) > 100 || page.Next == "" {
		t.Errorf("GET /v1/peers: HTTP %d, %d peers, %d bytes, next %q, %v; want a page of at most 100 and a next cursor", code, len(page.Peers), len(body), page.Next, err)
	} else {
		t.Logf("GET /v1/peers: %d peers, %d bytes, next %s", len(page.Peers), len(body), page.Next)
	}

	<-measured
	ud := tr.usage(t)
	benchLine(t, "hash, identity and find floods", before, during, ub, ud)
	if during.ok != during.n {
		t.Errorf("the honest peer's finds under the floods: %s; want all to find A", during)
	}
	if ud.hwmMiB > 400 {
		t.Errorf("tracker memory peaked at %.0f MiB under the floods; want it bounded", ud.hwmMiB)
	}
	da.alive(t)
	tr.alive(t)
}

// TestTrackerAttackOpenRelay: hosts that never registered with the tracker
// can neither reserve a slot on its relay nor be joined through it; hosts
// that did get relayed connections with data and time limits.
func TestTrackerAttackOpenRelay(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr := startPeerix(t, trackerServer(t, nil, attackTTL))
	var info trackerInfo
	if code, body, err := getJSON(tr.client, tr.url+"/v1/info", &info); err != nil || code != 200 || info.Relay == nil {
		t.Fatalf("GET /v1/info: %d %v %.300s", code, err, body)
	}
	relayID, err := peer.Decode(info.Relay.PeerID)
	if err != nil {
		t.Fatal(err)
	}
	relay := peer.AddrInfo{ID: relayID}
	for _, s := range info.Relay.Addrs {
		relay.Addrs = append(relay.Addrs, ma.StringCast(s))
	}

	// An honest peer holding a hash, for the finds.
	honest := newAttackIDs(t, 1)[0]
	hh := randomNix32(32)
	tr.writeFrom(t, tr.client, tr.url, honest.key, http.MethodPost, "/v1/announce", announceBody(t, honest.id, []string{"/ip4/127.0.0.1/tcp/1"}))
	tr.writeFrom(t, tr.client, tr.url, honest.key, http.MethodPost, "/v1/packages", packagesBody(t, honest.id, true, []string{hh}))
	before := honestFinds(tr.client, tr.url, hh, honest.id, 40, 20*time.Millisecond)
	ub := tr.usage(t)

	keys := newAttackIDs(t, 2)
	listener, err := libp2p.New(libp2p.Identity(keys[0].key), libp2p.ListenAddrStrings("/p2p-circuit"), libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	dialer, err := libp2p.New(libp2p.Identity(keys[1].key), libp2p.NoListenAddrs, libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	const proto = "/not-peerix/bulk/1.0.0"
	var received atomic.Int64
	listener.SetStreamHandler(proto, func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		received.Add(n)
		s.Close()
	})
	circuit, err := ma.NewMultiaddr("/p2p/" + relayID.String() + "/p2p-circuit")
	if err != nil {
		t.Fatal(err)
	}
	target := peer.AddrInfo{ID: listener.ID()}
	for _, a := range relay.Addrs {
		target.Addrs = append(target.Addrs, a.Encapsulate(circuit))
	}
	dial := func() (network.Stream, error) {
		cctx := network.WithAllowLimitedConn(ctx, "attack")
		if err := dialer.Connect(cctx, target); err != nil {
			return nil, err
		}
		return dialer.NewStream(cctx, listener.ID(), proto)
	}

	// Never registered: no slot, no circuit.
	if err := listener.Connect(ctx, relay); err != nil {
		t.Fatalf("connecting to the relay: %v", err)
	}
	if rsv, err := client.Reserve(ctx, listener, relay); err == nil {
		t.Errorf("a host that never registered with the tracker reserved a relay slot (expires %v, limits %v / %d bytes)", rsv.Expiration, rsv.LimitDuration, rsv.LimitData)
		if s, err := dial(); err == nil {
			n, _ := io.Copy(s, io.LimitReader(rand.Reader, 64<<20))
			s.Close()
			t.Errorf("and another unregistered host relayed %d bytes of %s to it", n, proto)
		}
	} else {
		t.Logf("unregistered host: reservation refused: %v", err)
	}

	// Registered: a slot, and connections with limits.
	for _, k := range keys {
		if ans, err := tr.writeFrom(t, tr.client, tr.url, k.key, http.MethodPost, "/v1/announce", announceBody(t, k.id, nil)); err != nil || ans.status != 200 {
			t.Fatalf("announce: %v %d %s", err, ans.status, ans.body)
		}
	}
	rsv, err := client.Reserve(ctx, listener, relay)
	if err != nil {
		t.Fatalf("a registered host could not reserve a relay slot: %v", err)
	}
	t.Logf("registered host: reservation until %v, limits %v and %d bytes a connection", rsv.Expiration.Round(time.Second), rsv.LimitDuration, rsv.LimitData)
	if rsv.LimitDuration <= 0 || rsv.LimitData <= 0 {
		t.Errorf("relayed connections have no limit (duration %v, data %d): the relay carries anything for as long as anyone likes", rsv.LimitDuration, rsv.LimitData)
	}
	s, err := dial()
	if err != nil {
		t.Fatalf("a registered host could not reach another through the relay: %v", err)
	}
	if !s.Conn().Stat().Limited {
		t.Errorf("the relayed connection is not limited")
	}
	start := time.Now()
	n, err := io.Copy(s, io.LimitReader(rand.Reader, 64<<20))
	s.CloseWrite()
	io.Copy(io.Discard, s)
	t.Logf("registered hosts relayed %d bytes of %s in %v (%v)", n, proto, time.Since(start).Round(time.Millisecond), err)
	during := honestFinds(tr.client, tr.url, hh, honest.id, 40, 20*time.Millisecond)
	ud := tr.usage(t)
	benchLine(t, "open relay (unregistered reservation, then 64 MiB between registered hosts)", before, during, ub, ud)
	tr.alive(t)
}

// TestTrackerAttackAddressProbes: an announcement whose addresses point a
// daemon at its own loopback, link-local neighbours, the unspecified
// address, multicast or a unix socket is stored without them, so a daemon
// looking the hash up dials none of them; the same addresses from an
// announcer on the tracker's own loopback keep their loopback ones.
func TestTrackerAttackAddressProbes(t *testing.T) {
	fixtures(t)
	requireNetns(t)
	t.Parallel()
	l := newLAN(t, "T", "B", "X")
	T, B, X := l.host("T"), l.host("B"), l.host("X")
	tr := startPeerix(t, trackerServer(t, T, attackTTL))
	db := p2pOnly(t, B, "B", tr.hostURL, initStore(t, "b-store"))
	probe := B.listenTCP(t, "127.0.0.1:2222")
	var probed atomic.Int64
	go func() {
		for {
			c, err := probe.Accept()
			if err != nil {
				return
			}
			probed.Add(1)
			c.Close()
		}
	}()

	bc := B.httpClient()
	hh := randomNix32(32)
	before := honestFinds(bc, tr.hostURL, hh, "", 40, 20*time.Millisecond)
	ub := tr.usage(t)

	legit := fmt.Sprintf("/ip4/%s/tcp/1", X.addr)
	probes := []string{
		"/ip4/127.0.0.1/tcp/2222", "/ip6/::1/tcp/2222", "/dns/localhost/tcp/2222", "/dns4/localhost/tcp/2222",
		"/ip4/0.0.0.0/tcp/2222", "/ip6/::/tcp/2222", "/ip4/169.254.169.254/tcp/80", "/ip6/fe80::1/tcp/2222",
		"/ip4/224.0.0.251/udp/5353/quic-v1", "/unix/run/docker.sock", "/ip4/127.0.0.1/udp/2222/quic-v1",
		"/ip4/" + B.addr.String() + "/tcp/22/ws",
	}
	a := newAttackIDs(t, 1)[0]
	h := randomNix32(32)
	xc := X.httpClient()
	ans, err := tr.writeFrom(t, xc, tr.hostURL, a.key, http.MethodPost, "/v1/announce", announceBody(t, a.id, append(slices.Clone(probes), legit)))
	if err != nil || ans.status != 200 {
		t.Fatalf("announce: %v %d %s", err, ans.status, ans.body)
	}
	if ans, err := tr.writeFrom(t, xc, tr.hostURL, a.key, http.MethodPost, "/v1/packages", packagesBody(t, a.id, true, []string{h})); err != nil || ans.status != 200 {
		t.Fatalf("packages: %v %d %s", err, ans.status, ans.body)
	}
	var found trackerPeers
	if code, body, err := getJSON(bc, tr.hostURL+"/v1/find/"+h, &found); err != nil || code != 200 || len(found.Peers) != 1 {
		t.Fatalf("find: %d %v %.300s", code, err, body)
	}
	if got := found.Peers[0].Addrs; !slices.Equal(got, []string{legit}) {
		t.Errorf("the tracker hands out %v for an announcer on %s; want only %s", got, X.addr, legit)
	}

	// B's daemon looks the hash up (it is in the tracker's index).
	time.Sleep(time.Second)
	resp, body, err := clientDo(db.client, http.MethodGet, db.url+"/"+h+".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("B's lookup: HTTP %d %.100s", resp.StatusCode, body)
	time.Sleep(500 * time.Millisecond)
	if n := probed.Load(); n > 0 {
		t.Errorf("B's daemon connected %d times to its own 127.0.0.1:2222 because an announcement said so", n)
	}

	// From the tracker's own loopback the loopback addresses stay.
	local := newAttackIDs(t, 1)[0]
	ans, err = tr.writeFrom(t, tr.client, tr.url, local.key, http.MethodPost, "/v1/announce", announceBody(t, local.id, append(slices.Clone(probes), legit)))
	if err != nil || ans.status != 200 {
		t.Fatalf("announce from loopback: %v %d %s", err, ans.status, ans.body)
	}
	lp, _ := peerByID(tr.mustPeers(t), local.id)
	t.Logf("announced from the tracker's loopback, stored: %v", lp.Addrs)
	for _, want := range []string{"/ip4/127.0.0.1/tcp/2222", "/ip6/::1/tcp/2222", legit} {
		if !slices.Contains(lp.Addrs, want) {
			t.Errorf("from the tracker's loopback %s was dropped: %v", want, lp.Addrs)
		}
	}
	for _, bad := range []string{"/ip4/0.0.0.0/tcp/2222", "/unix/run/docker.sock", "/ip6/fe80::1/tcp/2222"} {
		if slices.Contains(lp.Addrs, bad) {
			t.Errorf("from the tracker's loopback %s was kept: %v", bad, lp.Addrs)
		}
	}
	during := honestFinds(bc, tr.hostURL, hh, "", 40, 20*time.Millisecond)
	benchLine(t, "address probes", before, during, ub, tr.usage(t))
	db.alive(t)
	tr.alive(t)
}

// capturedWrite is a signed write as a man in the middle saw it.
type capturedWrite struct {
	method, path string
	body         []byte
	sig          string
}

// TestTrackerAttackSignatureReplay: a man in the middle between a daemon
// and its tracker (here an HTTP proxy the daemon is configured with)
// captures its signed writes. Replayed on another route (the daemon's
// withheld goodbye posted as an announce or a packages request) or at
// another tracker, they are refused; so is a write signed the old way,
// over the body alone.
func TestTrackerAttackSignatureReplay(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	trA := startPeerix(t, trackerServer(t, nil, attackTTL))
	trB := startPeerix(t, trackerServer(t, nil, attackTTL))
	target, _ := url.Parse(trA.url)
	forward := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var captured []capturedWrite
	withheld := make(chan capturedWrite, 1)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sig := r.Header.Get(signatureHeader); sig != "" {
			body, _ := io.ReadAll(r.Body)
			c := capturedWrite{r.Method, r.URL.Path, body, sig}
			mu.Lock()
			captured = append(captured, c)
			mu.Unlock()
			if r.Method == http.MethodDelete {
				// The goodbye never reaches the tracker.
				select {
				case withheld <- c:
				default:
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"ok":true,"removed":true}`+"\n")
				return
			}
			r.Body = io.NopCloser(strings.NewReader(string(body)))
		}
		forward.ServeHTTP(w, r)
	}))
	defer proxy.Close()

	root := storeDir(t, "d-store")
	cpStore(t, fx.src, root)
	d := startPeerix(t, p2pDaemon(nil, proxy.URL, root, t.TempDir()+"/state"))
	h := hashPart(fx.byName["leaf"])
	waitHolder(t, trA, "D", d.peerID, h)
	before := honestFinds(trA.client, trA.url, h, d.peerID, 40, 20*time.Millisecond)
	ub := trA.usage(t)
	var announce capturedWrite
	mu.Lock()
	for _, c := range captured {
		if c.path == "/v1/announce" {
			announce = c
		}
	}
	mu.Unlock()
	if announce.body == nil {
		t.Fatal("no announce captured")
	}
	want := func(what string, a trackerAnswer, err error, status int) {
		t.Helper()
		switch {
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		case a.status != status:
			t.Errorf("%s: HTTP %d %s %.200s; want %d", what, a.status, a.Code, a.body, status)
		default:
			t.Logf("%s: HTTP %d %s", what, a.status, a.Code)
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second}

	// At another tracker.
	a, err := sendWrite(hc, trB.url, announce.method, announce.path, announce.body, announce.sig)
	want("D's captured announce replayed at another tracker", a, err, 401)
	if ps := trB.mustPeers(t); len(ps) != 0 {
		t.Errorf("the other tracker lists %v after the replay", ids(ps))
	}

	// D's goodbye, withheld, replayed on the other write routes.
	if _, err := d.stop(syscall.SIGTERM, stopTimeout); err != nil {
		t.Fatal(err)
	}
	var del capturedWrite
	select {
	case del = <-withheld:
	case <-time.After(5 * time.Second):
		t.Fatal("D sent no DELETE on SIGTERM")
	}
	a, err = sendWrite(hc, trA.url, http.MethodPost, "/v1/announce", del.body, del.sig)
	want("D's withheld DELETE replayed as POST /v1/announce", a, err, 401)
	a, err = sendWrite(hc, trA.url, http.MethodPost, "/v1/packages", del.body, del.sig)
	want("D's withheld DELETE replayed as POST /v1/packages", a, err, 401)
	if p, ok := peerByID(trA.mustPeers(t), d.peerID); ok && len(p.Addrs) == 0 {
		t.Errorf("the replayed goodbye re-registered D without addresses: %+v", p)
	}
	during := honestFinds(trA.client, trA.url, h, d.peerID, 40, 20*time.Millisecond)
	ud := trA.usage(t)
	a, err = sendWrite(hc, trA.url, del.method, del.path, del.body, del.sig)
	want("D's DELETE delivered as sent", a, err, 200)
	if ps := trA.mustPeers(t); slices.Contains(ids(ps), d.peerID) {
		t.Errorf("D still listed after its DELETE: %v", ids(ps))
	}

	// The old scheme: a signature over the body alone.
	key, me := newPeerKey(t)
	body := announceBody(t, me, nil)
	sig, err := key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	a, err = sendWrite(hc, trA.url, http.MethodPost, "/v1/announce", body, base64Std(sig))
	want("an announce signed over the body alone (v1)", a, err, 401)
	if a.Code != "" && a.status == 401 && a.Code != "old_signature" {
		t.Errorf("a v1 signature: code %q, want old_signature", a.Code)
	}
	benchLine(t, "signature replay (cross-route, cross-tracker, v1)", before, during, ub, ud)
	trA.alive(t)
	trB.alive(t)
}
