package p2p

import (
	"context"
	"net/netip"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

func TestAddrPolicy(t *testing.T) {
	const relay = "12D3KooWLRPJAA5o6KcuLNTAfHEWn95sbgCqAFxMcCPy8Pd4V3Sf"
	onLAN := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fe80::1")}
	public := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("198.51.100.7")}
	tests := []struct {
		name    string
		tracker string
		own     []netip.Addr
		addr    string
		want    bool
	}{
		{"public", "http://tracker.example.org", onLAN, "/ip4/203.0.113.9/tcp/12306", true},
		{"public quic", "http://tracker.example.org", public, "/ip4/203.0.113.9/udp/12306/quic-v1", true},
		{"public v6", "http://tracker.example.org", public, "/ip6/2001:db8::9/tcp/12306", true},
		{"dns", "http://tracker.example.org", public, "/dns/peer.example.org/tcp/12306", true},
		{"loopback", "http://tracker.example.org", onLAN, "/ip4/127.0.0.1/tcp/2222", false},
		{"loopback elsewhere in 127/8", "http://tracker.example.org", onLAN, "/ip4/127.8.9.10/tcp/2222", false},
		{"loopback v6", "http://tracker.example.org", onLAN, "/ip6/::1/tcp/2222", false},
		{"loopback v4 in v6", "http://tracker.example.org", onLAN, "/ip6/::ffff:127.0.0.1/tcp/2222", false},
		{"loopback, tracker on loopback", "http://127.0.0.1:12305", onLAN, "/ip4/127.0.0.1/tcp/2222", true},
		{"loopback, tracker on localhost", "http://localhost:12305", onLAN, "/ip6/::1/tcp/2222", true},
		{"unspecified", "http://127.0.0.1:12305", onLAN, "/ip4/0.0.0.0/tcp/2222", false},
		{"unspecified v6", "http://127.0.0.1:12305", onLAN, "/ip6/::/tcp/2222", false},
		{"this network", "http://127.0.0.1:12305", onLAN, "/ip4/0.1.2.3/tcp/2222", false},
		{"broadcast", "http://127.0.0.1:12305", onLAN, "/ip4/255.255.255.255/udp/2222/quic-v1", false},
		{"multicast", "http://127.0.0.1:12305", onLAN, "/ip4/224.0.0.251/udp/5353/quic-v1", false},
		{"multicast v6", "http://127.0.0.1:12305", onLAN, "/ip6/ff02::1/tcp/1", false},
		{"link-local", "http://127.0.0.1:12305", onLAN, "/ip4/169.254.169.254/tcp/80", false},
		{"link-local v6", "http://127.0.0.1:12305", onLAN, "/ip6/fe80::2/tcp/80", false},
		{"unix", "http://127.0.0.1:12305", onLAN, "/unix/run/docker.sock", false},
		{"private, this machine on a LAN", "http://tracker.example.org", onLAN, "/ip4/10.9.8.7/tcp/12306", true},
		{"private, this machine public only", "http://tracker.example.org", public, "/ip4/10.9.8.7/tcp/12306", false},
		{"private 192.168, public only", "http://tracker.example.org", public, "/ip4/192.168.1.1/tcp/80", false},
		{"cgnat, public only", "http://tracker.example.org", public, "/ip4/100.100.100.100/tcp/80", false},
		{"ula, public only", "http://tracker.example.org", public, "/ip6/fd00::1/tcp/80", false},
		{"this machine's own address", "http://tracker.example.org", onLAN, "/ip4/10.1.2.3/tcp/22", false},
		{"this machine's own public address", "http://tracker.example.org", public, "/ip4/198.51.100.7/tcp/22", false},
		{"this machine's own address, tracker on loopback", "http://127.0.0.1:12305", onLAN, "/ip4/10.1.2.3/tcp/12306", true},
		{"the tracker's own address (its relay)", "http://10.1.2.3:12305", onLAN, "/ip4/10.1.2.3/tcp/12307", true},
		{"circuit through a public relay", "http://tracker.example.org", public, "/ip4/203.0.113.9/tcp/12307/p2p/" + relay + "/p2p-circuit", true},
		{"circuit through a loopback relay", "http://tracker.example.org", public, "/ip4/127.0.0.1/tcp/12307/p2p/" + relay + "/p2p-circuit", false},
		{"bare circuit", "http://tracker.example.org", public, "/p2p/" + relay + "/p2p-circuit", true},
		{"no tracker: loopback", "", onLAN, "/ip4/127.0.0.1/tcp/2222", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewAddrPolicy(tt.tracker)
			p.readOwns = func() []netip.Addr { return tt.own }
			a, err := ma.NewMultiaddr(tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Allow(a); got != tt.want {
				t.Errorf("Allow(%s) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
	var nilPolicy *AddrPolicy
	if !nilPolicy.Allow(ma.StringCast("/ip4/127.0.0.1/tcp/1")) {
		t.Error("a nil policy refused an address")
	}
	p := NewAddrPolicy("http://tracker.example.org")
	p.readOwns = func() []netip.Addr { return public }
	in := []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1"), ma.StringCast("/ip4/203.0.113.9/tcp/2"), ma.StringCast("/ip4/0.0.0.0/tcp/3")}
	if out := p.Filter(in); len(out) != 1 || !out[0].Equal(in[1]) {
		t.Errorf("Filter = %v", out)
	}
}

// The gater stops every dial the policy does not allow, whoever asks: a
// host whose tracker is not on loopback cannot be made to connect to a
// loopback address.
func TestAddrPolicyGatesDials(t *testing.T) {
	a, b := newTestHost(t), newTestHost(t)
	a.SetAddrPolicy(NewAddrPolicy("http://tracker.example.org"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Connect(ctx, loopbackInfo(b)); err == nil {
		t.Fatal("connected to a peer at a loopback address although the tracker is not on loopback")
	}
	c := newTestHost(t)
	c.SetAddrPolicy(NewAddrPolicy("http://127.0.0.1:12305"))
	if err := c.Connect(ctx, loopbackInfo(b)); err != nil {
		t.Fatalf("tracker on loopback: %v", err)
	}
}
