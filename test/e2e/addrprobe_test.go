package e2e

// Addresses as probes: a tracker names where the holders of a hash are,
// and nobody vouches for those addresses. An attacker who runs (or feeds)
// a tracker names the daemon's own loopback and LAN ports as a holder's
// addresses, and its own loopback as the relay's: a daemon that dials what
// it is told connects to services on its own machine. The tracker here is
// written from docs/protocol.md ("Tracker HTTP API"): it takes every
// write, has no hash index (404, as an older tracker), and answers
// /v1/find and /v1/info with the addresses the test chose.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countAccepts accepts connections on ln until it closes, counting them
// and closing each at once.
func countAccepts(ln net.Listener) *atomic.Int64 {
	n := &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return n
}

func portOf(ln net.Listener) string { return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) }

// TestAddressProbes: B's daemon, in p2p mode, uses a tracker on host U
// that names, as the one holder of a hash, a peer at B's own loopback,
// B's own LAN address, the unspecified address, a link-local one and a
// unix socket, and one honest-looking address on U; and as its relay, a
// peer at B's loopback. B's Nix asks for the hash. B dials the address on
// U (so it did try the holder) and none of its own ports.
func TestAddressProbes(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "U", "B")
	U, B := lan.host("U"), lan.host("B")

	// B's own ports the attacker points at, and U's honest-looking one.
	bLoop := B.listenTCP(t, "127.0.0.1:0")
	bLAN := B.listenTCP(t, net.JoinHostPort(B.addr.String(), "0"))
	bRelay := B.listenTCP(t, "127.0.0.1:0")
	uHolder := U.listenTCP(t, net.JoinHostPort(U.addr.String(), "0"))
	hitLoop, hitLAN, hitRelay, hitU := countAccepts(bLoop), countAccepts(bLAN), countAccepts(bRelay), countAccepts(uHolder)

	_, holder := newPeerKey(t)
	_, relay := newPeerKey(t)
	hash := randomNix32(32)
	addrs := []string{
		"/ip4/127.0.0.1/tcp/" + portOf(bLoop),
		"/ip4/" + B.addr.String() + "/tcp/" + portOf(bLAN),
		"/ip4/0.0.0.0/tcp/" + portOf(bLAN),
		"/ip4/169.254.7.7/tcp/" + portOf(bLoop),
		"/unix/run/peerix-probe.sock",
		"/ip4/" + U.addr.String() + "/tcp/" + portOf(uHolder),
	}
	var finds atomic.Int64
	ln := U.listenTCP(t, "0.0.0.0:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		answer := func(v any) { json.NewEncoder(w).Encode(v) }
		switch p := r.URL.Path; {
		case p == "/v1/info":
			answer(map[string]any{"ok": true, "observed_addr": r.RemoteAddr, "ttl_s": 120,
				"relay": map[string]any{"peer_id": relay, "addrs": []string{"/ip4/127.0.0.1/tcp/" + portOf(bRelay)}}})
		case p == "/v1/announce":
			answer(map[string]any{"ok": true, "observed_addr": r.RemoteAddr, "ttl_s": 120, "registered": true})
		case p == "/v1/packages":
			answer(map[string]any{"ok": true, "count": 0})
		case strings.HasPrefix(p, "/v1/peers/") && r.Method == http.MethodDelete:
			answer(map[string]any{"ok": true, "removed": true})
		case p == "/v1/find/"+hash:
			finds.Add(1)
			answer(map[string]any{"peers": []map[string]any{{"peer_id": holder, "addrs": addrs,
				"last_seen": time.Now().UTC().Format(time.RFC3339Nano), "packages": 1}}})
		case strings.HasPrefix(p, "/v1/find/"):
			answer(map[string]any{"peers": []any{}})
		default: // /v1/index among others: an older tracker
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	trackerURL := "http://" + net.JoinHostPort(U.addr.String(), portOf(ln))

	d := p2pOnly(t, B, "B", trackerURL, initStore(t, "b-store"))
	// The relay the tracker names is B's own loopback: B must not go
	// there, now or on its retries.
	time.Sleep(2 * time.Second)
	for i := range 3 {
		resp, body := clientGet(t, d.client, http.MethodGet, d.url+"/"+hash+".narinfo")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /%s.narinfo through B (%d): %s, want 404 (the holder speaks no libp2p)\n%s", hash, i, resp.Status, body)
		}
	}
	waitFor(t, "B to try the holder's address on U", 10*time.Second, func() (bool, string) {
		return hitU.Load() > 0, fmt.Sprintf("%d /v1/find requests, %d connections to U", finds.Load(), hitU.Load())
	})
	time.Sleep(time.Second) // any dial still under way
	for _, c := range []struct {
		what string
		n    *atomic.Int64
	}{
		{"B's own loopback port, named as the holder's address", hitLoop},
		{"B's own LAN port, named as the holder's address (and as 0.0.0.0)", hitLAN},
		{"B's own loopback port, named as the relay's address", hitRelay},
	} {
		if n := c.n.Load(); n != 0 {
			t.Errorf("B connected %d times to %s", n, c.what)
		}
	}
	t.Logf("B asked /v1/find %d times and connected %d times to the holder's address on U; to its own ports: %d (loopback), %d (LAN), %d (relay)",
		finds.Load(), hitU.Load(), hitLoop.Load(), hitLAN.Load(), hitRelay.Load())
	d.alive(t)
}
