package trackerapi_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

func newID(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

// TestSignedMessage: a signature binds method, route, tracker and body;
// changing any one of them makes it fail.
func TestSignedMessage(t *testing.T) {
	key, _ := newID(t)
	body := []byte(`{"peer_id":"x","ts":1}`)
	msg := trackerapi.SignedMessage("DELETE", "/v1/peers/x", "t1", body)
	if want := "peerix-tracker-write/2\nDELETE\n/v1/peers/x\nt1\n" + string(body); string(msg) != want {
		t.Fatalf("signed message %q, want %q", msg, want)
	}
	sig, err := key.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range [][]byte{
		trackerapi.SignedMessage("POST", "/v1/peers/x", "t1", body),
		trackerapi.SignedMessage("DELETE", "/v1/announce", "t1", body),
		trackerapi.SignedMessage("DELETE", "/v1/peers/x", "t2", body),
		trackerapi.SignedMessage("DELETE", "/v1/peers/x", "t1", append(bytes.Clone(body), ' ')),
		body,
	} {
		if ok, _ := key.GetPublic().Verify(other, sig); ok {
			t.Errorf("signature over %q also verifies %q", msg, other)
		}
	}
	got, err := trackerapi.ParseSignature(trackerapi.SignatureValue(sig))
	if err != nil || !bytes.Equal(got, sig) {
		t.Fatalf("round trip: %x %v", got, err)
	}
}

func TestParseSignature(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 64))
	tests := []struct {
		name, value string
		old, ok     bool
	}{
		{"v2", "v2 " + b64, false, true},
		{"v1: bare base64", b64, true, false},
		{"empty", "", false, false},
		{"v2 without signature", "v2 ", false, false},
		{"v2 not base64", "v2 !!!", false, false},
		{"v2 unpadded", "v2 " + strings.TrimRight(b64, "="), false, false},
		{"unknown version", "v3 " + b64, false, false},
		{"garbage", "%%%", false, false},
		{"two spaces", "v2  " + b64, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig, err := trackerapi.ParseSignature(tt.value)
			if tt.ok != (err == nil) || (err == nil && len(sig) != 64) {
				t.Fatalf("ParseSignature(%q) = %x, %v", tt.value, sig, err)
			}
			if errors.Is(err, trackerapi.ErrOldSignature) != tt.old {
				t.Fatalf("ParseSignature(%q): %v; old signature %v", tt.value, err, tt.old)
			}
		})
	}
}

func TestCheckAddr(t *testing.T) {
	_, relay := newID(t)
	circuit := "/p2p/" + relay.String() + "/p2p-circuit"
	tests := []struct {
		addr     string
		loopback bool // announcer on loopback
		ok       bool
	}{
		{"/ip4/203.0.113.7/tcp/4001", false, true},
		{"/ip4/203.0.113.7/udp/4001/quic-v1", false, true},
		{"/ip6/2001:db8::1/udp/4001/quic-v1", false, true},
		{"/ip4/10.1.2.3/tcp/4001", false, true},    // private: LANs and NATs
		{"/ip4/192.168.1.2/tcp/4001", false, true}, // private
		{"/ip4/100.64.0.1/tcp/4001", false, true},  // CGNAT
		{"/ip6/fd00::1/tcp/4001", false, true},     // ULA
		{"/dns/tracker.example.org/tcp/4001", false, true},
		{"/dns4/tracker.example.org/udp/4001/quic-v1", false, true},
		{"/ip4/203.0.113.7/tcp/4001" + circuit, false, true},
		{"/dns/tracker.example.org/udp/12306/quic-v1" + circuit, false, true},
		{"/ip4/127.0.0.1/tcp/2222", false, false},
		{"/ip4/127.0.0.1/tcp/2222", true, true},
		{"/ip4/127.9.9.9/tcp/2222", false, false},
		{"/ip6/::1/tcp/2222", false, false},
		{"/ip6/::1/tcp/2222", true, true},
		{"/ip6/::ffff:127.0.0.1/tcp/2222", false, false},
		{"/dns/localhost/tcp/2222", false, false},
		{"/dns/LocalHost./tcp/2222", false, false},
		{"/dns4/evil.localhost/tcp/2222", false, false},
		{"/dns/localhost/tcp/2222", true, true},
		{"/dns/127.0.0.1/tcp/2222", false, false},
		{"/ip4/127.0.0.1/tcp/1" + circuit, false, false},
		{"/ip4/127.0.0.1/tcp/1" + circuit, true, true},
		{"/ip4/0.0.0.0/tcp/4001", true, false},
		{"/ip4/0.1.2.3/tcp/4001", false, false},
		{"/ip6/::/tcp/4001", true, false},
		{"/ip4/169.254.1.1/tcp/4001", true, false},
		{"/ip6/fe80::1/tcp/4001", true, false},
		{"/ip6zone/eth0/ip6/fe80::1/tcp/4001", true, false},
		{"/ip4/224.0.0.1/udp/4001/quic-v1", true, false},
		{"/ip6/ff02::1/udp/4001/quic-v1", true, false},
		{"/ip4/255.255.255.255/udp/4001/quic-v1", true, false},
		{"/ip4/240.0.0.1/tcp/4001", true, false},
		{"/ip4/203.0.113.7/tcp/0", false, false},
		{"/ip4/203.0.113.7/udp/4001", false, false},
		{"/ip4/203.0.113.7/udp/4001/quic", false, false},
		{"/ip4/203.0.113.7/tcp/4001/ws", false, false},
		{"/ip4/203.0.113.7/tcp/4001/p2p/" + relay.String(), false, false}, // a peer ID that is not its own: only before /p2p-circuit
		{"/ip4/203.0.113.7", false, false},
		{"/unix/tmp/sock", true, false},
		{"/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234", false, false},
		{"/p2p/" + relay.String() + "/p2p-circuit", false, false},
		{"/ip4/203.0.113.7/tcp/4001" + circuit + "/p2p/" + relay.String(), false, false},
	}
	for _, tt := range tests {
		m, err := ma.NewMultiaddr(tt.addr)
		if err != nil {
			t.Fatalf("%s: %v", tt.addr, err)
		}
		err = trackerapi.CheckAddr(m, tt.loopback)
		if (err == nil) != tt.ok {
			t.Errorf("CheckAddr(%s, loopback announcer %v) = %v; want usable %v", tt.addr, tt.loopback, err, tt.ok)
		}
	}
	if trackerapi.CheckAddr(nil, true) == nil {
		t.Error("empty address usable")
	}
}

