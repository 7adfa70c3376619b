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
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

// TestRelayCarriesNAR: two hosts that can reach each other only through
// the tracker's relay stream 1 MiB (8 times the libp2p default limit of
// 128 KiB) over an unlimited relayed connection.
func TestRelayCarriesNAR(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	relay, err := StartRelay(key, []string{"127.0.0.1"}, 0, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()

	// The relay listens on one port for TCP and QUIC, and advertises its
	// loopback addresses because it has no others.
	info := relay.Info("127.0.0.1:12305")
	if info.PeerID != relay.ID().String() || len(info.Addrs) != 2 {
		t.Fatalf("relay info: %+v", info)
	}
	ports := map[string]bool{}
	for _, a := range relay.Addrs() {
		p, err := a.ValueForProtocol(ma.P_TCP)
		if err != nil {
			p, _ = a.ValueForProtocol(ma.P_UDP)
		}
		ports[p] = true
	}
	if len(ports) != 1 {
		t.Fatalf("TCP and QUIC ports differ: %v", relay.Addrs())
	}
	relayInfo, err := info.AddrInfo()
	if err != nil {
		t.Fatal(err)
	}

	// Neither host listens on any transport address: only through the relay.
	listener, err := libp2p.New(libp2p.ListenAddrStrings("/p2p-circuit"), libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	dialer, err := libp2p.New(libp2p.NoListenAddrs, libp2p.EnableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()

	if err := listener.Connect(ctx, relayInfo); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Reserve(ctx, listener, relayInfo); err != nil {
		t.Fatal(err)
	}

	const proto = "/peerix/test-nar/1.0.0"
	const size = 1 << 20
	got := make(chan [32]byte, 1)
	listener.SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		h := sha256.New()
		n, _ := io.Copy(h, s)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
		binary.Write(s, binary.BigEndian, n)
	})

	target := peer.AddrInfo{ID: listener.ID(), Addrs: CircuitAddrs(relayInfo, listener.ID())}
	if err := dialer.Connect(ctx, target); err != nil {
		t.Fatal(err)
	}
	s, err := dialer.NewStream(ctx, listener.ID(), proto) // no WithAllowLimitedConn: the connection is not limited
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Conn().RemoteMultiaddr().String(), "/p2p-circuit") {
		t.Fatalf("not relayed: %s", s.Conn().RemoteMultiaddr())
	}
	if s.Conn().Stat().Limited {
		t.Fatal("relayed connection is limited")
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
