package lan

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// network is one up, broadcast-capable IPv4 network this machine is on.
type network struct {
	addr      netip.Addr   // our address on it
	prefix    netip.Prefix // the directly connected subnet
	broadcast netip.Addr
}

// networks lists the private-range IPv4 networks of up interfaces; they are
// where requests are broadcast and the only places answers and requests are
// accepted from. The list is re-read at most every refreshEvery.
type networks struct {
	mu     sync.Mutex
	list   []network
	read   time.Time
	listFn func() ([]network, error)
}

const refreshEvery = 10 * time.Second

func newNetworks() *networks { return &networks{listFn: listNetworks} }

func (n *networks) get() []network {
	n.mu.Lock()
	defer n.mu.Unlock()
	if time.Since(n.read) > refreshEvery || n.list == nil {
		if list, err := n.listFn(); err == nil {
			n.list, n.read = list, time.Now()
		}
	}
	return n.list
}

// own reports whether ip is one of our addresses (our own broadcasts come
// back to us).
func (n *networks) own(ip netip.Addr) bool {
	for _, nw := range n.get() {
		if nw.addr == ip {
			return true
		}
	}
	return false
}

// neighbour reports whether ip is another host on a directly connected
// private subnet.
func (n *networks) neighbour(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.Is4() || !ip.IsPrivate() {
		return false
	}
	for _, nw := range n.get() {
		if nw.prefix.Contains(ip) && ip != nw.addr && ip != nw.broadcast {
			return true
		}
	}
	return false
}

func listNetworks() ([]network, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var list []network
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagBroadcast == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipnet, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipnet.IP.To4())
			if !ok || !ip.IsPrivate() {
				continue
			}
			ones, bits := ipnet.Mask.Size()
			if bits != 32 || ones >= 31 {
				continue
			}
			prefix := netip.PrefixFrom(ip, ones).Masked()
			b := prefix.Addr().As4()
			for i := range b {
				b[i] |= ^ipnet.Mask[i]
			}
			list = append(list, network{addr: ip, prefix: prefix, broadcast: netip.AddrFrom4(b)})
		}
	}
	return list, nil
}
