package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// A simulated internet with home routers, in network namespaces:
//
//	            internet: bridge br0 in its own namespace, one /24 from
//	            11.0.0.0/8 (public to libp2p, assigned only in here)
//	     ┌───────────────┼────────────────┐
//	 tracker T        router RA          router RB        (WAN .2, .10, .11)
//	 (public)         MASQUERADE         MASQUERADE
//	                  drops NEW from     drops NEW from
//	                  the WAN            the WAN
//	                     │                  │
//	                  host A             host B           (10.x/24, 192.168.x/24)
//
// libp2p hole-punches only between public-classified addresses
// (/work/shared/notes/libp2p-nat.md), so the "internet" uses a range that
// manet.IsPublicAddr calls public. No namespace has a route out, and the
// range is assigned nowhere but here, so no packet can leave.

// natTracker is the tracker host's label.
const natTracker = "T"

// natNet is one simulated internet with NATed hosts behind home routers.
type natNet struct {
	id      string
	wan     netip.Prefix
	inet    string  // namespace holding the internet's bridge
	tracker *nsHost // a public host on the internet
	hosts   map[string]*nsHost
	routers map[string]*natRouter // by the label of the host behind it
	ipt     string                // the iptables that works in namespaces here
}

// natRouter is a home router: WAN leg on the internet (its nsHost addr),
// LAN leg to one private host.
type natRouter struct {
	*nsHost
	lan     netip.Prefix
	lanAddr netip.Addr
	inner   *nsHost
}

// requireNAT skips the test unless network namespaces and iptables are
// usable here; under CI=true it fails instead.
func requireNAT(t testing.TB) {
	t.Helper()
	requireNetns(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		if _, err2 := exec.LookPath("iptables-legacy"); err2 != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("CI=true but iptables is not on PATH: the NAT tests need it")
			}
			t.Skip("iptables not found on PATH: the NAT tests need it")
		}
	}
}

