package ops

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerix/peerix/internal/cache"
)

const (
	hashA = "0c0rbkz6fv6z6hkfg8r9cxk6wq1b2d7m"
	hashB = "1b4sb93wp679q4zx9k1ignby1yna3z7c"
	// narHashA is a NarHash for NAR URLs of hashA.
	narHashA = "1wywkaa872dj02aymcz8y6iyh2lkkilq51r6v0gvsgpr5j37pdd8"
	hashC    = "2f3l6s9p5y7xk3d4m8q0ccvzna1b6r9w"
)

// newTestOps makes an Ops. Tests that move time make it inside a
// synctest bubble and sleep: time.Now is then the bubble's fake clock.
func newTestOps(t *testing.T, opts Options) *Ops {
	t.Helper()
	if opts.Mode == "" {
		opts.Mode = "local"
	}
	if opts.Version == "" {
		opts.Version = "1.2.3-test"
	}
	return New(opts)
}

// get serves one request through h from addr (RemoteAddr).
func get(h http.Handler, target, remoteAddr string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", target, nil)
	r.RemoteAddr = remoteAddr
	r.Host = "127.0.0.1:12304"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestClassify(t *testing.T) {
	cases := map[string]int{
		"/nix-cache-info":                         rCacheInfo,
		"/local/nix-cache-info":                   rCacheInfo,
		"/" + hashA + ".narinfo":                  rRemoteNarInfo,
		"/local/" + hashA + ".narinfo":            rLocalNarInfo,
		"/nar/" + hashA + "-" + narHashA + ".nar": rLocalNAR,
		"/local/nar/" + hashA + "-x":              rLocalNAR,
		"/nar/lan/1.2.3.4/1/x.nar":                rRemoteNAR,
		"/nar/p2p/x.nar":                          rRemoteNAR,
		"/local/nar/lan/x":                        rLocalNAR,
		"/health":                                 rHealth,
		"/metrics":                                rMetrics,
		"/api/status":                             rAPI,
		"/dashboard":                              rDashboard,
		"/":                                       rOther,
		"/local/health":                           rOther,
		"/a/b.narinfo":                            rOther,
	}
	for p, want := range cases {
		if got := classify(p); got != want {
			t.Errorf("classify(%q) = %s, want %s", p, routeNames[got], routeNames[want])
		}
	}
}

func TestInstrumentCountsAndKeepsInterfaces(t *testing.T) {
	o := newTestOps(t, Options{})
	var sawReaderFrom, sawFlusher bool
	h := o.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, sawReaderFrom = w.(io.ReaderFrom)
		_, sawFlusher = w.(http.Flusher)
		switch r.URL.Path {
		case "/" + hashA + ".narinfo":
			http.NotFound(w, r)
		case "/nar/" + hashA + "-" + narHashA + ".nar":
			io.Copy(w, strings.NewReader("nar bytes")) // goes through ReadFrom
		case "/health":
			w.Write([]byte("ok"))
		}
	}))
	get(h, "/"+hashA+".narinfo", "127.0.0.1:1")
	get(h, "/"+hashA+".narinfo", "127.0.0.1:1")
	w := get(h, "/nar/"+hashA+"-"+narHashA+".nar", "10.0.0.2:1")
	if w.Body.String() != "nar bytes" || w.Code != 200 {
		t.Errorf("NAR through ReadFrom: %d %q", w.Code, w.Body)
	}
	get(h, "/health", "127.0.0.1:1")
	if !sawReaderFrom || !sawFlusher {
		t.Errorf("wrapped writer lost io.ReaderFrom (%v) or http.Flusher (%v)", sawReaderFrom, sawFlusher)
	}
	if got := o.stats.requests.Load(); got != 3 {
		t.Errorf("cache requests counted %d, want 3 (the operator's routes do not count)", got)
	}
	text := scrape(t, o)
	for _, want := range []string{
		`peerix_requests_total{code="404",route="remote-narinfo"} 2`,
		`peerix_requests_total{code="200",route="local-nar"} 1`,
		`peerix_requests_total{code="200",route="health"} 1`,
		`peerix_request_duration_seconds_count{route="remote-narinfo"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestInstrumentAbortedTransfer(t *testing.T) {
	o := newTestOps(t, Options{})
	h := o.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(2<<20))
		w.WriteHeader(200)
		w.Write(make([]byte, 1<<20))
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Errorf("Instrument swallowed or changed the panic: %v", r)
			}
		}()
		get(h, "/local/nar/"+hashA+"-"+narHashA+".nar", "10.0.0.2:5000")
	}()
	if !strings.Contains(scrape(t, o), `peerix_requests_total{code="aborted",route="local-nar"} 1`) {
		t.Error("aborted request not counted as aborted")
	}
	inFlight, recent := o.transferInfos()
	if len(inFlight) != 0 || len(recent) != 1 {
		t.Fatalf("upload transfer: %d in flight, %d recent; want 0 and 1", len(inFlight), len(recent))
	}
	r := recent[0]
	if r.Direction != "up" || r.Source != "http" || r.Hash != hashA || r.Peer != "10.0.0.2" || r.Done != 1<<20 || r.Size != 2<<20 || r.Error != "aborted" {
		t.Errorf("upload transfer recorded as %+v", r)
	}
}

func TestInstrumentAllocations(t *testing.T) {
	o := newTestOps(t, Options{})
	h := o.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
	}))
	r := httptest.NewRequest("GET", "/"+hashA+".narinfo", nil)
	w := &nopWriter{h: http.Header{}}
	h.ServeHTTP(w, r) // create the counter child
	allocs := testing.AllocsPerRun(1000, func() { h.ServeHTTP(w, r) })
	if allocs > 0 {
		t.Errorf("Instrument allocates %.1f times per request, want 0", allocs)
	}
}

type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

func TestObserveCache(t *testing.T) {
	o := newTestOps(t, Options{})
	lanURL := "nar/lan/" + hashB + "-1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0.nar"
	evs := []cache.Event{
		{Route: cache.RouteLocalNarInfo, Hash: hashA, Status: 200},
		{Route: cache.RouteLocalNarInfo, Hash: hashA, Status: 200},
		{Route: cache.RouteLocalNarInfo, Hash: hashC, Status: 404},
		{Route: cache.RouteLocalNarInfo, Hash: "bad", Status: 400},
		{Route: cache.RouteRemoteNarInfo, Hash: hashB, Status: 200},
		{Route: cache.RouteRemoteNarInfo, Hash: hashC, Status: 404},
		{Route: cache.RouteLocalNAR, URL: "nar/" + hashA + "-" + narHashA + ".nar", Status: 200, Bytes: 1000},
		{Route: cache.RouteRemoteNAR, URL: lanURL, Status: 200, Bytes: 500},
		{Route: cache.RouteRemoteNAR, URL: "nar/p2p/" + hashC + "-x.nar", Status: 404},
		{Route: cache.RouteCacheInfo, Status: 200},
	}
	for _, ev := range evs {
		o.ObserveCache(ev)
	}
	c := o.stats.counters()
	// Bytes are not counted from these reports: transfers count them as
	// they move (TestTransferBytes).
	want := Counters{
		Hits:          map[string]int64{"local": 2, "peers": 1, "lan": 1, "p2p": 0},
		Misses:        map[string]int64{"local": 1, "peers": 1, "lan": 0, "p2p": 1},
		BytesSent:     0,
		BytesReceived: map[string]int64{"lan": 0, "p2p": 0},
	}
	if fmt.Sprint(c.Hits, c.Misses, c.BytesSent, c.BytesReceived) != fmt.Sprint(want.Hits, want.Misses, want.BytesSent, want.BytesReceived) {
		t.Errorf("counters %+v\nwant %+v", c, want)
	}
	top := o.stats.requested.top(TopN)
	if len(top) != 3 || top[0].Hash != hashA || top[0].Count != 2 {
		t.Errorf("top requested %+v", top)
	}
	served := o.stats.served.top(TopN)
	if len(served) != 2 || served[0].Hash != hashA || served[0].Bytes != 1000 || served[1].Hash != hashB {
		t.Errorf("top served %+v", served)
	}
	text := scrape(t, o)
	for _, w := range []string{
		`peerix_cache_hits_total{source="local"} 2`,
		`peerix_cache_misses_total{source="p2p"} 1`,
	} {
		if !strings.Contains(text, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
}

// TestTransferBytes: bytes count as sent or received while transfers run,
// under the metric names with the unit before _total.
func TestTransferBytes(t *testing.T) {
	o := newTestOps(t, Options{})
	down := o.StartTransfer("", hashA, "lan", 1000)
	down.Add("", 400, 400)
	up := o.StartUpload(hashB, "p2p", "12D3KooWpeer", 300, true)
	up.Add("", 300, 300)
	httpUp := o.StartUpload(hashB, "http", "10.0.0.2", 50, false)
	httpUp.Add("", 50, 50)
	c := o.stats.counters()
	if c.BytesSent != 350 || c.BytesReceived["lan"] != 400 {
		t.Errorf("while running: sent %d, received %v; want 350 and lan 400", c.BytesSent, c.BytesReceived)
	}
	text := scrape(t, o)
	for _, w := range []string{
		`peerix_sent_bytes_total{via="p2p"} 300`,
		`peerix_sent_bytes_total{via="http"} 50`,
		`peerix_received_bytes_total{source="lan"} 400`,
		`peerix_received_bytes_total{source="p2p"} 0`,
		`peerix_transfers_in_flight{direction="down"} 1`,
		`peerix_transfers_in_flight{direction="up"} 2`,
		`peerix_transfers_total{direction="up"} 2`,
	} {
		if !strings.Contains(text, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
	for _, gone := range []string{"peerix_bytes_sent_total", "peerix_bytes_received_total", "peerix_uptime_seconds",
		`peerix_received_bytes_total{source="local"}`, `peerix_received_bytes_total{source="peers"}`} {
		if strings.Contains(text, gone) {
			t.Errorf("metrics still have %s", gone)
		}
	}
	inFlight, _ := o.transferInfos()
	if len(inFlight) != 3 || inFlight[1].Source != "p2p" || !inFlight[1].Relayed || inFlight[1].Direction != "up" || inFlight[2].Source != "http" {
		t.Errorf("in flight: %+v", inFlight)
	}
	down.Done(nil)
	up.Done(nil)
	httpUp.Done(errors.New("broken pipe"))
	if !strings.Contains(scrape(t, o), `peerix_transfers_failed_total{direction="up"} 1`) {
		t.Error("failed upload not counted")
	}
	// Small successful transfers make no activity line; failed ones do.
	if acts := o.recentActivity(10); len(acts) != 1 || !strings.Contains(acts[0].Msg, "broke off") {
		t.Errorf("activity %+v", acts)
	}
}

func TestPeerRequest(t *testing.T) {
	o := newTestOps(t, Options{})
	o.PeerRequest("narinfo", hashA, true, time.Millisecond)
	o.PeerRequest("narinfo", hashB, false, time.Millisecond)
	o.PeerRequest("nar", hashA, true, time.Second)
	c := o.stats.counters()
	if c.Requests != 3 || c.Hits["local"] != 1 || c.Misses["local"] != 1 {
		t.Errorf("counters %+v", c)
	}
	text := scrape(t, o)
	for _, w := range []string{
		`peerix_requests_total{code="200",route="p2p-narinfo"} 1`,
		`peerix_requests_total{code="404",route="p2p-narinfo"} 1`,
		`peerix_requests_total{code="200",route="p2p-nar"} 1`,
	} {
		if !strings.Contains(text, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
}

func TestHistory(t *testing.T) { synctest.Test(t, testHistory) }

func testHistory(t *testing.T) {
	o := newTestOps(t, Options{})
	time.Sleep(time.Until(time.Now().Truncate(time.Minute).Add(time.Minute))) // a minute's start
	o.ObserveCache(cache.Event{Route: cache.RouteRemoteNarInfo, Hash: hashA, Status: 200})
	o.ObserveCache(cache.Event{Route: cache.RouteRemoteNarInfo, Hash: hashB, Status: 404})
	tr := o.StartTransfer("", hashA, "p2p", 100)
	tr.Add("", 100, 100)
	time.Sleep(2 * time.Minute)
	o.StartUpload(hashB, "http", "10.0.0.1", 10, false).Add("", 10, 10)
	o.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashB, Status: 200})
	// NAR hits are not lookups: not in the history.
	o.ObserveCache(cache.Event{Route: cache.RouteRemoteNAR, URL: "nar/p2p/" + hashC + "-x.nar", Status: 200})

	h := o.history.snapshot(time.Now())
	if len(h.Hits) != historyMinutes || h.StepS != 60 || !h.Start.Equal(time.Now().Truncate(time.Minute).Add(-(historyMinutes-1)*time.Minute)) {
		t.Fatalf("history frame: start %v, %d minutes", h.Start, len(h.Hits))
	}
	last := historyMinutes - 1
	if h.ReceivedBytes[last-2] != 100 || h.Hits[last-2] != 1 || h.Misses[last-2] != 1 ||
		h.SentBytes[last] != 10 || h.Hits[last] != 1 || h.Misses[last] != 0 || h.Hits[last-1] != 0 {
		t.Errorf("history %+v", h)
	}
	// An hour later the old minutes are gone, not added to.
	time.Sleep(time.Hour)
	h = o.history.snapshot(time.Now())
	for i := range historyMinutes {
		if h.Hits[i] != 0 || h.ReceivedBytes[i] != 0 || h.SentBytes[i] != 0 {
			t.Fatalf("an hour later, minute %d still counts: %+v", i, h)
		}
	}
	o.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashB, Status: 200})
	if h = o.history.snapshot(time.Now()); h.Hits[last] != 1 {
		t.Errorf("a reused slot: %+v", h.Hits)
	}
}

func TestTopKFindsHeavyHitters(t *testing.T) {
	k := newTopK(16)
	// 3 heavy keys among 1000 distinct light ones.
	for i := range 1000 {
		// Space-saving finds every key counted more than total/capacity
		// (about 1575/16 here) times.
		k.add(fmt.Sprintf("light-%d", i), 0)
		if i%4 == 0 {
			k.add("heavy-a", 0)
		}
		if i%5 == 0 {
			k.add("heavy-b", 0)
		}
		if i%8 == 0 {
			k.add("heavy-c", 0)
		}
	}
	top := k.top(3)
	got := []string{top[0].Hash, top[1].Hash, top[2].Hash}
	if fmt.Sprint(got) != "[heavy-a heavy-b heavy-c]" {
		t.Errorf("top 3 = %v, want heavy-a, heavy-b, heavy-c", got)
	}
	if len(k.items) != 16 || len(k.idx) != 16 {
		t.Errorf("topK holds %d items, %d indexed; want 16", len(k.items), len(k.idx))
	}
	for _, e := range top {
		if e.Count-e.Error > 250 {
			t.Errorf("%s: count %d - error %d exceeds the true count", e.Hash, e.Count, e.Error)
		}
	}
}

func TestHealth(t *testing.T) { synctest.Test(t, testHealth) }

func testHealth(t *testing.T) {
	stateDir := t.TempDir()
	o := newTestOps(t, Options{
		StateDir: stateDir,
		Checks: map[string]func(context.Context) error{
			"store":   func(context.Context) error { return nil },
			"tracker": nil,
		},
	})
	w := get(o.Handler(), "/health", "10.0.0.9:1") // anyone may ask
	var h Health
	if err := json.Unmarshal(w.Body.Bytes(), &h); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || h.Status != Healthy || !h.Checks["store"].OK || h.Checks["tracker"].Detail != NotApplicable || !h.Checks["state_dir"].OK {
		t.Errorf("healthy daemon: %d %s", w.Code, w.Body)
	}

	hung := make(chan struct{}) // closed at the end, so the bubble can exit
	defer close(hung)
	o = newTestOps(t, Options{
		StateDir: filepath.Join(stateDir, "missing"),
		Checks: map[string]func(context.Context) error{
			"store":    func(context.Context) error { return errors.New("database locked") },
			"upstream": func(context.Context) error { <-hung; return nil }, // ignores its context
			"peers":    func(context.Context) error { panic("boom") },
			"tracker":  func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
		},
	})
	start := time.Now()
	w = get(o.Handler(), "/health", "127.0.0.1:1")
	if took := time.Since(start); took > CheckTimeout {
		t.Errorf("checks ran %v; they must run concurrently, each bounded by the timeout %v", took, CheckTimeout)
	}
	h = Health{}
	json.Unmarshal(w.Body.Bytes(), &h)
	if w.Code != 503 || h.Status != Degraded {
		t.Errorf("degraded daemon answered %d %s", w.Code, w.Body)
	}
	for name, want := range map[string]string{
		"store": "database locked", "upstream": "no answer within", "peers": "panicked: boom",
		"tracker": "", "state_dir": "not writable",
	} {
		if c := h.Checks[name]; c.OK || !strings.Contains(c.Detail, want) {
			t.Errorf("check %s = %+v, want failed with %q", name, c, want)
		}
	}
}

func TestHealthIsCachedBriefly(t *testing.T) { synctest.Test(t, testHealthIsCachedBriefly) }

func testHealthIsCachedBriefly(t *testing.T) {
	calls := 0
	o := newTestOps(t, Options{Checks: map[string]func(context.Context) error{
		"store": func(context.Context) error { calls++; return nil },
	}})
	o.Health(context.Background())
	o.Health(context.Background())
	if calls != 1 {
		t.Errorf("check ran %d times within the TTL, want 1", calls)
	}
	time.Sleep(2 * healthTTL)
	o.Health(context.Background())
	if calls != 2 {
		t.Errorf("check ran %d times after the TTL, want 2", calls)
	}
}

func TestLocalOnly(t *testing.T) {
	o := newTestOps(t, Options{})
	h := o.Handler()
	for _, c := range []struct {
		target, remote, host string
		want                 int
	}{
		{"/api/status", "127.0.0.1:5", "127.0.0.1:12304", 200},
		{"/api/status", "[::1]:5", "[::1]:12304", 200},
		{"/api/peers", "127.0.0.1:5", "localhost:12304", 200},
		{"/dashboard", "127.0.0.1:5", "127.0.0.1:12304", 200},
		{"/api/status", "192.168.1.7:5", "192.168.1.2:12304", 403},
		{"/api/peers", "10.1.1.1:5", "127.0.0.1:12304", 403},
		{"/dashboard", "192.168.1.7:5", "192.168.1.2:12304", 403},
		{"/dashboard", "127.0.0.1:5", "rebind.attacker.example:12304", 403},
		{"/api/status", "127.0.0.1:5", "rebind.attacker.example", 403},
		{"/metrics", "192.168.1.7:5", "192.168.1.2:12304", 200},
		{"/health", "192.168.1.7:5", "192.168.1.2:12304", 200},
	} {
		r := httptest.NewRequest("GET", c.target, nil)
		r.RemoteAddr, r.Host = c.remote, c.host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("GET %s from %s (Host %s) = %d, want %d", c.target, c.remote, c.host, w.Code, c.want)
		}
	}
}

func TestStatusAndPeers(t *testing.T) { synctest.Test(t, testStatusAndPeers) }

func testStatusAndPeers(t *testing.T) {
	backoff := time.Date(2026, 3, 1, 12, 5, 0, 0, time.UTC)
	o := newTestOps(t, Options{
		Mode:      "p2p",
		PeerID:    func() string { return "12D3KooWtest" },
		Listen:    "127.0.0.1:12304",
		StoreRoot: "/",
		Tracker:   "https://tracker.example",
		Peers: func() []PeerInfo {
			return []PeerInfo{
				{ID: "12D3KooWzzz", Source: "p2p", Reputation: &Reputation{SuccessRate: 0.25, BackoffUntil: backoff, Lies: 2}},
				{ID: "192.168.1.20:12304", Source: "lan", Connected: true, Addrs: []string{"192.168.1.20:12304"}},
				{ID: "12D3KooWaaa", Source: "p2p", Connected: true, Relayed: true},
			}
		},
		Store: func(context.Context) StoreInfo {
			return StoreInfo{Paths: 100, Shared: 40, Filter: "upstream", FilterChecked: 50, FilterTotal: 100}
		},
		PathName: func(_ context.Context, h string) string { return "/nix/store/" + h + "-hello-2.12" },
	})
	time.Sleep(90 * time.Second)
	o.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashA, Status: 200})
	tr := o.StartTransfer("", hashB, "p2p", 1000)
	tr.Add("12D3KooWaaa", 400, 400)
	o.Activity("peer 12D3KooWaaa connected")

	w := get(o.Handler(), "/api/status", "127.0.0.1:1")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/api/status: %d %s", w.Code, w.Header())
	}
	var st Status
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.PeerID != "12D3KooWtest" || st.Mode != "p2p" || st.Version != "1.2.3-test" || st.UptimeS != 90 ||
		st.Listen != "127.0.0.1:12304" || st.Tracker != "https://tracker.example" {
		t.Errorf("status head: %+v", st)
	}
	if st.Peers != (PeerCounts{Known: 3, Connected: 2, LAN: 1, P2P: 2}) {
		t.Errorf("peer counts %+v", st.Peers)
	}
	if st.Store == nil || st.Store.Paths != 100 || st.Store.FilterChecked != 50 {
		t.Errorf("store %+v", st.Store)
	}
	if len(st.Transfers) != 1 || st.Transfers[0].Done != 400 || st.Transfers[0].StorePath != "/nix/store/"+hashB+"-hello-2.12" ||
		st.Transfers[0].Peer != "12D3KooWaaa" || st.Transfers[0].Direction != "down" {
		t.Errorf("transfers %+v", st.Transfers)
	}
	if len(st.TopRequested) != 1 || st.TopRequested[0].Name != "/nix/store/"+hashA+"-hello-2.12" || st.Counters.Requests != 0 || st.Counters.Hits["local"] != 1 {
		t.Errorf("top requested %+v, counters %+v", st.TopRequested, st.Counters)
	}
	if len(st.Activity) != 1 || st.Activity[0].Msg != "peer 12D3KooWaaa connected" {
		t.Errorf("activity %+v", st.Activity)
	}

	w = get(o.Handler(), "/api/peers", "127.0.0.1:1")
	var peers []PeerInfo
	if err := json.Unmarshal(w.Body.Bytes(), &peers); err != nil {
		t.Fatalf("/api/peers is not a JSON list: %v\n%s", err, w.Body)
	}
	var order []string
	for _, p := range peers {
		order = append(order, p.ID)
	}
	if fmt.Sprint(order) != "[192.168.1.20:12304 12D3KooWaaa 12D3KooWzzz]" {
		t.Errorf("peers in order %v; want connected first, then by source and ID", order)
	}
	if !strings.Contains(w.Body.String(), `"backoff_until": "2026-03-01T12:05:00Z"`) || !strings.Contains(w.Body.String(), `"addrs": []`) ||
		!strings.Contains(w.Body.String(), `"lies": 2`) {
		t.Errorf("/api/peers JSON:\n%s", w.Body)
	}
	text := scrape(t, o)
	for _, want := range []string{"peerix_peers_known 3", "peerix_peers_connected 2", `peerix_transfers_in_flight{direction="down"} 1`,
		`peerix_build_info{commit="",goversion=`, `mode="p2p",version="1.2.3-test"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestEmptyStatusHasListsNotNulls(t *testing.T) {
	o := newTestOps(t, Options{})
	body := get(o.Handler(), "/api/status", "127.0.0.1:1").Body.String()
	for _, key := range []string{"transfers", "recent_transfers", "top_requested", "top_served", "activity"} {
		if !strings.Contains(body, `"`+key+`": []`) {
			t.Errorf("empty status: %q is not []:\n%s", key, body)
		}
	}
	if b := get(o.Handler(), "/api/peers", "127.0.0.1:1").Body.String(); strings.TrimSpace(b) != "[]" {
		t.Errorf("no peers: /api/peers = %s, want []", b)
	}
}

func TestTransfers(t *testing.T) { synctest.Test(t, testTransfers) }

func testTransfers(t *testing.T) {
	var nilOps *Ops
	tr := nilOps.StartTransfer("x", "/nix/store/x", "lan", 10)
	tr.Add("", 5, 5)
	tr.SetPeer("p")
	tr.SetSize(3)
	tr.Done(nil) // all no-ops on nil
	nilOps.ObserveCache(cache.Event{})
	nilOps.Activity("x")
	nilOps.VerificationFailure("p", "x")
	nilOps.FilterDecision("shared")
	if nilOps.Instrument(http.NotFoundHandler()) == nil {
		t.Error("nil Ops: Instrument returned nil")
	}

	o := newTestOps(t, Options{})
	ok := o.StartTransfer("t1", "/nix/store/"+hashA+"-big", "lan", 250<<20)
	bad := o.StartTransfer("t2", "/nix/store/"+hashB+"-small", "p2p", -1)
	ok.Add("", 100<<20, 100<<20)
	time.Sleep(2 * time.Second)
	inFlight, _ := o.transferInfos()
	if len(inFlight) != 2 || inFlight[0].ID != "t1" || inFlight[0].RateBps != 50<<20 {
		t.Fatalf("in flight: %+v", inFlight)
	}
	ok.Add("", 150<<20, 150<<20)
	ok.Done(nil)
	ok.Done(errors.New("late")) // ignored
	bad.Done(errors.New("hash mismatch"))
	inFlight, recent := o.transferInfos()
	if len(inFlight) != 0 || len(recent) != 2 || recent[0].ID != "t2" || recent[0].Error != "hash mismatch" || recent[1].Error != "" {
		t.Errorf("after Done: in flight %+v, recent %+v", inFlight, recent)
	}
	c := o.stats.counters()
	if c.Transfers != 2 || c.TransfersFailed != 1 {
		t.Errorf("transfer counters %+v", c)
	}
	acts := o.recentActivity(10)
	if len(acts) != 2 || !strings.Contains(acts[0].Msg, "failed") || !strings.Contains(acts[1].Msg, "fetched /nix/store/"+hashA+"-big (250.0 MiB) from ? over lan in 2s, 125.0 MiB/s") {
		t.Errorf("activity %+v", acts)
	}

	for i := range 2 * recentTransfers {
		o.StartTransfer(fmt.Sprint(i), "", "lan", 1).Done(nil)
	}
	if _, recent = o.transferInfos(); len(recent) != recentTransfers {
		t.Errorf("%d recent transfers kept, want %d", len(recent), recentTransfers)
	}
}

func TestActivityRing(t *testing.T) {
	o := newTestOps(t, Options{})
	for i := range activitySize + 5 {
		o.Activity(fmt.Sprint(i))
	}
	acts := o.recentActivity(activitySize + 10)
	if len(acts) != activitySize || acts[0].Msg != fmt.Sprint(activitySize+4) || acts[len(acts)-1].Msg != "5" {
		t.Errorf("ring holds %d, newest %q, oldest %q", len(acts), acts[0].Msg, acts[len(acts)-1].Msg)
	}
}

func TestFilterAndVerification(t *testing.T) {
	o := newTestOps(t, Options{})
	o.FilterDecision("shared")
	o.FilterDecision("shared")
	o.FilterDecision("denied-pattern")
	for i := range maxFilterDecisions + 3 {
		o.FilterDecision(fmt.Sprint("d", i))
	}
	o.VerificationFailure("12D3KooWabcdefghijklmnop", "narinfo of "+hashA)
	text := scrape(t, o)
	for _, want := range []string{
		`peerix_filter_decisions_total{decision="shared"} 2`,
		`peerix_filter_decisions_total{decision="other"} 5`,
		`peerix_verification_failures_total 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if acts := o.recentActivity(1); len(acts) != 1 || acts[0].Msg != "verification failed: narinfo of "+hashA+" from …ijklmnop" {
		t.Errorf("activity %+v", acts)
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	o := newTestOps(t, Options{StateDir: dir})
	o.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashA, Status: 200})
	o.StartUpload(hashA, "http", "10.0.0.1", 77, false).Add("", 77, 77)
	o.FilterDecision("shared")
	if err := o.Save(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != StatsFile {
		t.Errorf("state dir holds %v, want just %s", entries, StatsFile)
	}

	o2 := newTestOps(t, Options{StateDir: dir})
	if err := o2.Load(); err != nil {
		t.Fatal(err)
	}
	o2.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashA, Status: 200})
	c := o2.stats.counters()
	if c.Hits["local"] != 2 || c.BytesSent != 77 || c.FilterDecisions["shared"] != 1 {
		t.Errorf("after Load: %+v", c)
	}
	if top := o2.stats.requested.top(1); len(top) != 1 || top[0].Count != 2 {
		t.Errorf("top requested after Load: %+v", top)
	}

	// A corrupt file is moved aside, not overwritten by the next Save.
	os.WriteFile(filepath.Join(dir, StatsFile), []byte("{garbage"), 0o600)
	o3 := newTestOps(t, Options{StateDir: dir})
	if err := o3.Load(); err == nil || !strings.Contains(err.Error(), ".bad") {
		t.Errorf("corrupt stats: err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, StatsFile+".bad")); string(b) != "{garbage" {
		t.Errorf("corrupt stats not kept aside: %q", b)
	}
	// Missing file and no state dir are fine.
	os.Remove(filepath.Join(dir, StatsFile))
	if err := o3.Load(); err != nil {
		t.Errorf("missing stats: %v", err)
	}
	if err := (&Ops{}).Save(); err != nil {
		t.Errorf("no state dir: %v", err)
	}
}

func TestRunSavesOnStop(t *testing.T) {
	dir := t.TempDir()
	o := newTestOps(t, Options{StateDir: dir})
	o.ObserveCache(cache.Event{Route: cache.RouteRemoteNarInfo, Hash: hashA, Status: 404})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	var saved savedStats
	b, err := os.ReadFile(filepath.Join(dir, StatsFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &saved); err != nil || saved.Counters.Misses["peers"] != 1 {
		t.Errorf("saved %s (%v)", b, err)
	}
}

func TestDashboard(t *testing.T) {
	o := newTestOps(t, Options{})
	w := get(o.Handler(), "/dashboard", "127.0.0.1:1")
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("/dashboard: %d %v", w.Code, w.Header())
	}
	body := w.Body.String()
	csp := w.Header().Get("Content-Security-Policy")
	// The CSP must allow exactly the inline script and style the page has.
	for _, tag := range []string{"script", "style"} {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no <%s> in the dashboard", tag)
		}
		sum := sha256.Sum256([]byte(m[1]))
		if want := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, tag+"-src "+want) {
			t.Errorf("CSP %q lacks %s-src %s", csp, tag, want)
		}
	}
	// The SVG namespace is a name, not an asset the page loads.
	code := strings.Replace(body, `"http://www.w3.org/2000/svg"`, "", 1)
	for _, bad := range []string{"http://", "https://", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(code, bad) {
			t.Errorf("dashboard contains %q: no outside assets, no HTML built from data", bad)
		}
	}
	for _, id := range []string{"node-peer-id", "node-mode", "node-version", "node-uptime", "count-requests",
		"peers", "transfers", "store-progress", "top-requested", "top-served", "activity",
		"node-key", "store-shared", "history-throughput", "history-lookups", "history-summary"} {
		if !strings.Contains(body, `id="`+id+`"`) {
			t.Errorf("dashboard lacks #%s", id)
		}
	}
	for _, api := range []string{`"/api/status"`, `"/api/peers"`} {
		if !strings.Contains(body, api) {
			t.Errorf("dashboard does not poll %s", api)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	o := newTestOps(t, Options{StateDir: t.TempDir(), Peers: func() []PeerInfo { return nil }})
	h := o.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			w.Header().Set("Content-Length", fmt.Sprint(2<<20))
			w.Write(make([]byte, 2<<20))
			return
		}
		o.Handler().ServeHTTP(w, r)
	}))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				switch j % 5 {
				case 0:
					get(h, "/nar/"+hashA+"-"+narHashA+".nar", "10.0.0.1:1")
				case 1:
					o.ObserveCache(cache.Event{Route: cache.RouteLocalNarInfo, Hash: hashB, Status: 200})
				case 2:
					get(h, "/api/status", "127.0.0.1:1")
				case 3:
					tr := o.StartTransfer("", hashC, "p2p", 10)
					tr.Add("", 10, 10)
					tr.Done(nil)
				case 4:
					if i == 0 {
						o.Save()
					}
					get(h, "/metrics", "127.0.0.1:1")
				}
			}
		})
	}
	wg.Wait()
	if c := o.stats.counters(); c.Hits["local"] != 8*10 {
		t.Errorf("hits %d, want %d", c.Hits["local"], 8*10)
	}
}

// scrape returns /metrics as text.
func scrape(t *testing.T, o *Ops) string {
	t.Helper()
	w := get(o.Handler(), "/metrics", "127.0.0.1:1")
	if w.Code != 200 {
		t.Fatalf("/metrics: %d", w.Code)
	}
	var b bytes.Buffer
	b.Write(w.Body.Bytes())
	return b.String()
}

// TestUploadProgressMoves: a NAR body sent with sendfile (ReadFrom of an
// *io.LimitedReader over a file, as the NAR writer hands it out) shows
// progress while it goes, not only once it is all sent.
func TestUploadProgressMoves(t *testing.T) {
	const size = 64 << 20
	f, err := os.CreateTemp(t.TempDir(), "nar")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	o := newTestOps(t, Options{})
	srv := httptest.NewServer(o.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		w.WriteHeader(200)
		io.Copy(w, &io.LimitedReader{R: f, N: size})
	})))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/nar/" + hashA + "-" + narHashA + ".nar")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	// The client stops reading: the socket buffers fill, and the upload
	// stands somewhere in the middle.
	var done int64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		inFlight, _ := o.transferInfos()
		if len(inFlight) == 1 && inFlight[0].Done >= 1<<20 {
			done = inFlight[0].Done
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if done < 1<<20 || done >= size {
		t.Fatalf("upload in flight shows %d of %d bytes; want progress before the end", done, size)
	}
	if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != size-1<<20 {
		t.Fatalf("rest of the body: %d bytes, %v", n, err)
	}
	waitFor := time.Now().Add(5 * time.Second)
	for {
		_, recent := o.transferInfos()
		if len(recent) == 1 {
			if recent[0].Done != size || recent[0].Error != "" {
				t.Errorf("finished upload %+v", recent[0])
			}
			break
		}
		if time.Now().After(waitFor) {
			t.Fatal("upload not finished")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := o.stats.counters(); c.BytesSent != size {
		t.Errorf("sent %d bytes, want %d", c.BytesSent, size)
	}
}
