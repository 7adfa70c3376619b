package trackerapi

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// Which announced addresses are worth storing and dialling. A tracker
// that stored anything would make every peer that looks up a hash dial
// what an attacker announced: its own loopback services, link-local
// neighbours, unix sockets. The tracker applies the rule before it stores
// an address (docs/protocol.md, "Addresses"); daemons may apply it again
// before they dial.

// CheckAddr says whether a peer's address (without a trailing /p2p/<its
// own id>) is one a peer may be asked to dial, and if not, why. Allowed:
//
//	<host>/tcp/<port>
//	<host>/udp/<port>/quic-v1
//	either of those, then /p2p/<relay id>/p2p-circuit (a relayed address)
//
// where <host> is /ip4/<a>, /ip6/<a> or /dns|dns4|dns6/<name>, and the port
// is not 0. Refused: other transports (unix, onion, websockets, ...),
// unspecified addresses (0.0.0.0, ::), the rest of 0.0.0.0/8, multicast,
// 240.0.0.0/4 and the broadcast address, link-local addresses
// (169.254.0.0/16, fe80::/10), zones, names that are "localhost" or end
// in ".localhost", and loopback addresses (127.0.0.0/8, ::1) unless
// loopbackOK: the tracker allows them only from an announcer that is
// itself on loopback (many daemons and a tracker on one machine, as in
// tests). Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10)
// are allowed: LANs and NATs use them.
func CheckAddr(m ma.Multiaddr, loopbackOK bool) error {
	if len(m) == 0 {
		return errors.New("empty address")
	}
	rest, err := checkDirect(m, loopbackOK)
	if err != nil {
		return err
	}
	switch {
	case len(rest) == 0:
		return nil
	case len(rest) == 2 && rest[0].Code() == ma.P_P2P && rest[1].Code() == ma.P_CIRCUIT:
		return nil
	default:
		return fmt.Errorf("%s: only /p2p/<relay>/p2p-circuit may follow the transport", rest)
	}
}

// UsableAddr is CheckAddr(m, loopbackOK) == nil.
func UsableAddr(m ma.Multiaddr, loopbackOK bool) bool { return CheckAddr(m, loopbackOK) == nil }

// checkDirect checks the host and transport part of m and returns what
// follows it.
func checkDirect(m ma.Multiaddr, loopbackOK bool) (ma.Multiaddr, error) {
	host := m[0]
	switch host.Code() {
	case ma.P_IP4, ma.P_IP6:
		ip, ok := netip.AddrFromSlice(host.RawValue())
		if !ok {
			return nil, fmt.Errorf("%s: malformed IP address", host.String())
		}
		if err := checkIP(ip.Unmap(), loopbackOK); err != nil {
			return nil, err
		}
	case ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
		if err := checkName(host.Value(), loopbackOK); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s: not an IP address or DNS name (no unix, onion or other transports)", host.String())
	}
	if len(m) < 2 {
		return nil, errors.New("no transport after the host")
	}
	port := func(c ma.Component) error {
		if n, err := strconv.Atoi(c.Value()); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%s: port must be 1..65535", c.String())
		}
		return nil
	}
	switch m[1].Code() {
	case ma.P_TCP:
		if err := port(m[1]); err != nil {
			return nil, err
		}
		return m[2:], nil
	case ma.P_UDP:
		if err := port(m[1]); err != nil {
			return nil, err
		}
		if len(m) < 3 || m[2].Code() != ma.P_QUIC_V1 {
			return nil, fmt.Errorf("%s: UDP only with /quic-v1", m)
		}
		return m[3:], nil
	default:
		return nil, fmt.Errorf("%s: transport must be /tcp/<port> or /udp/<port>/quic-v1", m[1:])
	}
}

var (
	thisNet  = netip.MustParsePrefix("0.0.0.0/8")
	reserved = netip.MustParsePrefix("240.0.0.0/4") // includes 255.255.255.255
)

func checkIP(ip netip.Addr, loopbackOK bool) error {
	switch {
	case ip.IsUnspecified() || thisNet.Contains(ip):
		return fmt.Errorf("%s: unspecified address", ip)
	case ip.IsMulticast() || reserved.Contains(ip):
		return fmt.Errorf("%s: multicast, broadcast or reserved address", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("%s: link-local address", ip)
	case ip.Zone() != "":
		return fmt.Errorf("%s: address with a zone", ip)
	case ip.IsLoopback() && !loopbackOK:
		return fmt.Errorf("%s: loopback address from an announcer that is not on loopback", ip)
	}
	return nil
}

func checkName(name string, loopbackOK bool) error {
	if ip, err := netip.ParseAddr(name); err == nil {
		return checkIP(ip.Unmap(), loopbackOK)
	}
	if name == "" || len(name) > 253 {
		return errors.New("DNS name empty or too long")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("DNS name %q: only letters, digits, '.' and '-'", name)
		}
	}
	lower := strings.TrimSuffix(strings.ToLower(name), ".")
	if (lower == "localhost" || strings.HasSuffix(lower, ".localhost")) && !loopbackOK {
		return fmt.Errorf("DNS name %q: loopback, from an announcer that is not on loopback", name)
	}
	return nil
}
