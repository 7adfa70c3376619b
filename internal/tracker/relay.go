package tracker

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/peerix/peerix/internal/portcheck"
)

// IdentityFile is the tracker relay's key file, next to the SQLite database.
const IdentityFile = "tracker-identity.key"

// Relay is the tracker's libp2p host running a circuit relay v2 service
// (and AutoNAT service) for peers behind NAT.
type Relay struct {
	host host.Host
	svc  *relayv2.Relay
	port int
}

// RelayResources are the relay's limits, fit for NAR transfers. The libp2p
// defaults reset a relayed connection after 128 KiB or 2 minutes, which no
// NAR survives; here relayed connections are unlimited in data and time
// (so they are not "limited" connections either, and peers need no
// WithAllowLimitedConn), and the buffer is 1 MiB per direction, which
// roughly doubles relayed throughput over the 2 KiB default. What bounds
// the relay instead is the resource manager's memory for the relay service
// (relayResourceManager): a circuit costs 2 MiB of buffers.
func RelayResources() relayv2.Resources {
	rc := relayv2.DefaultResources()
	rc.Limit = nil
	rc.BufferSize = 1 << 20
	rc.ReservationTTL = time.Hour
	rc.MaxReservations = 1024
	rc.MaxCircuits = 64            // per peer, in and out: a popular peer serves many
	rc.MaxReservationsPerIP = 64   // a whole office behind one NAT address
	rc.MaxReservationsPerASN = 512 // a whole ISP
	return rc
}

// relayResourceManager is libp2p's default resource manager with room for
// a relay: connections for every reservation, and memory for the relay
// service's circuit buffers scaled with the machine (64 MiB plus 512 MiB per
// GiB of the eighth of RAM libp2p budgets: about 190 MiB on a 2 GiB host,
// 1 GiB on 16 GiB).
func relayResourceManager() (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	limits.SystemBaseLimit.ConnsInbound = 4096
	limits.SystemBaseLimit.Conns = 4096 + 256
	limits.SystemBaseLimit.StreamsInbound = 16384
	limits.SystemBaseLimit.Streams = 16384 + 2048
	limits.SystemBaseLimit.Memory = 256 << 20
	limits.TransientBaseLimit.ConnsInbound = 256
	limits.TransientBaseLimit.Conns = 256 + 64
	limits.AddServiceLimit(relayv2.ServiceName,
		rcmgr.BaseLimit{StreamsInbound: 4096, StreamsOutbound: 4096, Streams: 8192, Memory: 64 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 512 << 20},
	)
	limits.AddServicePeerLimit(relayv2.ServiceName,
		rcmgr.BaseLimit{StreamsInbound: 256, StreamsOutbound: 256, Streams: 256, Memory: 1 << 20},
		rcmgr.BaseLimitIncrease{},
	)
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
}

// StartRelay starts the relay host with identity key, listening on TCP and
// QUIC at port (0: any port free for both) on each of ips ("0.0.0.0", "::"
// or specific addresses).
func StartRelay(key crypto.PrivKey, ips []string, port int, log *slog.Logger) (*Relay, error) {
	if len(ips) == 0 {
		return nil, errors.New("relay: no listen address")
	}
	if port != 0 {
		// libp2p binds with SO_REUSEPORT and would share a taken port
		// (a daemon's --p2p-port) silently.
		if err := portcheck.Free(port, ips...); err != nil {
			return nil, err
		}
		return startRelay(key, ips, port, log)
	}
	// One port number for TCP and QUIC keeps the addresses predictable.
	var lastErr error
	for range 8 {
		p, err := freePort(ips[0])
		if err != nil {
			return nil, fmt.Errorf("relay: finding a free port: %w", err)
		}
		r, err := startRelay(key, ips, p, log)
		if err == nil {
			return r, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	u.Close()
	return port, nil
}

func startRelay(key crypto.PrivKey, ips []string, port int, log *slog.Logger) (*Relay, error) {
	var listen []ma.Multiaddr
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("relay: %q is not an IP address", s)
		}
		proto := "ip4"
		if ip.To4() == nil {
			proto = "ip6"
		}
		for _, f := range []string{"/%s/%s/tcp/%d", "/%s/%s/udp/%d/quic-v1"} {
			m, err := ma.NewMultiaddr(fmt.Sprintf(f, proto, ip, port))
			if err != nil {
				return nil, fmt.Errorf("relay: %w", err)
			}
			listen = append(listen, m)
		}
	}
	rm, err := relayResourceManager()
	if err != nil {
		return nil, fmt.Errorf("relay: resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(2048, 4096, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("relay: connection manager: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.ListenAddrs(listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ForceReachabilityPublic(),
		libp2p.EnableNATService(),
		libp2p.DisableRelay(), // it relays for others, never dials through a relay itself
		libp2p.DisableMetrics(),
	)
	if err != nil {
		cm.Close()
		rm.Close()
		return nil, fmt.Errorf("relay on port %d: %w", port, err)
	}
	// libp2p only warns when some listen addresses fail; a relay missing
	// TCP or QUIC (port taken by another program) is a setup error.
	var hasTCP, hasQUIC bool
	for _, a := range h.Network().ListenAddresses() {
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			hasQUIC = true
		} else if _, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			hasTCP = true
		}
	}
	if !hasTCP || !hasQUIC {
		h.Close()
		return nil, fmt.Errorf("relay: could not listen on both TCP and UDP (QUIC) port %d; is it in use?", port)
	}
	// The service is started here, not by EnableRelayService, so that it
	// runs as soon as StartRelay returns instead of after a reachability
	// event.
	svc, err := relayv2.New(h, relayv2.WithResources(RelayResources()))
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	r := &Relay{host: h, svc: svc, port: port}
	log.Info("relay started", "peer_id", h.ID(), "addrs", r.Addrs())
	return r, nil
}

