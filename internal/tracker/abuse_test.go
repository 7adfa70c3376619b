package tracker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/peerix/peerix/internal/tracker/trackerapi"
)

// newLimitedServer is newTestServer with limits l.
func newLimitedServer(t testing.TB, b backend, l Limits) (*Server, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: t0}
	return NewServer(b.open(t), ServerOptions{TTL: time.Minute, Now: clock.Now, Log: quietLog(), Limits: l}), clock
}

func decodeError(t testing.TB, body []byte) api.ErrorAnswer {
	t.Helper()
	var e api.ErrorAnswer
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not an error answer: %s", body)
	}
	return e
}

// TestSignatureBinding: a signature covers method, route and tracker, so a
// body signed for one route or tracker is refused on another; the retired
// body-only signatures get a code of their own.
func TestSignatureBinding(t *testing.T) {
	s, _, clock := newTestServer(t, sqliteBackend, time.Minute)
	me := newSigner(t)
	ts := ms(clock.Now())
	me.announce(t, s, ts)
	del := mustJSON(t, map[string]any{"peer_id": me.id.String(), "ts": ts + 1})
	delSig := me.signV2(t, "DELETE", "/v1/peers/"+me.id.String(), s.id, del)
	tests := []struct {
		name, method, path string
		body               []byte
		sig                string
		code               string
	}{
		{"a DELETE's signature on announce", "POST", "/v1/announce", del, delSig, CodeBadSig},
		{"a DELETE's signature on packages", "POST", "/v1/packages", del, delSig, CodeBadSig},
		{"signed for another tracker", "DELETE", "/v1/peers/" + me.id.String(), del, me.signV2(t, "DELETE", "/v1/peers/"+me.id.String(), "another-tracker", del), CodeBadSig},
		{"signed for another method", "DELETE", "/v1/peers/" + me.id.String(), del, me.signV2(t, "POST", "/v1/peers/"+me.id.String(), s.id, del), CodeBadSig},
		{"v1: over the body alone", "DELETE", "/v1/peers/" + me.id.String(), del, me.signV1(t, del), CodeOldSignature},
	}
	for _, tt := range tests {
		w := serve(s, request(tt.method, tt.path, tt.body, tt.sig))
		e := decodeError(t, w.Body.Bytes())
		if w.Code != 401 || e.Code != tt.code || e.TrackerID != s.id {
			t.Errorf("%s: %d %s; want 401 %s with tracker_id %s", tt.name, w.Code, w.Body, tt.code, s.id)
		}
	}
	if ids := peerIDs(t, s); !slices.Equal(ids, []string{me.id.String()}) {
		t.Fatalf("after the refused writes: peers %v", ids)
	}
	if w := serve(s, request("DELETE", "/v1/peers/"+me.id.String(), del, delSig)); w.Code != 200 {
		t.Fatalf("the DELETE as signed: %d %s", w.Code, w.Body)
	}
	var info api.InfoAnswer
	json.Unmarshal(serve(s, request("GET", "/v1/info", nil, "")).Body.Bytes(), &info)
	if info.TrackerID != s.id || len(s.id) != 32 {
		t.Fatalf("/v1/info tracker_id %q, server's %q", info.TrackerID, s.id)
	}
}

// TestAnnounceAddressRule: addresses a peer must not be told to dial are
// dropped before they are stored; loopback ones only from loopback.
func TestAnnounceAddressRule(t *testing.T) { eachBackend(t, testAnnounceAddressRule) }

