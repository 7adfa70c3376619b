package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/ops"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata (status, doctor, help)")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got:\n%s\n--- want:\n%s", file, got, want)
	}
}

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func sampleStatus() ops.Status {
	return ops.Status{
		PeerID:    "12D3KooWQnwEGNqcM2nAcPtRR9rAX8Hrg4k9kJLCHoTWpMnbhvT9",
		Mode:      "p2p",
		Version:   "0.3.0",
		Started:   testNow.Add(-3723 * time.Second),
		UptimeS:   3723,
		Listen:    "0.0.0.0:12304",
		StoreRoot: "/",
		StateDir:  "/var/lib/peerix",
		Tracker:   "https://tracker.example.org",
		Upstream:  "https://cache.nixos.org",
		Filter:    "upstream",
		Store:     &ops.StoreInfo{Paths: 41235, Shared: 30002, Filter: "upstream", FilterChecked: 36000, FilterTotal: 41235, Announced: 30002},
		Peers:     ops.PeerCounts{Known: 3, Connected: 2, LAN: 1, P2P: 2},
		Transfers: []ops.TransferInfo{
			{ID: "t1", Direction: "down", StorePath: "/nix/store/0c0rbkz6fv6z6hkfg8r9cxk6wq1b2d7m-firefox-128.0", Source: "p2p",
				Peer: "12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh", Size: 250 << 20, Done: 130 << 20, RateBps: 3.2 * (1 << 20), ElapsedS: 40.6},
			{ID: "t2", Direction: "down", Hash: "1b4sb93wp679q4zx9k1ignby1yna3z7c", Source: "lan", Peer: "192.168.1.20:12304", Size: -1, Done: 700 << 10, RateBps: 350 << 10, ElapsedS: 2},
			{ID: "t5", Direction: "down", StorePath: "/nix/store/6c0rbkz6fv6z6hkfg8r9cxk6wq1b2d7m-llvm-18.1", Source: "lan", Peer: "192.168.1.22:12304",
				Size: 256 << 20, Done: 96 << 20, WireBytes: 36 << 20, WireRatio: 0.375, RateBps: 24 << 20, ElapsedS: 4,
				Sources: []ops.SourceInfo{
					{Peer: "192.168.1.20:12304", Done: 40 << 20, WireBytes: 15 << 20, RateBps: 10 << 20},
					{Peer: "192.168.1.21:12304", Done: 32 << 20, WireBytes: 12 << 20, RateBps: 8 << 20},
					{Peer: "192.168.1.22:12304", Done: 24 << 20, WireBytes: 9 << 20, RateBps: 6 << 20},
				}},
			{ID: "up-3", Direction: "up", StorePath: "/nix/store/2f3l6s9p5y7xk3d4m8q0ccvzna1b6r9w-glibc-2.39", Source: "http", Peer: "192.168.1.31", Size: 30 << 20, Done: 12 << 20, RateBps: 80 << 20, ElapsedS: 0.15},
			{ID: "up-4", Direction: "up", StorePath: "/nix/store/3b4sb93wp679q4zx9k1ignby1yna3z7c-openssl-3.0", Source: "p2p", Relayed: true,
				Peer: "12D3KooWZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210zyxwvuts", Size: 6 << 20, Done: 1 << 20, RateBps: 11.859259840998963, ElapsedS: 88.4},
		},
		RecentTransfers: []ops.TransferInfo{
			{ID: "down-9", Direction: "down", StorePath: "/nix/store/4c0rbkz6fv6z6hkfg8r9cxk6wq1b2d7m-hello-2.12", Source: "lan", Peer: "192.168.1.20:12304",
				Size: 50 << 10, Done: 50 << 10, RateBps: 2 << 20, ElapsedS: 0.02, Finished: true},
			{ID: "up-8", Direction: "up", Hash: "5d4sb93wp679q4zx9k1ignby1yna3z7c", Source: "http", Peer: "192.168.1.31",
				Size: 9 << 20, Done: 3 << 20, RateBps: 1 << 20, ElapsedS: 3, Finished: true, Error: "aborted"},
		},
		History: ops.History{
			Start: testNow.Add(-59 * time.Minute).Truncate(time.Minute), StepS: 60,
			SentBytes:     append(make([]int64, 58), 30<<20, 12<<20),
			ReceivedBytes: append(make([]int64, 58), 130<<20, 0),
			Hits:          append(make([]int64, 58), 40, 2),
			Misses:        append(make([]int64, 58), 100, 18),
		},
		Counters: ops.Counters{
			Requests:             1234,
			Hits:                 map[string]int64{"local": 310, "peers": 42, "lan": 12, "p2p": 30},
			Misses:               map[string]int64{"local": 55, "peers": 800, "lan": 0, "p2p": 1},
			BytesSent:            3 << 30,
			BytesReceived:        map[string]int64{"lan": 100 << 20, "p2p": 1536 << 20},
			VerificationFailures: 2,
		},
	}
}

