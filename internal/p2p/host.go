package p2p

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/pbnjay/memory"

	"github.com/peerix/peerix/internal/portcheck"
)

// Connection manager water marks: peerix talks to few peers at a time (a
// handful of holders per path), so these leave plenty of room while keeping
// a busy node's connection count bounded. Peers with transfers running and
// the relay are protected from trimming.
const (
	connLowWater  = 64
	connHighWater = 256
	connGrace     = time.Minute
	// MaxAnnouncedAddrs is the tracker's limit on a peer's addresses.
	MaxAnnouncedAddrs = 32
)

// Timing of the relay reservation and hole punching.
var (
	// holePunchWait bounds how long a dial waits for our DCUtR handler
	// when we are behind NAT (it registers ~0.3 s after we reach the relay
	// and learn a public address; a dial made before loses the punch).
	holePunchWait = 2 * time.Second
	// relayCheckInterval: how often the reservation loop checks that the
	// relay connection (which carries the reservation) is still there.
	relayCheckInterval = 10 * time.Second
)

// Host is a libp2p host (QUIC and TCP, relay v2 client, DCUtR hole
// punching, AutoRelay, AutoNAT v2) plus what the tracker taught it: the
// relay, whether this machine is behind NAT, the circuit addresses to
// announce. It embeds host.Host, so it goes wherever one is wanted.
type Host struct {
	host.Host
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	policy atomic.Pointer[AddrPolicy] // nil: every address allowed

	mu       sync.Mutex
	relays   map[peer.ID]*relayState
	natState natState
	punchOK  bool      // our DCUtR handler is registered
	punchBy  time.Time // until when dials wait for it (see WaitHolePunch)
}

type natState int

const (
	natUnknown natState = iota
	natPublic
	natBehind
)

type relayState struct {
	info    peer.AddrInfo
	reserve bool // keep a reservation (we are behind NAT)
	rsv     *client.Reservation
	cancel  context.CancelFunc
}

// NewHost starts a libp2p host with identity key, listening on TCP and QUIC
// port port of every IPv4 address (and IPv6 if the machine has it; 0 = any
// free port). relays are circuit relay v2 servers known at start (usually
// none: the daemon learns the tracker's relay later and calls UseRelay).
// fds bounds the file descriptors libp2p's connections may use (the
// daemon's budget, internal/connlimit); 0 leaves libp2p's default, half
// the process's limit. ctx bounds the host's background work; Close stops
// it.
func NewHost(ctx context.Context, key crypto.PrivKey, port int, relays []peer.AddrInfo, fds int, log *slog.Logger) (*Host, error) {
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("p2p port %d out of range", port)
	}
	h := &Host{log: log, relays: make(map[peer.ID]*relayState)}
	h.ctx, h.cancel = context.WithCancel(ctx)
	for _, r := range relays {
		h.relays[r.ID] = &relayState{info: r}
	}

	p := strconv.Itoa(port)
	listen := []string{"/ip4/0.0.0.0/tcp/" + p, "/ip4/0.0.0.0/udp/" + p + "/quic-v1"}
	ips := []string{"0.0.0.0"}
	if hasIPv6() {
		listen = append(listen, "/ip6/::/tcp/"+p, "/ip6/::/udp/"+p+"/quic-v1")
		ips = append(ips, "::")
	}
	// libp2p binds with SO_REUSEPORT and would share a taken port silently.
	if err := portcheck.Free(port, ips...); err != nil {
		h.cancel()
		return nil, err
	}
	cm, err := connmgr.NewConnManager(connLowWater, connHighWater, connmgr.WithGracePeriod(connGrace))
	if err != nil {
		h.cancel()
		return nil, err
	}
	rm, err := newResourceManager(fds)
	if err != nil {
		h.cancel()
		return nil, err
	}
	punch := &tcpFirst{tries: map[peer.ID]punchTries{}}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(listen...),
		libp2p.Transport(quic.NewTransport),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionGater(addrGater{h}),
		libp2p.EnableRelay(),
		libp2p.EnableHolePunching(holepunch.WithAddrFilter(punch),
			holepunch.DirectDialTimeout(punchTimeout)),
		libp2p.EnableAutoRelayWithPeerSource(h.relaySource,
			autorelay.WithMinCandidates(1),
			autorelay.WithNumRelays(1),
			autorelay.WithBootDelay(0),
			autorelay.WithBackoff(time.Minute),
			autorelay.WithMinInterval(10*time.Second)),
		libp2p.EnableAutoNATv2(),
		libp2p.UserAgent("peerix"),
		libp2p.SwarmOpts(swarm.WithDialRanker(dialRanker)),
	}
	if port != 0 {
		// UPnP/NAT-PMP port mapping on home routers; not for the "any
		// free port" setups of tests and co-located daemons.
		opts = append(opts, libp2p.NATPortMap())
	}
	lh, err := libp2p.New(opts...)
	if err != nil {
		h.cancel()
		rm.Close()
		return nil, fmt.Errorf("libp2p host on port %d: %w", port, err)
	}
	h.Host = lh
	// Peers that punch TCP alone first say so (identify lists it).
	lh.SetStreamHandler(TCPFirstProtocol, func(st network.Stream) { st.Reset() })
	punch.setHost(lh)
	return h, nil
}