func testAnnounceAddressRule(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Minute)
	probes := []string{
		"/ip4/127.0.0.1/tcp/2222", "/ip6/::1/tcp/2222", "/dns/localhost/tcp/2222",
		"/ip4/0.0.0.0/tcp/4001", "/ip4/169.254.9.9/tcp/80", "/ip6/fe80::1/udp/4001/quic-v1",
		"/ip4/224.0.0.251/udp/5353/quic-v1", "/unix/run/docker.sock", "/ip4/203.0.113.7/tcp/4001/ws",
	}
	good := []string{"/ip4/203.0.113.7/tcp/4001", "/ip4/10.0.0.7/udp/4001/quic-v1"}
	for _, from := range []string{"198.51.100.7:4000", "127.0.0.1:4000"} {
		me := newSigner(t)
		ans := me.announceFrom(t, s, ms(clock.Now()), from, append(slices.Clone(probes), good...)...)
		want := good
		if strings.HasPrefix(from, "127.") {
			want = append([]string{"/ip4/127.0.0.1/tcp/2222", "/ip6/::1/tcp/2222", "/dns/localhost/tcp/2222"}, good...)
		}
		if !slices.Equal(ans.Addrs, want) {
			t.Errorf("announced from %s: stored %v, want %v", from, ans.Addrs, want)
		}
		ps, _ := allPeers(context.Background(), s.reg, time.Time{})
		for _, p := range ps {
			if p.PeerID == me.id.String() && !slices.Equal(p.Addrs, want) {
				t.Errorf("announced from %s: /v1/peers has %v, want %v", from, p.Addrs, want)
			}
		}
	}
}

// TestQuotas: peers per network, hashes per peer and per network, hashes
// per request.
func TestQuotas(t *testing.T) { eachBackend(t, testQuotas) }

func testQuotas(t *testing.T, be backend) {
	l := NoLimits()
	l.PeersPerNet, l.HashesPerPeer, l.HashesPerNet = 3, 100, 250
	s, clock := newLimitedServer(t, be, l)
	now := func() int64 { clock.Advance(time.Millisecond); return ms(clock.Now()) }
	post := func(p signer, path, from string, m map[string]any) (int, api.ErrorAnswer) {
		m["peer_id"], m["ts"] = p.id.String(), now()
		r := p.request(t, "POST", path, mustJSON(t, m))
		r.RemoteAddr = from
		w := serve(s, r)
		if w.Code == 200 {
			return 200, api.ErrorAnswer{}
		}
		return w.Code, decodeError(t, w.Body.Bytes())
	}
	var ps []signer
	for range 4 {
		ps = append(ps, newSigner(t))
	}
	for i, p := range ps[:3] {
		if code, e := post(p, "/v1/announce", fmt.Sprintf("198.51.100.%d:1", i+1), map[string]any{"addrs": []string{}}); code != 200 {
			t.Fatalf("peer %d: %d %+v", i, code, e)
		}
	}
	if code, e := post(ps[3], "/v1/announce", "198.51.100.99:1", map[string]any{"addrs": []string{}}); code != 403 || e.Code != CodeQuota || e.Limit != 3 {
		t.Fatalf("a fourth peer from the /24: %d %+v; want 403 quota, limit 3", code, e)
	}
	if code, _ := post(ps[3], "/v1/announce", "198.51.101.1:1", map[string]any{"addrs": []string{}}); code != 200 {
		t.Fatalf("the fourth peer from another /24: %d", code)
	}
	if code, _ := post(ps[0], "/v1/announce", "198.51.100.1:1", map[string]any{"addrs": []string{}}); code != 200 {
		t.Fatalf("a heartbeat of a peer of a full network: %d", code)
	}
	if code, e := post(ps[0], "/v1/packages", "198.51.100.1:1", map[string]any{"full": true, "add": hashes(0, 101)}); code != 403 || e.Code != CodeQuota || e.Limit != 100 {
		t.Fatalf("101 hashes: %d %+v; want 403 quota, limit 100", code, e)
	}
	if code, _ := post(ps[0], "/v1/packages", "198.51.100.1:1", map[string]any{"full": true, "add": hashes(0, 100)}); code != 200 {
		t.Fatalf("100 hashes: %d", code)
	}
	if code, e := post(ps[0], "/v1/packages", "198.51.100.1:1", map[string]any{"full": false, "add": hashes(1000, 1)}); code != 403 || e.Code != CodeQuota {
		t.Fatalf("a delta past the quota: %d %+v", code, e)
	}
	if code, _ := post(ps[0], "/v1/packages", "198.51.100.1:1", map[string]any{"full": false, "add": hashes(1000, 1), "remove": hashes(0, 1)}); code != 200 {
		t.Fatalf("a delta within the quota: %d", code)
	}
	if code, _ := post(ps[1], "/v1/packages", "198.51.100.2:1", map[string]any{"full": true, "add": hashes(2000, 100)}); code != 200 {
		t.Fatalf("second peer's 100: %d", code)
	}
	if code, e := post(ps[2], "/v1/packages", "198.51.100.3:1", map[string]any{"full": true, "add": hashes(3000, 60)}); code != 403 || e.Code != CodeQuota || e.Limit != 250 {
		t.Fatalf("the network's 260th hash: %d %+v; want 403 quota, limit 250", code, e)
	}
	if code, _ := post(ps[2], "/v1/packages", "198.51.100.3:1", map[string]any{"full": true, "add": hashes(3000, 50)}); code != 200 {
		t.Fatalf("the network's 250th hash: %d", code)
	}
	if n := findIDs(t, s, hashN(3049)); len(n) != 1 {
		t.Fatalf("holders of an accepted hash: %v", n)
	}
	if n := findIDs(t, s, hashN(3059)); len(n) != 0 {
		t.Fatalf("holders of a refused hash: %v", n)
	}
	// Loopback is exempt from the network quotas.
	for i := range 5 {
		if code, e := post(newSigner(t), "/v1/announce", "127.0.0.1:1", map[string]any{"addrs": []string{}}); code != 200 {
			t.Fatalf("loopback peer %d: %d %+v", i, code, e)
		}
	}
	// Hashes per request.
	big := hashes(10000, MaxHashesPerRequest+1)
	if code, e := post(ps[3], "/v1/packages", "198.51.101.1:1", map[string]any{"full": true, "add": big}); code != 413 || e.Code != CodeTooLarge {
		t.Fatalf("%d hashes in one request: %d %+v; want 413", len(big), code, e)
	}
}