// Host is the relay's libp2p host.
func (r *Relay) Host() host.Host { return r.host }

// ID is the relay's peer ID.
func (r *Relay) ID() peer.ID { return r.host.ID() }

// Addrs are the relay's addresses to advertise: all but loopback and
// link-local ones, unless only loopback ones exist (a tracker bound to
// 127.0.0.1 in tests).
func (r *Relay) Addrs() []ma.Multiaddr {
	var out, loopback []ma.Multiaddr
	for _, a := range r.host.Addrs() {
		switch {
		case manet.IsIPLoopback(a):
			loopback = append(loopback, a)
		case manet.IsIP6LinkLocal(a), manet.IsIPUnspecified(a):
		default:
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return loopback
	}
	return out
}

// Info is the relay as /v1/info describes it to a caller that reached the
// tracker at reqHost (the HTTP Host header). Besides the host's own
// addresses it lists that name at the relay's port: a tracker on a cloud
// machine behind 1:1 NAT knows only its private address, while its peers
// reach it by a public name or address.
func (r *Relay) Info(reqHost string) *PeerAddrs {
	addrs := r.Addrs()
	seen := make(map[string]bool, len(addrs))
	out := make([]string, 0, len(addrs)+2)
	for _, a := range addrs {
		seen[a.String()] = true
		out = append(out, a.String())
	}
	for _, a := range hostAddrs(reqHost, r.port) {
		if s := a.String(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return &PeerAddrs{PeerID: r.host.ID().String(), Addrs: out}
}

// hostAddrs turns an HTTP Host header into relay addresses at port; none
// for loopback, unspecified or malformed hosts.
func hostAddrs(reqHost string, port int) []ma.Multiaddr {
	h := reqHost
	if hh, _, err := net.SplitHostPort(reqHost); err == nil {
		h = hh
	}
	var base string
	if ip := net.ParseIP(h); ip != nil {
		if ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() {
			return nil
		}
		if ip4 := ip.To4(); ip4 != nil {
			base = "/ip4/" + ip4.String()
		} else {
			base = "/ip6/" + ip.String()
		}
	} else {
		if !validDNSName(h) || h == "localhost" {
			return nil
		}
		base = "/dns/" + h
	}
	var out []ma.Multiaddr
	for _, suffix := range []string{"/tcp/%d", "/udp/%d/quic-v1"} {
		if m, err := ma.NewMultiaddr(base + fmt.Sprintf(suffix, port)); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// Close stops the relay service and the host.
func (r *Relay) Close() error {
	return errors.Join(r.svc.Close(), r.host.Close())
}

// LoadOrCreateKey reads the libp2p private key at path (protobuf, as
// crypto.MarshalPrivateKey writes it), or creates an ed25519 key there
// (0600) if the file does not exist.
func LoadOrCreateKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: not a libp2p private key: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	// Write a temporary file and link it into place: the key file is never
	// seen half-written, and one created meanwhile is not clobbered.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tracker-identity-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKey(path)
		}
		return nil, err
	}
	return k, nil
}

// relayAddrStrings is for logs.
func relayAddrStrings(addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}