// SetAddrPolicy makes p decide which peer addresses the host stores and
// dials (see AddrPolicy); set it before the host dials anything. Without
// one every address is allowed.
func (h *Host) SetAddrPolicy(p *AddrPolicy) { h.policy.Store(p) }

// FilterAddrs returns the addresses the host's policy allows.
func (h *Host) FilterAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	return h.policy.Load().Filter(addrs)
}

// newResourceManager: libp2p's scaled defaults (per-stream memory 16 MiB
// covers a full yamux window), plus room for our protocols: many narinfo
// queries, and NAR streams enough for Nix's parallel substitutions. fds > 0
// replaces libp2p's share of the descriptors (half the limit).
func newResourceManager(fds int) (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	limits.AddProtocolLimit(NarInfoProtocol,
		rcmgr.BaseLimit{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 16 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 256, StreamsOutbound: 256, Streams: 512, Memory: 16 << 20})
	limits.AddProtocolPeerLimit(NarInfoProtocol,
		rcmgr.BaseLimit{StreamsInbound: 128, StreamsOutbound: 128, Streams: 256, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{})
	limits.AddProtocolLimit(NARProtocol,
		rcmgr.BaseLimit{StreamsInbound: 128, StreamsOutbound: 128, Streams: 256, Memory: 256 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 256 << 20})
	limits.AddProtocolPeerLimit(NARProtocol,
		rcmgr.BaseLimit{StreamsInbound: 32, StreamsOutbound: 32, Streams: 64, Memory: 128 << 20},
		rcmgr.BaseLimitIncrease{})
	scaled := limits.AutoScale()
	if fds > 0 {
		scaled = limits.Scale(int64(memory.TotalMemory())/8, fds)
	}
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(scaled))
}

func hasIPv6() bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() == nil && ipn.IP.To16() != nil {
			return true
		}
	}
	return false
}

// Close stops the reservations and the libp2p host.
func (h *Host) Close() error {
	h.cancel()
	h.wg.Wait()
	return h.Host.Close()
}

// relaySource feeds AutoRelay the relays the tracker told us about.
func (h *Host) relaySource(ctx context.Context, num int) <-chan peer.AddrInfo {
	h.mu.Lock()
	var infos []peer.AddrInfo
	for _, r := range h.relays {
		infos = append(infos, r.info)
	}
	h.mu.Unlock()
	if len(infos) > num {
		infos = infos[:num]
	}
	c := make(chan peer.AddrInfo, len(infos))
	for _, i := range infos {
		c <- i
	}
	close(c)
	return c
}

