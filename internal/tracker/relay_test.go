package tracker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// relayPair is a relay (admitting the peers in live) and two hosts that
// can reach each other only through it: a listener with a reservation
// and a dialer.
type relayPair struct {
	relay            *Relay
	relayInfo        peer.AddrInfo
	listener, dialer host.Host
	live             sync.Map // peer.ID -> bool
	adm              *Admission
}

func newRelayPair(t *testing.T, rc *relayv2.Resources) *relayPair {
	t.Helper()
	p := &relayPair{}
	p.adm = NewAdmission(func(_ context.Context, id peer.ID) (bool, error) {
		_, ok := p.live.Load(id)
		return ok, nil
	}, quietLog())
	p.adm.wait = 300 * time.Millisecond
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	p.relay, err = StartRelay(key, []string{"127.0.0.1"}, 0, RelayOptions{Admission: p.adm, Resources: rc}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.relay.Close() })
	// Neither host listens on any transport address: only through the relay.
	p.listener, err = libp2p.New(libp2p.ListenAddrStrings("/p2p-circuit"), libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.listener.Close() })
	p.dialer, err = libp2p.New(libp2p.NoListenAddrs, libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.dialer.Close() })
	p.relayInfo, err = p.relay.Info("127.0.0.1:12305").AddrInfo()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// reserve connects the listener to the relay and reserves a slot.
func (p *relayPair) reserve(ctx context.Context) (*client.Reservation, error) {
	if err := p.listener.Connect(ctx, p.relayInfo); err != nil {
		return nil, err
	}
	return client.Reserve(ctx, p.listener, p.relayInfo)
}

// open dials the listener through the relay and opens a stream of proto.
func (p *relayPair) open(ctx context.Context, proto protocol.ID) (network.Stream, error) {
	target := peer.AddrInfo{ID: p.listener.ID(), Addrs: CircuitAddrs(p.relayInfo, p.listener.ID())}
	if err := p.dialer.Connect(network.WithAllowLimitedConn(ctx, "test"), target); err != nil {
		return nil, err
	}
	return p.dialer.NewStream(network.WithAllowLimitedConn(ctx, "test"), p.listener.ID(), proto)
}

// TestRelayCarriesNAR: two registered hosts that can reach each other
// only through the tracker's relay stream 1 MiB (8 times the libp2p
// default limit of 128 KiB) over a relayed connection whose limits are
// RelayMaxDuration and RelayMaxData.
func TestRelayCarriesNAR(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := newRelayPair(t, nil)
	p.live.Store(p.listener.ID(), true)
	p.live.Store(p.dialer.ID(), true)

	// The relay listens on one port for TCP and QUIC, and advertises its
	// loopback addresses because it has no others.
	info := p.relay.Info("127.0.0.1:12305")
	if info.PeerID != p.relay.ID().String() || len(info.Addrs) != 2 {
		t.Fatalf("relay info: %+v", info)
	}
	ports := map[string]bool{}
	for _, a := range p.relay.Addrs() {
		port, err := a.ValueForProtocol(ma.P_TCP)
		if err != nil {
			port, _ = a.ValueForProtocol(ma.P_UDP)
		}
		ports[port] = true
	}
	if len(ports) != 1 {
		t.Fatalf("TCP and QUIC ports differ: %v", p.relay.Addrs())
	}

	rsv, err := p.reserve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rsv.LimitDuration != RelayMaxDuration || rsv.LimitData != RelayMaxData {
		t.Fatalf("reservation limits %v, %d bytes; want %v, %d", rsv.LimitDuration, rsv.LimitData, RelayMaxDuration, RelayMaxData)
	}

	const proto = "/peerix/test-nar/1.0.0"
	const size = 1 << 20
	got := make(chan [32]byte, 1)
	p.listener.SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		h := sha256.New()
		n, _ := io.Copy(h, s)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
		binary.Write(s, binary.BigEndian, n)
	})
	s, err := p.open(ctx, proto)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Conn().RemoteMultiaddr().String(), "/p2p-circuit") {
		t.Fatalf("not relayed: %s", s.Conn().RemoteMultiaddr())
	}
	if !s.Conn().Stat().Limited {
		t.Fatal("relayed connection not limited: the relay must bound what it carries")
	}
	data := make([]byte, size)
	rand.Read(data)
	start := time.Now()
	if _, err := io.Copy(s, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := binary.Read(s, binary.BigEndian, &n); err != nil {
		t.Fatalf("reading the count: %v", err)
	}
	if n != size {
		t.Fatalf("relay carried %d bytes, want %d", n, size)
	}
	if sum := <-got; sum != sha256.Sum256(data) {
		t.Fatal("data corrupted through the relay")
	}
	t.Logf("1 MiB through the relay in %v", time.Since(start))
}

