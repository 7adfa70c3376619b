// Package portcheck tells, before libp2p binds a fixed port, whether
// another process holds it already.
//
// libp2p binds its TCP and QUIC ports with SO_REUSEPORT, so a second
// daemon on the same --p2p-port (or a tracker whose relay port is a
// daemon's p2p port) starts without an error: the kernel then splits
// connections and datagrams between the two processes, and one of them
// loses its QUIC address. A plain bind, without SO_REUSEPORT, fails on a
// port that any socket holds, whatever its options; Free makes one and
// lets it go at once.
//
//	if err := portcheck.Free(12306, "0.0.0.0", "::"); err != nil {
//		return fmt.Errorf("--p2p-port 12306: %w", err) // errors.Is(err, portcheck.ErrInUse)
//	}
package portcheck

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// ErrInUse: another socket holds the port.
var ErrInUse = errors.New("port already in use")

// Free checks that TCP and UDP port are free on each of ips (IPv4 or IPv6
// addresses, "0.0.0.0" and "::" for all). It returns an error wrapping
// ErrInUse that names the protocol, address and port when one is taken.
// Other bind errors (no IPv6 on this machine, no such address) are not
// its business: libp2p reports or skips those addresses as it always did.
// Port 0 (any free port) is always free.
func Free(port int, ips ...string) error {
	if port == 0 {
		return nil
	}
	for _, ip := range ips {
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		v := "4"
		if p := net.ParseIP(ip); p != nil && p.To4() == nil {
			v = "6" // v6 only, as libp2p binds it: the IPv4 side is checked on its own
		}
		ln, err := net.Listen("tcp"+v, addr)
		if err == nil {
			ln.Close()
		} else if errors.Is(err, syscall.EADDRINUSE) {
			return inUse("TCP", addr)
		}
		pc, err := net.ListenPacket("udp"+v, addr)
		if err == nil {
			pc.Close()
		} else if errors.Is(err, syscall.EADDRINUSE) {
			return inUse("UDP", addr)
		}
	}
	return nil
}

func inUse(proto, addr string) error {
	return fmt.Errorf("%s %s is taken by another program (another peerix daemon, or a tracker's relay?): %w", proto, addr, ErrInUse)
}