// TestRateLimits: too many requests from one network, or by one peer, get
// 429 with Retry-After; loopback is exempt from the per-network budget.
func TestRateLimits(t *testing.T) {
	l := NoLimits()
	l.NetReadRate, l.NetReadBurst = 1, 5
	l.NetWriteRate, l.NetWriteBurst = 1, 4
	l.PeerWriteRate, l.PeerWriteBurst = 1, 2
	s, clock := newLimitedServer(t, sqliteBackend, l)
	get := func(from string) *http.Response {
		r := request("GET", "/v1/find/"+hashN(1), nil, "")
		r.RemoteAddr = from
		return serve(s, r).Result()
	}
	for i := range 5 {
		if r := get("198.51.100.7:1"); r.StatusCode != 200 {
			t.Fatalf("read %d: %d", i, r.StatusCode)
		}
	}
	r := get("198.51.100.8:1")
	if r.StatusCode != 429 || r.Header.Get("Retry-After") != "1" {
		t.Fatalf("6th read from the /24: %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if r := get("198.51.101.8:1"); r.StatusCode != 200 {
		t.Fatalf("read from another /24: %d", r.StatusCode)
	}
	for range 10 {
		if r := get("127.0.0.1:1"); r.StatusCode != 200 {
			t.Fatalf("loopback read: %d", r.StatusCode)
		}
	}
	clock.Advance(time.Second)
	if r := get("198.51.100.9:1"); r.StatusCode != 200 {
		t.Fatalf("a read a second later: %d", r.StatusCode)
	}

	// Per peer: two writes, then 429, though its network has budget.
	me := newSigner(t)
	codes := []int{}
	for range 3 {
		clock.Advance(time.Millisecond)
		body := mustJSON(t, map[string]any{"peer_id": me.id.String(), "ts": ms(clock.Now()), "addrs": []string{}})
		r := me.request(t, "POST", "/v1/announce", body)
		r.RemoteAddr = "203.0.113.1:1"
		w := serve(s, r)
		codes = append(codes, w.Code)
		if w.Code == 429 && decodeError(t, w.Body.Bytes()).RetryAfterMS <= 0 {
			t.Errorf("429 without retry_after_ms: %s", w.Body)
		}
	}
	if !slices.Equal(codes, []int{200, 200, 429}) {
		t.Fatalf("three writes by one peer: %v, want 200 200 429", codes)
	}
	// Per network: forged writes from many identities use it up before
	// their signatures are even checked.
	codes = codes[:0]
	for range 5 {
		r := request("POST", "/v1/announce", []byte(`{}`), newSigner(t).signV2(t, "POST", "/v1/announce", s.id, []byte(`{}`)))
		r.RemoteAddr = "203.0.114.1:1"
		codes = append(codes, serve(s, r).Code)
	}
	if !slices.Equal(codes, []int{400, 400, 400, 400, 429}) {
		t.Fatalf("five writes from one network: %v, want four 400 then 429", codes)
	}
}

// TestBodyBudget: while the budget for bodies is taken, a write waits
// and then gets 503 with Retry-After.
func TestBodyBudget(t *testing.T) {
	l := NoLimits()
	l.BodyBudget, l.BodyWait = 1<<20, 50*time.Millisecond
	s, _ := newLimitedServer(t, sqliteBackend, l)
	release, ok := s.bodies.acquire(context.Background(), 1<<20)
	if !ok {
		t.Fatal("budget not available")
	}
	me := newSigner(t)
	body := mustJSON(t, map[string]any{"peer_id": me.id.String(), "ts": ms(t0), "addrs": []string{}})
	w := serve(s, me.request(t, "POST", "/v1/announce", body))
	if w.Code != 503 || w.Header().Get("Retry-After") == "" || decodeError(t, w.Body.Bytes()).Code != CodeUnavailable {
		t.Fatalf("write with the budget taken: %d %s", w.Code, w.Body)
	}
	release()
	if w := serve(s, me.request(t, "POST", "/v1/announce", body)); w.Code != 200 {
		t.Fatalf("write with the budget back: %d %s", w.Code, w.Body)
	}
}

// TestPeersPages: /v1/peers is bounded and paged by peer ID.
func TestPeersPages(t *testing.T) { eachBackend(t, testPeersPages) }

func testPeersPages(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Minute)
	var want []string
	for range 7 {
		p := newSigner(t)
		p.announce(t, s, ms(clock.Now()))
		want = append(want, p.id.String())
	}
	slices.Sort(want)
	var got []string
	after, pages := "", 0
	for {
		path := "/v1/peers?limit=3"
		if after != "" {
			path += "&after=" + after
		}
		w := serve(s, request("GET", path, nil, ""))
		var ans api.PeersAnswer
		if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &ans) != nil {
			t.Fatalf("GET %s: %d %s", path, w.Code, w.Body)
		}
		pages++
		for _, p := range ans.Peers {
			got = append(got, p.PeerID)
		}
		if ans.Next == "" {
			break
		}
		if len(ans.Peers) != 3 || ans.Next != ans.Peers[2].PeerID {
			t.Fatalf("page %d: %d peers, next %q", pages, len(ans.Peers), ans.Next)
		}
		after = ans.Next
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Fatalf("%d pages: %v, want %v", pages, got, want)
	}
	if w := serve(s, request("GET", "/v1/peers", nil, "")); !strings.Contains(w.Body.String(), want[6]) || strings.Contains(w.Body.String(), `"next"`) {
		t.Fatalf("one default page: %s", w.Body)
	}
	for _, q := range []string{"limit=0", "limit=x", "limit=-1", "after=" + strings.Repeat("x", 200)} {
		if w := serve(s, request("GET", "/v1/peers?"+q, nil, "")); w.Code != 400 {
			t.Errorf("GET /v1/peers?%s: %d", q, w.Code)
		}
	}
	c := NewClient(httptestServer(t, s), nil)
	all, err := c.Peers(context.Background())
	if err != nil || len(all) != 7 {
		t.Fatalf("client Peers: %d %v", len(all), err)
	}
}