// TestRelayAdmission: a host the tracker does not know gets no slot and
// no circuit; one whose registration arrives while it waits gets both.
func TestRelayAdmission(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := newRelayPair(t, nil)
	if _, err := p.reserve(ctx); err == nil {
		t.Fatal("an unregistered host reserved a relay slot")
	}
	// Registered while the reservation waits.
	go func() {
		time.Sleep(100 * time.Millisecond)
		p.live.Store(p.listener.ID(), true)
		p.adm.Registered(p.listener.ID())
	}()
	start := time.Now()
	if _, err := p.reserve(ctx); err != nil {
		t.Fatalf("reservation of a host registered meanwhile: %v", err)
	}
	t.Logf("reserved %v after asking, its registration arriving after 100 ms", time.Since(start).Round(time.Millisecond))
	p.listener.SetStreamHandler("/x/1", func(s network.Stream) { s.Close() })
	if _, err := p.open(ctx, "/x/1"); err == nil {
		t.Fatal("an unregistered host opened a circuit to a registered one")
	}
	p.live.Store(p.dialer.ID(), true)
	p.dialer.Network().(*swarm.Swarm).Backoff().Clear(p.listener.ID())
	if _, err := p.open(ctx, "/x/1"); err != nil {
		t.Fatalf("a registered host could not reach another through the relay: %v", err)
	}
}

// TestRelayDataLimit: a relayed connection ends once it has carried its
// data limit, and a new one carries on.
func TestRelayDataLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rc := RelayResources()
	rc.Limit = &relayv2.RelayLimit{Duration: time.Minute, Data: 256 << 10}
	p := newRelayPair(t, &rc)
	p.live.Store(p.listener.ID(), true)
	p.live.Store(p.dialer.ID(), true)
	if _, err := p.reserve(ctx); err != nil {
		t.Fatal(err)
	}
	const proto = "/x/sink/1"
	p.listener.SetStreamHandler(proto, func(s network.Stream) {
		io.Copy(io.Discard, s)
		s.Close()
	})
	s, err := p.open(ctx, proto)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(s, io.LimitReader(rand.Reader, 4<<20))
	if err == nil {
		s.CloseWrite()
		_, err = io.Copy(io.Discard, s)
	}
	if n >= 4<<20 && err == nil {
		t.Fatalf("%d bytes through a relayed connection limited to %d", n, 256<<10)
	}
	t.Logf("the relayed connection broke after %d bytes: %v", n, err)
	waitFor(t, "the limited connection closed", 5*time.Second, func() bool {
		return len(p.dialer.Network().ConnsToPeer(p.listener.ID())) == 0
	})
	s, err = p.open(ctx, proto)
	if err != nil {
		t.Fatalf("a new relayed connection after the limit: %v", err)
	}
	if _, err := s.Write(make([]byte, 1024)); err != nil {
		t.Fatalf("writing on the new connection: %v", err)
	}
	s.Close()
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), IdentityFile)
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !k1.Equals(k2) {
		t.Fatalf("key not persistent: %v", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Fatal("garbage key accepted")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestHostAddrs(t *testing.T) {
	for host, want := range map[string]string{
		"tracker.example.org:12305": "/dns/tracker.example.org/tcp/7 /dns/tracker.example.org/udp/7/quic-v1",
		"tracker.example.org":       "/dns/tracker.example.org/tcp/7 /dns/tracker.example.org/udp/7/quic-v1",
		"203.0.113.9:80":            "/ip4/203.0.113.9/tcp/7 /ip4/203.0.113.9/udp/7/quic-v1",
		"[2001:db8::1]:80":          "/ip6/2001:db8::1/tcp/7 /ip6/2001:db8::1/udp/7/quic-v1",
		"127.0.0.1:80":              "",
		"localhost:80":              "",
		"[::]:80":                   "",
		"evil/p2p/x:80":             "",
		"":                          "",
	} {
		var got []string
		for _, a := range hostAddrs(host, 7) {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != want {
			t.Errorf("%q: %v, want %s", host, got, want)
		}
	}
}
