package p2p

import (
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Addresses of other peers come from the tracker and from the peers
// themselves, and nobody vouches for them: a tracker entry naming
// /ip4/127.0.0.1/tcp/22 would make every daemon that looks up the entry's
// hash connect to its own port 22. So addresses are judged by class before
// they are stored in the peerstore or dialled (the host's connection gater
// sees every dial, after DNS resolution):
//
//   - never: unspecified (0.0.0.0, ::), 0.0.0.0/8, broadcast, multicast,
//     link-local (169.254/16, fe80::/10), unix sockets, anything that is
//     not IP or DNS;
//   - loopback only when the tracker itself is on loopback (a tracker and
//     its daemons on one machine: tests, single-host setups);
//   - this machine's own addresses only when they are the tracker's (the
//     tracker, its relay, on this machine), or the tracker is on loopback;
//   - private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)
//     only when this machine has an address in one of them: then peers on
//     its LAN or VPN may be reached that way; a machine with public
//     addresses only has no business dialling into private ranges;
//   - public addresses and DNS names (judged again once resolved): yes.

// ownAddrsRefresh: how long this machine's interface addresses are
// believed before they are read again (a VPN comes up, DHCP changes).
const ownAddrsRefresh = 30 * time.Second

// AddrPolicy decides which peer addresses this daemon stores and dials.
// Its methods are safe for concurrent use; a nil policy allows every
// address.
type AddrPolicy struct {
	loopback bool         // the tracker is on loopback
	tracker  []netip.Addr // the tracker's IP, when its URL names one

	mu       sync.Mutex
	own      map[netip.Addr]bool // this machine's addresses
	private  bool                // one of them is in a private range
	readAt   time.Time
	readOwns func() []netip.Addr // for tests; nil reads the interfaces
}

// NewAddrPolicy makes the policy for a daemon whose tracker is at
// trackerURL ("" for none).
func NewAddrPolicy(trackerURL string) *AddrPolicy {
	p := &AddrPolicy{}
	if u, err := url.Parse(trackerURL); err == nil && u.Hostname() != "" {
		host := u.Hostname()
		if strings.EqualFold(host, "localhost") {
			p.loopback = true
		} else if a, err := netip.ParseAddr(host); err == nil {
			a = a.Unmap()
			p.tracker = []netip.Addr{a}
			p.loopback = a.IsLoopback()
		}
	}
	return p
}

// Allow reports whether a peer address may be stored and dialled. A
// circuit address is judged by its relay's address.
func (p *AddrPolicy) Allow(a ma.Multiaddr) bool {
	if p == nil {
		return true
	}
	if len(a) == 0 {
		return false
	}
	c := a[0]
	switch c.Protocol().Code {
	case ma.P_IP4, ma.P_IP6:
		ip, ok := netip.AddrFromSlice(c.RawValue())
		return ok && p.allowIP(ip.Unmap())
	case ma.P_DNS, ma.P_DNS4, ma.P_DNS6, ma.P_DNSADDR:
		return true // its resolved addresses meet the gater
	case ma.P_P2P:
		// /p2p/<relay>/p2p-circuit/...: the relay's own addresses are
		// judged when it is dialled.
		return true
	}
	return false
}

// Filter returns the addresses Allow lets through (addrs itself when all
// are).
func (p *AddrPolicy) Filter(addrs []ma.Multiaddr) []ma.Multiaddr {
	if p == nil {
		return addrs
	}
	for i, a := range addrs {
		if !p.Allow(a) {
			out := append([]ma.Multiaddr(nil), addrs[:i]...)
			for _, b := range addrs[i+1:] {
				if p.Allow(b) {
					out = append(out, b)
				}
			}
			return out
		}
	}
	return addrs
}

func (p *AddrPolicy) allowIP(ip netip.Addr) bool {
	switch {
	case !ip.IsValid(), ip.IsUnspecified(), ip.IsMulticast(),
		ip.IsLinkLocalUnicast(), ip.IsInterfaceLocalMulticast(),
		ip.Is4() && (ip.As4()[0] == 0 || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return false
	case ip.IsLoopback():
		return p.loopback
	}
	for _, t := range p.tracker {
		if ip == t {
			return true
		}
	}
	own, private := p.ownAddrs()
	if own[ip] {
		// With the tracker on loopback its peers are on this machine too,
		// at any of its addresses.
		return p.loopback
	}
	if isPrivateIP(ip) {
		return private
	}
	return true
}

// cgnat is 100.64.0.0/10, shared address space (carrier-grade NAT, and
// VPNs such as Tailscale): private, as far as dialling goes.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func isPrivateIP(ip netip.Addr) bool {
	return ip.IsPrivate() || cgnat.Contains(ip)
}

// ownAddrs returns this machine's addresses and whether one is private,
// read again every ownAddrsRefresh.
func (p *AddrPolicy) ownAddrs() (map[netip.Addr]bool, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.own != nil && time.Since(p.readAt) < ownAddrsRefresh {
		return p.own, p.private
	}
	read := p.readOwns
	if read == nil {
		read = interfaceAddrs
	}
	own, private := map[netip.Addr]bool{}, false
	for _, a := range read() {
		a = a.Unmap()
		own[a] = true
		if isPrivateIP(a) {
			private = true
		}
	}
	p.own, p.private, p.readAt = own, private, time.Now()
	return own, private
}

func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, ip)
			}
		}
	}
	return out
}

// addrGater is the host's connection gater: it refuses to dial what the
// host's address policy does not allow, whoever asked for the dial (our
// lookups, identify, hole punching, AutoRelay). Inbound connections are
// not its business.
type addrGater struct{ h *Host }

func (g addrGater) InterceptPeerDial(peer.ID) bool { return true }

func (g addrGater) InterceptAddrDial(_ peer.ID, a ma.Multiaddr) bool {
	return g.h.policy.Load().Allow(a)
}

func (g addrGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g addrGater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

func (g addrGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