func TestCircuitAddrs(t *testing.T) {
	_, relay := newID(t)
	_, target := newID(t)
	info := trackerapi.PeerAddrs{PeerID: relay.String(), Addrs: []string{"/ip4/192.0.2.1/tcp/12306", "garbage", "/ip4/192.0.2.1/udp/12306/quic-v1/p2p/" + relay.String()}}
	ai, err := info.AddrInfo()
	if err != nil || len(ai.Addrs) != 2 {
		t.Fatalf("%v %v", ai, err)
	}
	got := trackerapi.CircuitAddrs(ai, target)
	want := "/ip4/192.0.2.1/tcp/12306/p2p/" + relay.String() + "/p2p-circuit/p2p/" + target.String()
	if len(got) != 2 || got[0].String() != want {
		t.Fatalf("%v", got)
	}
	if _, err := (trackerapi.PeerAddrs{PeerID: "x"}).AddrInfo(); err == nil {
		t.Fatal("bad peer id accepted")
	}
}

// FuzzParseSignature: any header value parses or fails, never panics; a
// value that parses is a v2 value of the same bytes.
func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{"", "v2 AAAA", "AAAA", "v2 ", "v3 AAAA", "v2 !!", "v2  AAAA", " ", "v2\tAAAA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		sig, err := trackerapi.ParseSignature(v)
		if err != nil {
			return
		}
		if len(sig) == 0 || trackerapi.SignatureValue(sig) != v {
			t.Fatalf("ParseSignature(%q) = %x, which formats as %q", v, sig, trackerapi.SignatureValue(sig))
		}
	})
}

// FuzzCheckAddr: any address the multiaddr parser takes is judged without
// a panic; a usable one starts with an IP or DNS component and is usable
// from a loopback announcer too.
func FuzzCheckAddr(f *testing.F) {
	for _, s := range []string{"/ip4/1.2.3.4/tcp/1", "/ip6/::1/udp/1/quic-v1", "/dns/localhost/tcp/1", "/unix/x", "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWRelayRelayRelayRelayRelayRelayRelayRelayRel/p2p-circuit", "/ip4/0.0.0.0/tcp/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return
		}
		for _, loop := range []bool{false, true} {
			if trackerapi.CheckAddr(m, loop) == nil {
				switch m[0].Code() {
				case ma.P_IP4, ma.P_IP6, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
				default:
					t.Fatalf("%s usable, starting with %s", m, m[0].String())
				}
				if !loop && trackerapi.CheckAddr(m, true) != nil {
					t.Fatalf("%s usable from anywhere but not from loopback", m)
				}
			}
		}
	})
}