// UseRelay makes relay (the tracker's circuit relay v2, from its /v1/info)
// this host's relay. observedAddr is the address the tracker saw us at
// ("ip:port" or "ip"; "" if unknown): when its IP is not one of this
// machine's, we are behind NAT, and instead of waiting ~17 s for AutoNAT
// the host reserves a slot with the relay at once, keeps it refreshed, and
// announces circuit addresses through it (see AnnounceAddrs). It returns
// once the relay is connected (and the first reservation made, if needed);
// on error the background loop keeps trying.
func (h *Host) UseRelay(ctx context.Context, relay peer.AddrInfo, observedAddr string) error {
	if relay.ID == "" || relay.ID == h.ID() {
		return errors.New("no relay")
	}
	relay.Addrs = h.FilterAddrs(relay.Addrs)
	if len(relay.Addrs) == 0 {
		return errors.New("the relay has no address this host may dial")
	}
	behind := natUnknown
	if ip, ok := parseObserved(observedAddr); ok {
		if isLocalIP(ip) {
			behind = natPublic
		} else {
			behind = natBehind
		}
	}
	h.mu.Lock()
	if behind != natUnknown {
		h.natState = behind
	}
	reserve := h.natState != natPublic
	if old := h.relays[relay.ID]; old != nil && old.cancel != nil {
		old.cancel()
	}
	rctx, cancel := context.WithCancel(h.ctx)
	rs := &relayState{info: relay, reserve: reserve, cancel: cancel}
	h.relays[relay.ID] = rs
	h.mu.Unlock()
	h.Peerstore().AddAddrs(relay.ID, relay.Addrs, peerstore.PermanentAddrTTL)
	h.ConnManager().Protect(relay.ID, "peerix-relay")

	first := make(chan error, 1)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.keepRelay(rctx, rs, first)
	}()
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keepRelay keeps the connection to a relay (and the reservation on it,
// which the relay drops with the connection) alive until ctx ends.
func (h *Host) keepRelay(ctx context.Context, rs *relayState, first chan<- error) {
	retry := time.Second
	var expires time.Time
	for {
		err := h.relayOnce(ctx, rs, &expires)
		if first != nil {
			first <- err
			first = nil
		}
		wait := relayCheckInterval
		if err != nil {
			h.log.Debug("relay unavailable", "relay", rs.info.ID, "err", err, "retry", retry)
			wait, retry = retry, min(retry*2, time.Minute)
		} else {
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// relayOnce connects to the relay if needed and (re)reserves a slot when
// the reservation is missing or expires within two check intervals.
func (h *Host) relayOnce(ctx context.Context, rs *relayState, expires *time.Time) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if h.Network().Connectedness(rs.info.ID) != network.Connected {
		*expires = time.Time{} // a new connection needs a new reservation
		if err := h.Connect(cctx, rs.info); err != nil {
			return fmt.Errorf("connecting to relay: %w", err)
		}
		h.mu.Lock()
		h.punchBy = time.Now().Add(holePunchWait)
		h.mu.Unlock()
	}
	h.mu.Lock()
	reserve := rs.reserve
	h.mu.Unlock()
	if !reserve || time.Until(*expires) > 2*relayCheckInterval {
		return nil
	}
	rsv, err := client.Reserve(cctx, h, rs.info)
	if err != nil {
		return fmt.Errorf("relay reservation: %w", err)
	}
	*expires = rsv.Expiration
	h.mu.Lock()
	fresh := rs.rsv == nil
	rs.rsv = rsv
	h.mu.Unlock()
	if fresh {
		h.log.Info("reserved a relay slot", "relay", rs.info.ID, "expires", rsv.Expiration,
			"limit_bytes", rsv.LimitData, "limit_duration", rsv.LimitDuration)
	}
	return nil
}

func parseObserved(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

// isLocalIP reports whether ip is one of this machine's addresses.
func isLocalIP(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if la, ok := netip.AddrFromSlice(ipn.IP); ok && la.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// BehindNAT reports whether the tracker saw us at an address that is not
// ours (see UseRelay).
func (h *Host) BehindNAT() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.natState == natBehind
}

// CircuitAddrs are the addresses through the relays we hold reservations
// with: <relay addr>/p2p/<relay id>/p2p-circuit (a dialer appends
// /p2p/<our id>).
func (h *Host) CircuitAddrs() []ma.Multiaddr {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []ma.Multiaddr
	for id, rs := range h.relays {
		if rs.rsv == nil || time.Now().After(rs.rsv.Expiration) {
			continue
		}
		relayComp, err := ma.NewComponent("p2p", id.String())
		if err != nil {
			continue
		}
		for _, a := range rs.info.Addrs {
			if isCircuit(a) {
				continue
			}
			c := a.Encapsulate(ma.Multiaddr{*relayComp}).Encapsulate(ma.StringCast("/p2p-circuit"))
			out = append(out, c)
		}
	}
	return out
}

// AnnounceAddrs are the addresses to tell the tracker: the direct ones the
// host listens on or was observed at, then the circuit addresses, at most
// MaxAnnouncedAddrs. Loopback addresses are left out unless there is
// nothing else (a tracker and peers on one machine, as in tests) or the
// tracker is on this machine too.
func (h *Host) AnnounceAddrs() []ma.Multiaddr {
	var direct, loop []ma.Multiaddr
	for _, a := range h.Addrs() {
		if isCircuit(a) {
			continue
		}
		if manet.IsIPLoopback(a) {
			loop = append(loop, a)
			continue
		}
		if manet.IsIPUnspecified(a) {
			continue
		}
		direct = append(direct, a)
	}
	h.mu.Lock()
	localTracker := h.natState == natPublic && h.trackerOnLoopback()
	h.mu.Unlock()
	if len(direct) == 0 || localTracker {
		direct = append(loop, direct...)
	}
	out := append(direct, h.CircuitAddrs()...)
	out = slices.CompactFunc(out, func(a, b ma.Multiaddr) bool { return a.Equal(b) })
	if len(out) > MaxAnnouncedAddrs {
		// Keep circuit addresses: they are how NATed peers reach us.
		circ := h.CircuitAddrs()
		if len(circ) > MaxAnnouncedAddrs/2 {
			circ = circ[:MaxAnnouncedAddrs/2]
		}
		direct = direct[:min(len(direct), MaxAnnouncedAddrs-len(circ))]
		out = append(direct, circ...)
	}
	return out
}

// trackerOnLoopback: a relay we know listens on a loopback address, so
// the tracker and its peers share this machine. Called with h.mu held.
func (h *Host) trackerOnLoopback() bool {
	for _, rs := range h.relays {
		for _, a := range rs.info.Addrs {
			if manet.IsIPLoopback(a) {
				return true
			}
		}
	}
	return false
}

// Hole punching tries TCP alone first, where both ends have a TCP
// address: libp2p punches every transport at once and keeps the first
// connection, which is QUIC's (one round trip to set up, against TCP's
// three), and never opens another once a direct one exists; its TCP moves
// about twice the bytes of its QUIC on the same link and cores. Where
// TCP does not punch through (some NATs keep no mapping for a TCP
// simultaneous open), the next attempt, punchTimeout later, punches
// both. Each end counts its attempts with a peer by the remote addresses
// it is given (once an attempt on either side), so both ends dial the
// same transports. Only with peers that do the same (TCPFirstProtocol): a
// peer of an older version punches every transport at once in each
// attempt, and is punched that way.
const (
	// TCPFirstProtocol is not spoken: a peer that lists it (in identify)
	// punches TCP alone in its first hole punching attempt.
	TCPFirstProtocol protocol.ID = "/peerix/tcp-first-punch/1.0.0"

	punchTimeout = 5 * time.Second
	// punchTriesReset: attempts further apart than this are a new hole
	// punch (after a lost connection), which tries TCP alone again.
	punchTriesReset = time.Minute
)

type punchTries struct {
	n    int
	last time.Time
}

// tcpFirst is a holepunch.AddrFilter.
type tcpFirst struct {
	mu    sync.Mutex
	h     host.Host // nil until the host exists: no peer punches TCP first
	tries map[peer.ID]punchTries
}

func (f *tcpFirst) setHost(h host.Host) {
	f.mu.Lock()
	f.h = h
	f.mu.Unlock()
}

func (f *tcpFirst) FilterLocal(_ peer.ID, addrs []ma.Multiaddr) []ma.Multiaddr { return addrs }

func (f *tcpFirst) FilterRemote(p peer.ID, addrs []ma.Multiaddr) []ma.Multiaddr {
	f.mu.Lock()
	h := f.h
	f.mu.Unlock()
	if h == nil {
		return addrs
	}
	if ok, err := h.Peerstore().SupportsProtocols(p, TCPFirstProtocol); err != nil || len(ok) == 0 {
		return addrs
	}
	f.mu.Lock()
	now := time.Now()
	for id, t := range f.tries {
		if now.Sub(t.last) > punchTriesReset {
			delete(f.tries, id)
		}
	}
	t := f.tries[p]
	t.n++
	t.last = now
	f.tries[p] = t
	f.mu.Unlock()
	if t.n > 1 {
		return addrs
	}
	tcp := slices.DeleteFunc(slices.Clone(addrs), func(a ma.Multiaddr) bool { return !isTCP(a) })
	if len(tcp) == 0 {
		return addrs
	}
	return tcp
}

// dialRanker is libp2p's default ranking of a peer's addresses with TCP
// and QUIC in each other's place: the first plain TCP address is dialed
// first, the direct others (QUIC) only if it has not connected within
// libp2p's head start (250 ms for public addresses, 30 ms for private
// ones), so that where TCP is open the connection is TCP (libp2p's own
// ranking gives QUIC the head start, and dials no second transport once
// one connects). Hole punching dials every address at once (and tries TCP
// alone first: tcpFirst).
func dialRanker(addrs []ma.Multiaddr) []network.AddrDelay {
	ranked := swarm.DefaultDialRanker(addrs)
	first, firstTCP := time.Duration(-1), time.Duration(-1)
	headStart := swarm.PrivateTCPDelay
	for _, a := range ranked {
		if isCircuit(a.Addr) {
			continue
		}
		if first < 0 || a.Delay < first {
			first = a.Delay
		}
		if isTCP(a.Addr) && (firstTCP < 0 || a.Delay < firstTCP) {
			firstTCP = a.Delay
		}
		if manet.IsPublicAddr(a.Addr) {
			headStart = swarm.PublicTCPDelay
		}
	}
	if firstTCP < 0 {
		return ranked
	}
	for i := range ranked {
		switch a := ranked[i].Addr; {
		case isCircuit(a):
		case isTCP(a):
			ranked[i].Delay -= firstTCP - first
		default:
			ranked[i].Delay += headStart
		}
	}
	slices.SortStableFunc(ranked, func(x, y network.AddrDelay) int { return cmp.Compare(x.Delay, y.Delay) })
	return ranked
}

func isCircuit(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// holePunchReady reports whether our DCUtR handler is registered.
func (h *Host) holePunchReady() bool {
	h.mu.Lock()
	ok := h.punchOK
	h.mu.Unlock()
	if ok {
		return true
	}
	if slices.Contains(h.Mux().Protocols(), holepunch.Protocol) {
		h.mu.Lock()
		h.punchOK = true
		h.mu.Unlock()
		return true
	}
	return false
}

// WaitHolePunch waits, when we are behind NAT, until our DCUtR handler is
// registered: a connection dialed before it loses its hole punch for good.
// The handler appears shortly after we reach the relay and learn a public
// address; dials wait for it only until holePunchWait after the relay
// connection, and not at all when we are not behind NAT.
func (h *Host) WaitHolePunch(ctx context.Context) {
	if !h.BehindNAT() || h.holePunchReady() {
		return
	}
	h.mu.Lock()
	wait := time.Until(h.punchBy)
	h.mu.Unlock()
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !h.holePunchReady() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-tick.C:
		}
	}
}

// Connection describes how we are connected to a peer.
type Connection struct {
	Connected bool `json:"connected"`
	Direct    bool `json:"direct"`  // at least one connection not through a relay
	Relayed   bool `json:"relayed"` // at least one through a relay
}

// ConnectionTo reports how we are connected to p.
func ConnectionTo(h host.Host, p peer.ID) Connection {
	var c Connection
	for _, conn := range h.Network().ConnsToPeer(p) {
		if conn.IsClosed() {
			continue
		}
		c.Connected = true
		if isCircuit(conn.RemoteMultiaddr()) {
			c.Relayed = true
		} else {
			c.Direct = true
		}
	}
	return c
}