func samplePeers() []ops.PeerInfo {
	return []ops.PeerInfo{
		{ID: "192.168.1.20:12304", Source: "lan", Connected: true, Addrs: []string{"192.168.1.20:12304"}},
		{ID: "12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh", Source: "p2p", Connected: true, Relayed: true,
			Addrs:      []string{"/ip4/203.0.113.7/udp/12306/quic-v1"},
			Reputation: &ops.Reputation{Successes: 19, Failures: 1, SuccessRate: 0.95, LatencyMs: 42.4}},
		{ID: "192.168.1.21:12304", Source: "lan", Connected: true, Addrs: []string{"192.168.1.21:12304"},
			Reputation: &ops.Reputation{}},
		{ID: "12D3KooWZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210zyxwvuts", Source: "p2p",
			Reputation: &ops.Reputation{Successes: 1, Failures: 4, SuccessRate: 0.25,
				BackoffUntil: testNow.Add(90 * time.Second), LastFailure: "hash mismatch"}},
	}
}

// fakeDaemon serves /api/status, /api/peers and /health like peerix serve.
func fakeDaemon(t *testing.T, st ops.Status, peers []ops.PeerInfo, health ops.Health) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	serve := func(v any, code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(v)
		}
	}
	mux.Handle("GET /api/status", serve(st, 200))
	mux.Handle("GET /api/peers", serve(peers, 200))
	code := 200
	if health.Status != ops.Healthy {
		code = 503
	}
	mux.Handle("GET /health", serve(health, code))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func withStatusNow(t *testing.T) {
	old := statusNow
	statusNow = func() time.Time { return testNow }
	t.Cleanup(func() { statusNow = old })
}

func TestStatusTable(t *testing.T) {
	withStatusNow(t)
	srv := fakeDaemon(t, sampleStatus(), samplePeers(), ops.Health{Status: ops.Healthy})
	var out bytes.Buffer
	if err := status([]string{"--url", srv.URL + "/"}, &out); err != nil {
		t.Fatal(err)
	}
	golden(t, "status.golden", out.String())
}

func TestStatusLocalModeNoPeers(t *testing.T) {
	withStatusNow(t)
	st := ops.Status{Mode: "local", Version: "0.3.0", UptimeS: 5, Listen: "127.0.0.1:12304", StoreRoot: "/srv/store",
		Store:    &ops.StoreInfo{Paths: 12, Shared: -1, Filter: "none"},
		Counters: ops.Counters{Requests: 3, Hits: map[string]int64{"local": 2}, Misses: map[string]int64{"local": 1}}}
	srv := fakeDaemon(t, st, []ops.PeerInfo{}, ops.Health{Status: ops.Healthy})
	var out bytes.Buffer
	if err := status([]string{"--url", srv.URL}, &out); err != nil {
		t.Fatal(err)
	}
	golden(t, "status_local.golden", out.String())
}

func TestStatusUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close()
	var out bytes.Buffer
	err := status([]string{"--url", u}, &out)
	if err == nil {
		t.Fatal("no error for a daemon that is not running")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "cannot reach the peerix daemon at "+u) ||
		!strings.Contains(msg, "connection refused") {
		t.Errorf("error is not one clear line: %q", msg)
	}
	if out.Len() != 0 {
		t.Errorf("printed %q before failing", out.String())
	}
}

func TestStatusNotADaemon(t *testing.T) {
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "only from this machine", http.StatusForbidden)
	}))
	defer forbidden.Close()
	err := status([]string{"--url", forbidden.URL}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "only on the machine it runs on") {
		t.Errorf("403: %v", err)
	}
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	err = status([]string{"--url", notFound.URL}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "404 Not Found (is it a peerix daemon?)") {
		t.Errorf("404: %v", err)
	}
	for _, args := range [][]string{{"--url", "ftp://x"}, {"--url", "127.0.0.1:12304"}, {"extra"}} {
		if err := status(args, &bytes.Buffer{}); err == nil {
			t.Errorf("status %q: no error", args)
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, c := range []struct {
		done, size int64
		bytes      bool
		want       string
	}{
		{130 << 20, 250 << 20, true, "[#####.....] 52% 130/250 MiB"},
		{0, 250 << 20, true, "[..........] 0% 0/250 MiB"},
		{250 << 20, 250 << 20, true, "[##########] 100% 250/250 MiB"},
		{300 << 20, 250 << 20, true, "[##########] 100% 250/250 MiB"},
		{512 << 10, 2 << 20, true, "[##........] 25% 0.5/2.0 MiB"},
		{100, 1000, true, "[#.........] 10% 100/1000 B"},
		{3 << 30, 5 << 30, true, "[######....] 60% 3.0/5.0 GiB"},
		{700 << 10, -1, true, "[??????????] 700 KiB"},
		{36000, 41235, false, "[########..] 87% 36000/41235"},
	} {
		if got := progressBar(c.done, c.size, c.bytes); got != c.want {
			t.Errorf("progressBar(%d, %d) = %q, want %q", c.done, c.size, got, c.want)
		}
	}
}