// newNATNet builds the internet, the tracker host and, for every label, a
// private host behind its own router; all are removed when the test ends,
// whatever happened.
func newNATNet(t testing.TB, labels ...string) *natNet {
	t.Helper()
	requireNAT(t)
	set := newNetnsSet(t)
	rnd := randomBytes(t, 6)
	n := &natNet{
		id:      set.id,
		wan:     netip.PrefixFrom(netip.AddrFrom4([4]byte{11, rnd[0], rnd[1], 0}), 24),
		hosts:   map[string]*nsHost{},
		routers: map[string]*natRouter{},
	}
	// The range must be public to libp2p, or no hole punching is even tried.
	if a := withLast(n.wan, 2); !manet.IsPublicAddr(ma.StringCast("/ip4/" + a.String() + "/udp/1/quic-v1")) {
		t.Fatalf("%s is not a public address to libp2p; the simulated internet needs one", a)
	}

	n.inet = set.addBridge("inet")
	n.tracker = &nsHost{label: natTracker, addr: withLast(n.wan, 2)}
	n.tracker.ns = set.add("t")
	set.plug(n.inet, "vt", n.tracker.ns, "eth0", n.tracker.addr)
	links := [][2]string{{n.tracker.ns, "eth0"}}

	for i, label := range labels {
		// Distinct private ranges, as two homes would have.
		var lan netip.Prefix
		switch i {
		case 0:
			lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1 + rnd[2]%254, rnd[3], 0}), 24)
		case 1:
			lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, rnd[4], 0}), 24)
		default:
			lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + i), rnd[5], 0}), 24)
		}
		r := &natRouter{
			nsHost:  &nsHost{label: "R" + label, addr: withLast(n.wan, byte(10+i))},
			lan:     lan,
			lanAddr: withLast(lan, 1),
		}
		h := &nsHost{label: label, addr: withLast(lan, 2)}
		r.inner = h
		r.ns = set.add("r" + strings.ToLower(label))
		h.ns = set.add(strings.ToLower(label))
		set.plug(n.inet, "vr"+strconv.Itoa(i), r.ns, "wan", r.addr)
		mustIP(t, "-n", r.ns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		mustIP(t, "-n", r.ns, "addr", "add", netip.PrefixFrom(r.lanAddr, 24).String(), "dev", "lan")
		mustIP(t, "-n", r.ns, "link", "set", "lan", "up")
		mustIP(t, "-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr, 24).String(), "dev", "eth0")
		mustIP(t, "-n", h.ns, "link", "set", "eth0", "up")
		mustIP(t, "-n", h.ns, "route", "add", "default", "via", r.lanAddr.String())
		nsRun(t, r.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		n.routers[label] = r
		n.hosts[label] = h
		links = append(links, [2]string{r.ns, "wan"}, [2]string{r.ns, "lan"}, [2]string{h.ns, "eth0"})
	}
	n.ipt = pickIPTables(t, n.tracker.ns)
	for _, label := range labels {
		n.natRules(t, label)
	}

	set.waitLinksUp(links...)
	var desc []string
	for _, label := range labels {
		r := n.routers[label]
		desc = append(desc, fmt.Sprintf("%s=%s behind %s (WAN %s)", label, r.inner.addr, r.label, r.addr))
	}
	t.Logf("internet %s (namespaces %s-*): tracker T=%s; %s; iptables: %s", n.wan, n.id, n.tracker.addr, strings.Join(desc, "; "), n.ipt)
	return n
}

// natRules makes the router of label a home router: MASQUERADE on the WAN,
// forward what the LAN starts and its replies, nothing else; unsolicited
// new packets to the router itself dropped (without that rule the router
// answers early punch packets and every punch fails). Chain pxacct only
// counts traffic between this router's LAN and the tracker or the other
// routers' WAN addresses, so a test can tell direct from relayed bytes.
func (n *natNet) natRules(t testing.TB, label string) {
	t.Helper()
	r := n.routers[label]
	ipt := func(args ...string) {
		t.Helper()
		nsRun(t, r.ns, n.ipt, args...)
	}
	ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
	ipt("-N", "pxacct")
	acct := []netip.Addr{n.tracker.addr}
	for _, other := range n.routers {
		if other != r {
			acct = append(acct, other.addr)
		}
	}
	for _, a := range acct {
		// UDP (QUIC) first, so the next rule counts the rest (TCP).
		ipt("-A", "pxacct", "-i", "wan", "-s", a.String(), "-p", "udp", "-j", "RETURN")
		ipt("-A", "pxacct", "-i", "wan", "-s", a.String(), "-j", "RETURN")
		ipt("-A", "pxacct", "-o", "wan", "-d", a.String(), "-j", "RETURN")
	}
	ipt("-A", "FORWARD", "-j", "pxacct")
	ipt("-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
	ipt("-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	ipt("-A", "FORWARD", "-i", "wan", "-j", "DROP")
	ipt("-P", "FORWARD", "DROP")
	ipt("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
}

// pickIPTables finds the iptables that works in a network namespace here
// (iptables-nft and iptables-legacy both may, or only one).
func pickIPTables(t testing.TB, ns string) string {
	t.Helper()
	var errs []string
	for _, c := range []string{"iptables", "iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(c); err != nil {
			continue
		}
		_, err1 := nsOutput(ns, c, "-t", "nat", "-S")
		_, err2 := nsOutput(ns, c, "-A", "INPUT", "-i", "lo", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
		_, err3 := nsOutput(ns, c, "-D", "INPUT", "-i", "lo", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
		if err := errors.Join(err1, err2, err3); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		return c
	}
	msg := "no iptables works in a network namespace here: " + strings.Join(errs, "; ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// nsOutput runs a program in namespace ns (bounded) and returns its output.
func nsOutput(ns, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	cmd := inNetns(exec.CommandContext(ctx, name, args...), ns)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in namespace %s: %s %s: %w: %s", ns, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func nsRun(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	out, err := nsOutput(ns, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// natCounters is what a router's iptables counted, in bytes: from and to
// each of the tracker and the other routers' WAN addresses (forwarded
// traffic of its LAN), and its drops.
type natCounters struct {
	from, to    map[netip.Addr]uint64
	fromUDP     map[netip.Addr]uint64 // the part of from that was UDP (QUIC)
	inputDrop   uint64                // unsolicited new packets to the router itself
	forwardDrop uint64                // unsolicited packets from the WAN to the LAN
}

func (n *natNet) counters(t testing.TB, label string) natCounters {
	t.Helper()
	r := n.routers[label]
	c := natCounters{from: map[netip.Addr]uint64{}, to: map[netip.Addr]uint64{}, fromUDP: map[netip.Addr]uint64{}}
	// pkts bytes target prot opt in out source destination
	parse := func(chain string, each func(f []string, bytes uint64)) {
		out := nsRun(t, r.ns, n.ipt, "-L", chain, "-v", "-n", "-x")
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 {
				continue
			}
			b, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				continue
			}
			each(f, b)
		}
	}
	parse("pxacct", func(f []string, b uint64) {
		if f[5] == "wan" {
			c.from[netip.MustParseAddr(f[7])] += b
			if f[3] == "udp" || f[3] == "17" {
				c.fromUDP[netip.MustParseAddr(f[7])] += b
			}
		} else if f[6] == "wan" {
			c.to[netip.MustParseAddr(f[8])] += b
		}
	})
	parse("INPUT", func(f []string, b uint64) {
		if f[2] == "DROP" && f[5] == "wan" {
			c.inputDrop += b
		}
	})
	parse("FORWARD", func(f []string, b uint64) {
		if f[2] == "DROP" && f[5] == "wan" {
			c.forwardDrop += b
		}
	})
	return c
}

// verifyNAT checks the topology itself: addresses classified as libp2p
// sees them; the tracker host reachable over TCP and UDP from every
// private host, which it sees at its router's WAN address (MASQUERADE),
// replies coming back; the private hosts unreachable from each other, by
// private address or through the other's router, and unreachable from the
// internet even with a route to them.
func verifyNAT(t *testing.T, n *natNet) {
	t.Helper()
	start := time.Now()
	public := func(a netip.Addr) bool {
		return manet.IsPublicAddr(ma.StringCast("/ip4/" + a.String() + "/udp/1/quic-v1"))
	}
	if !public(n.tracker.addr) {
		t.Errorf("tracker address %s is not public to libp2p", n.tracker.addr)
	}
	labels := slices.Sorted(maps.Keys(n.hosts))
	for _, l := range labels {
		if r := n.routers[l]; !public(r.addr) {
			t.Errorf("router %s's WAN address %s is not public to libp2p", r.label, r.addr)
		}
		if h := n.hosts[l]; public(h.addr) {
			t.Errorf("host %s's address %s is public to libp2p; it must be private", h.label, h.addr)
		}
	}

	// The tracker host, from every private host: TCP and UDP, NATed.
	tln := n.tracker.listenTCP(t, net.JoinHostPort(n.tracker.addr.String(), "0"))
	tudp := n.tracker.listenUDP(t, 0)
	tport := tln.Addr().(*net.TCPAddr).Port
	uport := tudp.LocalAddr().(*net.UDPAddr).Port
	seen := make(chan netip.Addr, 16)
	go func() {
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	for _, l := range labels {
		h, r := n.hosts[l], n.routers[l]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := h.dial(ctx, "tcp4", net.JoinHostPort(n.tracker.addr.String(), strconv.Itoa(tport)))
		cancel()
		if err != nil {
			t.Fatalf("host %s cannot reach the tracker host over TCP: %v", l, err)
		}
		c.Close()
		select {
		case src := <-seen:
			if src != r.addr {
				t.Errorf("the tracker host sees host %s's TCP connection from %s, want its router's WAN address %s (MASQUERADE)", l, src, r.addr)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("the tracker host never accepted host %s's connection", l)
		}

		u := h.listenUDP(t, 0)
		msg := []byte("ping from " + l)
		if _, err := u.WriteToUDPAddrPort(msg, netip.AddrPortFrom(n.tracker.addr, uint16(uport))); err != nil {
			t.Fatalf("host %s: UDP to the tracker host: %v", l, err)
		}
		buf := make([]byte, 64)
		_ = tudp.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, from, err := tudp.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:m], msg) {
			t.Fatalf("the tracker host did not get host %s's UDP datagram: %v %q", l, err, buf[:m])
		}
		if from.Addr().Unmap() != r.addr {
			t.Errorf("the tracker host sees host %s's UDP datagram from %s, want %s", l, from, r.addr)
		}
		if _, err := tudp.WriteToUDPAddrPort([]byte("pong"), from); err != nil {
			t.Fatal(err)
		}
		_ = u.SetReadDeadline(time.Now().Add(3 * time.Second))
		if m, _, err := u.ReadFromUDPAddrPort(buf); err != nil || string(buf[:m]) != "pong" {
			t.Errorf("host %s got no UDP reply from the tracker host through its router: %v", l, err)
		}
	}

	// Nothing unsolicited gets in: each private host listens (TCP and UDP)
	// and everybody else tries its private address and its router's WAN
	// address. Negative checks run in parallel, each bounded.
	var (
		mu       sync.Mutex
		breaches []string
		wg       sync.WaitGroup
	)
	breach := func(s string) {
		mu.Lock()
		breaches = append(breaches, s)
		mu.Unlock()
	}
	var routesAdded [][]string
	for _, l := range labels {
		h, r := n.hosts[l], n.routers[l]
		ln := h.listenTCP(t, "0.0.0.0:0")
		port := ln.Addr().(*net.TCPAddr).Port
		u := h.listenUDP(t, port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				breach(fmt.Sprintf("host %s accepted a TCP connection from %s", l, c.RemoteAddr()))
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 64)
			for {
				m, from, err := u.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				breach(fmt.Sprintf("host %s got an unsolicited UDP datagram %q from %s", l, buf[:m], from))
			}
		}()
		// The tracker host gets a route to the private range through the
		// router, so only the router's rules stand in the way.
		route := []string{"-n", n.tracker.ns, "route", "add", r.lan.String(), "via", r.addr.String()}
		mustIP(t, route...)
		routesAdded = append(routesAdded, route)

		var froms []*nsHost
		for _, o := range labels {
			if o != l {
				froms = append(froms, n.hosts[o])
			}
		}
		froms = append(froms, n.tracker)
		for _, f := range froms {
			for _, to := range []netip.Addr{h.addr, r.addr} {
				target := netip.AddrPortFrom(to, uint16(port))
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					c, err := f.dial(ctx, "tcp4", target.String())
					if err == nil {
						c.Close()
						breach(fmt.Sprintf("%s connected to host %s at %s over TCP", f.label, l, target))
					} else if strings.Contains(err.Error(), "connection refused") {
						// A refusal is an answer: the router or host spoke to a stranger.
						breach(fmt.Sprintf("%s got an answer (connection refused) from %s: unsolicited packets must be dropped", f.label, target))
					}
					var uc *net.UDPConn
					if err := f.do(func() (err error) {
						uc, err = net.ListenUDP("udp4", nil)
						return err
					}); err == nil {
						_, _ = uc.WriteToUDPAddrPort([]byte("intrusion from "+f.label), target)
						uc.Close()
					}
				}()
			}
		}
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // stray datagrams would have arrived by now
	for _, route := range routesAdded {
		del := slices.Clone(route)
		del[3] = "del"
		mustIP(t, del...)
	}
	mu.Lock()
	for _, b := range breaches {
		t.Errorf("NAT breach: %s", b)
	}
	mu.Unlock()
	for _, l := range labels {
		c := n.counters(t, l)
		if c.inputDrop == 0 || c.forwardDrop == 0 {
			t.Errorf("router R%s dropped %d bytes of new packets to itself and %d forwarded from the WAN; want both > 0 after the intrusion attempts", l, c.inputDrop, c.forwardDrop)
		}
	}
	t.Logf("topology verified in %v: tracker reachable from %v through their routers (MASQUERADE); no direct path between private hosts or from the internet", time.Since(start).Round(time.Millisecond), labels)
}

// TestP2PNATTopology checks the simulated internet on its own, no peerix
// involved: what TestP2PAcrossNAT stands on.
func TestP2PNATTopology(t *testing.T) {
	requireNAT(t)
	t.Parallel()
	n := newNATNet(t, "A", "B")
	verifyNAT(t, n)
}

// Bounds of TestP2PAcrossNAT's waits for the tracker and of its Nix runs.
const (
	natAnnounceWait = 30 * time.Second
	natNixTimeout   = 60 * time.Second
)

// TestP2PAcrossNAT: peer A behind one home router holds the fixture
// closure; peer B behind another holds nothing; the tracker (with its
// relay) is on the internet. The real Nix on B substitutes the whole
// closure through B's peerix, byte-exact. The test reports whether the
// bytes went direct (hole punched) or through the relay, from B's
// /api/peers and from the routers' packet counters; once hole punching has
// made a direct link, new NAR streams must use it. A restarted peer keeps
// its peer ID, and is found and fetched from again. Finally, with all
// traffic between the routers dropped, a fresh store on B substitutes the
// closure through the relay alone.
func TestP2PAcrossNAT(t *testing.T) {
	fx := fixtures(t)
	requireNAT(t)
	t.Parallel()
	start := time.Now()
	n := newNATNet(t, "A", "B")
	verifyNAT(t, n)
	A, B, T := n.hosts["A"], n.hosts["B"], n.tracker
	t.Logf("A behind %s (%s), B behind %s (%s)", n.routers["A"].label, n.routers["A"].addr, n.routers["B"].label, n.routers["B"].addr)

	tr := startPeerix(t, trackerServer(t, T, 30*time.Second))
	trackerURL := tr.hostURL
	// The tracker, from both private hosts, sees them at their routers.
	for _, h := range []*nsHost{A, B} {
		var info trackerInfo
		code, body, err := getJSON(h.httpClient(), trackerURL+"/v1/info", &info)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s/v1/info from host %s: HTTP %d %v %.300s", trackerURL, h.label, code, err, body)
		}
		host, _, _ := net.SplitHostPort(info.ObservedAddr)
		if host != n.routers[h.label].addr.String() {
			t.Errorf("the tracker sees host %s at %q, want its router's %s", h.label, info.ObservedAddr, n.routers[h.label].addr)
		}
		if h == A {
			t.Logf("tracker /v1/info: relay %s at %v", info.Relay.PeerID, info.Relay.Addrs)
		}
	}

	key := keygen(t, "peerix-p2p-a")
	bStore := initStore(t, "b-store")
	aState, bState := filepath.Join(t.TempDir(), "a-state"), filepath.Join(t.TempDir(), "b-state")
	da := startPeerix(t, p2pDaemon(A, trackerURL, fx.src, aState, "--signing-key-file", key.secretFile, "--verbose"))
	db := startPeerix(t, p2pDaemon(B, trackerURL, bStore, bState, "--trusted-public-key", key.public, "--verbose"))
	idA := da.peerID
	t.Logf("peer A %s, peer B %s (up %v into the test)", idA, db.peerID, time.Since(start).Round(time.Millisecond))

	rootHash := hashPart(fx.root)
	took := waitHolder(t, tr, "A", idA, rootHash)
	t.Logf("A found as holder of %s after %v", rootHash, took.Round(time.Millisecond))
	// A is behind NAT: the tracker's record is useful to others only with
	// A's relay (circuit) address. Peers asking before it is there cannot
	// reach A and answer Nix 404, which Nix remembers for an hour.
	if w := waitCircuit(t, tr, "A", idA); w > time.Second {
		t.Errorf("BUG: A was listed as a holder %v before its record carried a /p2p-circuit address: in that window peers behind NAT cannot reach it and answer 404, which Nix caches for an hour (first announce sent before the relay reservation, next one only at the 5 s address poll?)", w.Round(time.Millisecond))
	}
	waitCircuit(t, tr, "B", db.peerID)
	for _, p := range tr.mustPeers(t) {
		t.Logf("tracker lists %s with addrs %v", p.PeerID, p.Addrs)
	}

	before := n.counters(t, "B")
	watch := watchConn(db, idA)
	t0 := time.Now()
	r := B.nixWithin(t, natNixTimeout, "nix-store", "--store", bStore, "-r", fx.root,
		"--option", "substituters", db.url,
		"--option", "trusted-public-keys", key.public,
		"--option", "require-sigs", "true",
		"--option", "connect-timeout", "10")
	if r.err != nil {
		t.Fatalf("Nix on B could not substitute A's closure through B's peerix:\n%v\nB's /api/peers: %+v", r, db.apiPeers(t))
	}
	nixTook := time.Since(t0)
	assertSameClosure(t, fx, bStore)
	var narBytes int64
	for _, p := range fx.paths {
		narBytes += fx.facts[p].narSize
	}
	t.Logf("nix-store -r of the %d-path closure (%d NAR bytes) on B through peerix across two NATs: %v",
		len(fx.paths), narBytes, nixTook.Round(time.Millisecond))

	// The first transfers start on the relayed connection, before the hole
	// punch completes; how much goes direct depends on that race.
	reportPath(t, n, db, idA, before, narBytes)

	// Hole punching must give A and B a direct link soon, and new NAR
	// streams must use it.
	waitFor(t, "a direct (hole-punched) connection from B to A", 15*time.Second, func() (bool, string) {
		ps, err := getAPIPeers(db)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if p.PeerID == idA {
				return p.Direct, fmt.Sprintf("%+v", p)
			}
		}
		return false, "A not in B's /api/peers"
	})
	watch.finish()
	t.Logf("B's link to A, from Nix's start (polled every 50 ms): first connected %v, relayed %v, direct %v",
		watch.firstConn, watch.firstRelayed, watch.firstDirect)
	big := fx.byName["big"]
	before = n.counters(t, "B")
	_, ni := fetchFromPeers(t, db, big)
	status, digest, size, err := clientDigest(db.client, db.url+"/"+ni["URL"])
	if err != nil || status != http.StatusOK || hex.EncodeToString(digest) != fx.facts[big].narDigest {
		t.Fatalf("NAR of %s from A through B: HTTP %d, %d bytes sha256 %x, %v; want %d bytes sha256 %s",
			big, status, size, digest, err, fx.facts[big].narSize, fx.facts[big].narDigest)
	}
	if v := reportPath(t, n, db, idA, before, fx.facts[big].narSize); v != "direct" {
		t.Errorf("B fetched %s (%d bytes) %s although a direct connection to A existed; new NAR streams must prefer it", big, size, v)
	}

	// A restarted peer keeps its ID.
	sent := time.Now()
	da2, stopTook := da.restart(t)
	if da2.peerID != idA {
		t.Errorf("A's peer ID changed across a restart: %s, was %s", da2.peerID, idA)
	}
	t.Logf("A restarted (stopped in %v, up again %v after SIGTERM) with peer ID %s", stopTook.Round(time.Millisecond),
		time.Since(sent).Round(time.Millisecond), da2.peerID)
	checkIdentityFile(t, aState)
	took = waitHolder(t, tr, "the restarted A", idA, rootHash)
	t.Logf("the tracker lists the restarted A as holder %v after it came up", took.Round(time.Millisecond))
	t.Logf("the restarted A's record carries a /p2p-circuit address %v later", waitCircuit(t, tr, "A", idA).Round(time.Millisecond))
	if ps := tr.mustPeers(t); len(ids(ps)) != 2 || !slices.Contains(ids(ps), idA) {
		t.Errorf("after A's restart /v1/peers lists %v; want A (same ID %s) and B, nothing else", ids(ps), idA)
	}

	// And B fetches from the restarted A: a narinfo (peers' view) and the
	// NAR of the biggest fixture, byte-exact.
	took, ni = fetchFromPeers(t, db, big)
	status, digest, size, err = clientDigest(db.client, db.url+"/"+ni["URL"])
	if err != nil || status != http.StatusOK || hex.EncodeToString(digest) != fx.facts[big].narDigest {
		t.Errorf("NAR of %s from the restarted A through B: HTTP %d, %d bytes sha256 %x, %v; want %d bytes sha256 %s",
			big, status, size, digest, err, fx.facts[big].narSize, fx.facts[big].narDigest)
	}
	t.Logf("B fetched %s (%d bytes) from the restarted A; found after %v", big, size, took.Round(time.Millisecond))

	// Through the relay: the routers now drop everything between each
	// other, so no direct path (and no hole punch) is possible; B restarts
	// with a fresh empty store (same identity), and the real Nix on B
	// substitutes the whole closure again, through the tracker's relay.
	n.cutDirect(t, "A", "B")
	if _, err := db.stop(syscall.SIGTERM, stopTimeout); err != nil {
		t.Fatalf("stopping B: %v", err)
	}
	b2Store := initStore(t, "b2-store")
	b2Opts := p2pDaemon(B, trackerURL, b2Store, bState, "--trusted-public-key", key.public, "--verbose")
	b2Opts.label = "B (relay only)"
	db2 := startPeerix(t, b2Opts)
	if db2.peerID != db.peerID {
		t.Errorf("B's peer ID changed across a restart: %s, was %s", db2.peerID, db.peerID)
	}
	before = n.counters(t, "B")
	t0 = time.Now()
	r = B.nixWithin(t, natNixTimeout, "nix-store", "--store", b2Store, "-r", fx.root,
		"--option", "substituters", db2.url,
		"--option", "trusted-public-keys", key.public,
		"--option", "require-sigs", "true",
		"--option", "connect-timeout", "10")
	if r.err != nil {
		t.Fatalf("with the direct path blocked, Nix on B could not substitute A's closure through the relay:\n%v\nB's /api/peers: %+v", r, db2.apiPeers(t))
	}
	t.Logf("nix-store -r of the closure on B with the direct path blocked: %v", time.Since(t0).Round(time.Millisecond))
	assertSameClosure(t, fx, b2Store)
	if v := reportPath(t, n, db2, idA, before, narBytes); v != "relayed" {
		t.Errorf("with all traffic between the routers dropped the bytes went %s; want relayed", v)
	}

	da2.alive(t)
	db2.alive(t)
	tr.alive(t)
	t.Logf("TestP2PAcrossNAT took %v", time.Since(start).Round(time.Millisecond))
}

// waitHolder waits (bounded) until the tracker finds the peer id as a
// holder of hash, and returns how long that took.
func waitHolder(t testing.TB, tr *peerixProc, who, id, hash string) time.Duration {
	t.Helper()
	return waitFor(t, "the tracker finds "+who+" as a holder of "+hash, natAnnounceWait, func() (bool, string) {
		ps, err := tr.find(hash)
		if err != nil {
			return false, err.Error()
		}
		return slices.Contains(ids(ps), id), fmt.Sprintf("holders %v", ids(ps))
	})
}

// waitCircuit waits (bounded) until the tracker's record of the peer id
// carries a relay (/p2p-circuit) address, and returns how long that took.
func waitCircuit(t testing.TB, tr *peerixProc, who, id string) time.Duration {
	t.Helper()
	return waitFor(t, "the tracker's record of "+who+" carries a /p2p-circuit address", natAnnounceWait, func() (bool, string) {
		ps, err := tr.peers()
		if err != nil {
			return false, err.Error()
		}
		p, _ := peerByID(ps, id)
		return slices.ContainsFunc(p.Addrs, func(a string) bool { return strings.Contains(a, "/p2p-circuit") }),
			fmt.Sprintf("%s's addrs %v", who, p.Addrs)
	})
}

// cutDirect makes the routers of hosts a and b drop all traffic between
// each other: no direct path (and no hole punch) is possible any more, only
// the tracker's relay joins them.
func (n *natNet) cutDirect(t testing.TB, a, b string) {
	t.Helper()
	for _, pair := range [][2]*natRouter{{n.routers[a], n.routers[b]}, {n.routers[b], n.routers[a]}} {
		for _, dir := range []string{"-s", "-d"} {
			nsRun(t, pair[0].ns, n.ipt, "-I", "FORWARD", "1", dir, pair[1].addr.String(), "-j", "DROP")
		}
	}
}

// reportPath says (t.Log) how B's bytes from A travelled, and returns
// "direct", "relayed" or "mixed": from B's /api/peers and from B's
// router's counters since before.
func reportPath(t testing.TB, n *natNet, db *peerixProc, idA string, before natCounters, narBytes int64) string {
	t.Helper()
	after := n.counters(t, "B")
	ra, tAddr := n.routers["A"].addr, n.tracker.addr
	direct := after.from[ra] - before.from[ra]
	directUDP := after.fromUDP[ra] - before.fromUDP[ra]
	relayed := after.from[tAddr] - before.from[tAddr]
	var conn string
	for _, p := range db.apiPeers(t) {
		if p.PeerID == idA {
			conn = fmt.Sprintf("connected=%v direct=%v relayed=%v addrs=%v", p.Connected, p.Direct, p.Relayed, p.Addrs)
		}
	}
	if conn == "" {
		conn = "A not listed in B's /api/peers"
		t.Errorf("B's /api/peers does not list A (%s) after fetching from it", idA)
	}
	// The NARs may travel compressed (zstd on the peer link): a path
	// carried at least a third of their bytes, the other a quarter of that.
	verdict := "mixed"
	switch {
	case direct >= uint64(narBytes)/3 && relayed < direct/4:
		verdict = "direct"
	case relayed >= uint64(narBytes)/3 && direct < relayed/4:
		verdict = "relayed"
	}
	t.Logf("PATH: %s. Into B's LAN during the substitution: %d bytes from A's router %s (direct, hole punched; %d of them UDP/QUIC), %d bytes from the tracker/relay %s; the NARs are %d bytes. B's /api/peers on A: %s",
		strings.ToUpper(verdict), direct, ra, directUDP, relayed, tAddr, narBytes, conn)
	for _, d := range []struct {
		name string
		c    natCounters
	}{{"RA", n.counters(t, "A")}, {"RB", after}} {
		t.Logf("router %s dropped %d bytes of unsolicited packets to itself and %d forwarded from the WAN (early punch packets land here)", d.name, d.c.inputDrop, d.c.forwardDrop)
	}
	for _, l := range db.logLines(8, "punch", "dcutr", "direct", "relay") {
		t.Logf("B log: %s", l)
	}
	return verdict
}

// checkIdentityFile wants the peer identity in the state dir, readable by
// its owner only.
func checkIdentityFile(t *testing.T, stateDir string) {
	t.Helper()
	p := filepath.Join(stateDir, "identity.key")
	fi, err := os.Stat(p)
	if err != nil {
		t.Errorf("no peer identity at %s (docs/protocol.md): %v", p, err)
		return
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
	}
}

// fetchFromPeers asks the daemon (from its own machine) for path's narinfo,
// which it finds on peers, retrying for a bounded while; it wants a
// nar/p2p/ URL and the path's NarHash.
func fetchFromPeers(t testing.TB, d *peerixProc, path string) (time.Duration, narInfo) {
	t.Helper()
	var ni narInfo
	took := waitFor(t, "peerix "+d.label+" finds "+path+" on a peer", 30*time.Second, func() (bool, string) {
		resp, body, err := clientDo(d.client, http.MethodGet, d.url+"/"+hashPart(path)+".narinfo")
		if err != nil {
			return false, err.Error()
		}
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Sprintf("HTTP %d %.200s", resp.StatusCode, body)
		}
		ni = parseNarInfo(t, body)
		return true, ""
	})
	if !strings.HasPrefix(ni["URL"], "nar/p2p/") || ni["StorePath"] != path {
		t.Errorf("%s's narinfo for %s: StorePath %q URL %q; want the path and a nar/p2p/ URL", d.label, path, ni["StorePath"], ni["URL"])
	}
	return took, ni
}

func getAPIPeers(d *peerixProc) ([]apiPeer, error) {
	var ps []apiPeer
	code, body, err := getJSON(d.client, d.url+"/api/peers", &ps)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /api/peers: HTTP %d %.200s", code, body)
	}
	return ps, err
}

// connWatch polls a daemon's /api/peers every 50 ms and records when its
// link to one peer was first connected, relayed and direct.
type connWatch struct {
	stop, done                           chan struct{}
	firstConn, firstRelayed, firstDirect time.Duration // -1: never
}

func watchConn(d *peerixProc, id string) *connWatch {
	w := &connWatch{stop: make(chan struct{}), done: make(chan struct{}), firstConn: -1, firstRelayed: -1, firstDirect: -1}
	start := time.Now()
	go func() {
		defer close(w.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if ps, err := getAPIPeers(d); err == nil {
				for _, p := range ps {
					if p.PeerID != id {
						continue
					}
					for _, f := range []struct {
						on  bool
						dst *time.Duration
					}{{p.Connected, &w.firstConn}, {p.Relayed, &w.firstRelayed}, {p.Direct, &w.firstDirect}} {
						if f.on && *f.dst < 0 {
							*f.dst = time.Since(start).Round(time.Millisecond)
						}
					}
				}
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// finish stops the polling (bounded by one request's timeout).
func (w *connWatch) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}
