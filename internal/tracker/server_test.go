package tracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestWriteRoutes runs every write route through good and bad requests.
func TestWriteRoutes(t *testing.T) { eachBackend(t, testWriteRoutes) }

func testWriteRoutes(t *testing.T, be backend) {
	type env struct {
		t     *testing.T
		s     *Server
		me    signer
		other signer
		now   int64
	}
	body := func(e *env, fields map[string]any) []byte {
		m := map[string]any{"peer_id": e.me.id.String(), "ts": e.now}
		for k, v := range fields {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return mustJSON(e.t, m)
	}
	announced := func(e *env) { e.me.announce(e.t, e.s, e.now-1000) }
	routes := []struct {
		name, method, path string
		fields             map[string]any // a valid body's fields besides peer_id, ts
		setup              func(e *env)
	}{
		{"announce", "POST", "/v1/announce", map[string]any{"addrs": []string{"/ip4/198.51.100.7/tcp/12306", "/ip6/2001:db8::1/udp/12306/quic-v1"}}, nil},
		{"packages", "POST", "/v1/packages", map[string]any{"full": true, "add": []string{hashN(1), hashN(2)}}, announced},
		{"delete", "DELETE", "/v1/peers/{me}", map[string]any{}, announced},
	}
	cases := []struct {
		name   string
		routes string // which routes the case applies to ("" = all)
		build  func(e *env, method, path string, good []byte) *http.Request
		status int
		code   string
	}{
		{"good", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, good)
		}, 200, ""},
		{"unsigned", "", func(e *env, m, p string, good []byte) *http.Request {
			return request(m, p, good, "")
		}, 401, CodeBadSig},
		{"signature not base64", "", func(e *env, m, p string, good []byte) *http.Request {
			return request(m, p, good, "!!!")
		}, 401, CodeBadSig},
		{"signed by another key", "", func(e *env, m, p string, good []byte) *http.Request {
			return request(m, p, good, e.other.sign(e.t, good))
		}, 401, CodeBadSig},
		{"body tampered after signing", "", func(e *env, m, p string, good []byte) *http.Request {
			sig := e.me.sign(e.t, good)
			tampered := bytes.Replace(good, []byte(`"ts":`), []byte(`"ts": `), 1)
			return request(m, p, tampered, sig)
		}, 401, CodeBadSig},
		{"speaking for another peer", "", func(e *env, m, p string, good []byte) *http.Request {
			b := bytes.Replace(good, []byte(e.me.id.String()), []byte(e.other.id.String()), 1)
			return request(m, p, b, e.me.sign(e.t, b))
		}, 401, CodeBadSig},
		{"replayed ts", "", func(e *env, m, p string, good []byte) *http.Request {
			if w := serve(e.s, e.me.request(e.t, m, p, good)); w.Code != 200 {
				e.t.Fatalf("first: %d %s", w.Code, w.Body)
			}
			return e.me.request(e.t, m, p, good)
		}, 409, CodeReplay},
		{"older ts than accepted", "", func(e *env, m, p string, good []byte) *http.Request {
			e.me.announce(e.t, e.s, e.now+5000)
			return e.me.request(e.t, m, p, good)
		}, 409, CodeReplay},
		{"stale ts", "", func(e *env, m, p string, good []byte) *http.Request {
			e.now -= (3 * time.Minute).Milliseconds()
			return nil
		}, 400, CodeClockSkew},
		{"future ts", "", func(e *env, m, p string, good []byte) *http.Request {
			e.now += (3 * time.Minute).Milliseconds()
			return nil
		}, 400, CodeClockSkew},
		{"huge ts", "", func(e *env, m, p string, good []byte) *http.Request {
			e.now = 1<<63 - 1
			return nil
		}, 400, CodeClockSkew},
		{"ts missing", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"ts": nil}))
		}, 400, CodeBadRequest},
		{"peer_id missing", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"peer_id": nil}))
		}, 400, CodeBadRequest},
		{"peer_id invalid", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"peer_id": "not-a-peer"}))
		}, 400, CodeBadRequest},
		{"unknown field", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"extra": 1}))
		}, 400, CodeBadRequest},
		{"malformed JSON", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, good[:len(good)-1])
		}, 400, CodeBadRequest},
		{"trailing data", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, append(slices.Clone(good), []byte(` {}`)...))
		}, 400, CodeBadRequest},
		{"not an object", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, []byte(`[1,2]`))
		}, 400, CodeBadRequest},
		{"wrong type", "", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"ts": "1"}))
		}, 400, CodeBadRequest},
		{"oversize body", "", func(e *env, m, p string, good []byte) *http.Request {
			big := append(slices.Clone(good[:len(good)-1]), []byte(`,"pad":"`+strings.Repeat("x", MaxBodySize)+`"}`)...)
			return e.me.request(e.t, m, p, big)
		}, 413, CodeTooLarge},
		{"oversize body, chunked", "", func(e *env, m, p string, good []byte) *http.Request {
			big := append(slices.Clone(good[:len(good)-1]), []byte(`,"pad":"`+strings.Repeat("x", MaxBodySize)+`"}`)...)
			r := e.me.request(e.t, m, p, big)
			r.ContentLength = -1
			return r
		}, 413, CodeTooLarge},
		{"bad address", "announce", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"addrs": []string{"/ip4/1.2.3.4/tcp/x"}}))
		}, 400, CodeBadRequest},
		{"address not a multiaddr", "announce", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"addrs": []string{"1.2.3.4:12306"}}))
		}, 400, CodeBadRequest},
		{"address too long", "announce", func(e *env, m, p string, good []byte) *http.Request {
			long := "/dns/" + strings.Repeat("a", 250) + "/tcp/1"
			return e.me.request(e.t, m, p, body(e, map[string]any{"addrs": []string{long}}))
		}, 400, CodeBadRequest},
		{"address of another peer", "announce", func(e *env, m, p string, good []byte) *http.Request {
			a := "/ip4/1.2.3.4/tcp/1/p2p/" + e.other.id.String()
			return e.me.request(e.t, m, p, body(e, map[string]any{"addrs": []string{a}}))
		}, 400, CodeBadRequest},
		{"too many addrs", "announce", func(e *env, m, p string, good []byte) *http.Request {
			addrs := make([]string, MaxAddrs+1)
			for i := range addrs {
				addrs[i] = "/ip4/198.51.100.7/tcp/" + string(rune('1'+i%9))
			}
			return e.me.request(e.t, m, p, body(e, map[string]any{"addrs": addrs}))
		}, 400, CodeBadRequest},
		{"bad hash", "packages", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"full": true, "add": []string{hashN(1), "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"}}))
		}, 400, CodeBadRequest},
		{"short hash", "packages", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"full": false, "remove": []string{"0123"}}))
		}, 400, CodeBadRequest},
		{"full set with remove", "packages", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, p, body(e, map[string]any{"full": true, "remove": []string{hashN(1)}}))
		}, 400, CodeBadRequest},
		{"before announcing", "packages", func(e *env, m, p string, good []byte) *http.Request {
			b := bytes.Replace(good, []byte(e.me.id.String()), []byte(e.other.id.String()), 1)
			return e.other.request(e.t, m, p, b)
		}, 404, CodeUnknownPeer},
		{"another peer's id", "delete", func(e *env, m, _ string, good []byte) *http.Request {
			return e.me.request(e.t, m, "/v1/peers/"+e.other.id.String(), good)
		}, 403, CodeForbidden},
		{"garbage id", "delete", func(e *env, m, p string, good []byte) *http.Request {
			return e.me.request(e.t, m, "/v1/peers/xyz", good)
		}, 403, CodeForbidden},
	}
	for _, rt := range routes {
		for _, c := range cases {
			if c.routes != "" && c.routes != rt.name {
				continue
			}
			t.Run(rt.name+"/"+c.name, func(t *testing.T) {
				s, _, _ := newTestServer(t, be, time.Minute)
				e := &env{t: t, s: s, me: newSigner(t), other: newSigner(t), now: ms(t0)}
				if rt.setup != nil {
					rt.setup(e)
				}
				path := strings.ReplaceAll(rt.path, "{me}", e.me.id.String())
				good := body(e, rt.fields)
				r := c.build(e, rt.method, path, good)
				if r == nil { // the case changed e; rebuild a well-signed body
					r = e.me.request(t, rt.method, path, body(e, rt.fields))
				}
				w := serve(s, r)
				if w.Code != c.status {
					t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
				}
				if ct := w.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				var ans map[string]any
				if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
					t.Fatalf("answer is not JSON: %s", w.Body)
				}
				if c.status == 200 {
					if ans["ok"] != true {
						t.Errorf("answer %s", w.Body)
					}
					return
				}
				if ans["ok"] != false || ans["code"] != c.code || ans["error"] == "" {
					t.Errorf("answer %s, want code %q", w.Body, c.code)
				}
				if c.code == CodeReplay && ans["last_ts"] == nil {
					t.Errorf("replay answer without last_ts: %s", w.Body)
				}
				if c.code == CodeClockSkew && ans["now_ms"] != float64(ms(t0)) {
					t.Errorf("clock_skew answer without now_ms: %s", w.Body)
				}
			})
		}
	}
}

func TestAnnounceAnswer(t *testing.T) { eachBackend(t, testAnnounceAnswer) }

func testAnnounceAnswer(t *testing.T, be backend) {
	s, _, _ := newTestServer(t, be, 2*time.Minute)
	me := newSigner(t)
	ans := me.announce(t, s, ms(t0), "/ip4/198.51.100.7/tcp/12306/p2p/"+me.id.String())
	if !ans.OK || ans.ObservedAddr != "198.51.100.7:40000" || ans.TTLSeconds != 120 || !ans.Registered {
		t.Fatalf("first announce: %+v", ans)
	}
	ans = me.announce(t, s, ms(t0)+1)
	if ans.Registered {
		t.Fatalf("heartbeat says registered: %+v", ans)
	}
	// The trailing /p2p/<own id> is stripped.
	w := serve(s, request("GET", "/v1/peers", nil, ""))
	if !strings.Contains(w.Body.String(), `"addrs":["/ip4/198.51.100.7/udp/12306/quic-v1"]`) {
		t.Fatalf("peers: %s", w.Body)
	}
}

// TestReadShapes checks /v1/find, /v1/peers and /v1/info exactly as the
// spec shows them.
func TestReadShapes(t *testing.T) { eachBackend(t, testReadShapes) }

func testReadShapes(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Minute)
	empty := serve(s, request("GET", "/v1/find/"+hashN(1), nil, ""))
	if empty.Code != 200 || strings.TrimSpace(empty.Body.String()) != `{"peers":[]}` {
		t.Fatalf("empty find: %d %s", empty.Code, empty.Body)
	}
	if w := serve(s, request("GET", "/v1/peers", nil, "")); strings.TrimSpace(w.Body.String()) != `{"peers":[]}` {
		t.Fatalf("empty peers: %s", w.Body)
	}

	a, b := newSigner(t), newSigner(t)
	a.announce(t, s, ms(t0), "/ip4/198.51.100.7/tcp/12306")
	b.announce(t, s, ms(t0), []string{}...)
	a.packages(t, s, ms(t0)+1, true, []string{hashN(1)}, nil)
	clock.Advance(time.Second)

	for _, path := range []string{"/v1/find/" + hashN(1), "/v1/peers"} {
		w := serve(s, request("GET", path, nil, ""))
		if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %v", path, w.Code, w.Header())
		}
		var ans map[string][]map[string]any
		dec := json.NewDecoder(w.Body)
		if err := dec.Decode(&ans); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(ans) != 1 || ans["peers"] == nil {
			t.Fatalf("%s: want exactly {\"peers\": [...]}, got %v", path, ans)
		}
		for _, p := range ans["peers"] {
			id, _ := p["peer_id"].(string)
			addrs, ok := p["addrs"].([]any)
			seen, _ := p["last_seen"].(string)
			if id == "" || !ok || seen == "" {
				t.Fatalf("%s: entry %v", path, p)
			}
			if ts, err := time.Parse(time.RFC3339Nano, seen); err != nil || !ts.Equal(t0) {
				t.Fatalf("%s: last_seen %q", path, seen)
			}
			if id == a.id.String() && (len(addrs) != 1 || addrs[0] != "/ip4/198.51.100.7/tcp/12306") {
				t.Fatalf("%s: addrs %v", path, addrs)
			}
		}
		if want := map[string]int{"/v1/peers": 2}[path]; want != 0 && len(ans["peers"]) != want {
			t.Fatalf("%s: %d peers", path, len(ans["peers"]))
		}
	}
	if got := findIDs(t, s, hashN(1)); !slices.Equal(got, []string{a.id.String()}) {
		t.Fatalf("find: %v", got)
	}

	for _, bad := range []string{"/v1/find/" + strings.Repeat("e", 32), "/v1/find/abc", "/v1/find/" + hashN(1) + "x", "/v1/find/" + hashN(1) + "?limit=0"} {
		if w := serve(s, request("GET", bad, nil, "")); w.Code != 400 {
			t.Errorf("%s: %d", bad, w.Code)
		}
	}
	if w := serve(s, request("GET", "/v1/nope", nil, "")); w.Code != 404 {
		t.Errorf("unknown route: %d", w.Code)
	}
	if w := serve(s, request("PUT", "/v1/announce", nil, "")); w.Code != 405 {
		t.Errorf("wrong method: %d", w.Code)
	}

	w := serve(s, request("GET", "/v1/info", nil, ""))
	var info map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &info); err != nil || w.Code != 200 {
		t.Fatalf("info: %d %s", w.Code, w.Body)
	}
	relay, _ := info["relay"].(map[string]any)
	if relay["peer_id"] != "12D3KooWRelay" || info["observed_addr"] != "198.51.100.7:40000" || info["ttl_s"] != 60.0 {
		t.Fatalf("info: %s", w.Body)
	}
}

func TestFindLimit(t *testing.T) { eachBackend(t, testFindLimit) }

func testFindLimit(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Minute)
	var ids []string
	for i := range 5 {
		p := newSigner(t)
		p.announce(t, s, ms(clock.Now()))
		p.packages(t, s, ms(clock.Now())+1, true, []string{hashN(7)}, nil)
		ids = append(ids, p.id.String())
		clock.Advance(time.Duration(i+1) * time.Millisecond)
	}
	got := findIDs(t, s, hashN(7)+"?limit=2")
	// One source network: the longest registered first (in any order).
	slices.Sort(got)
	want := []string{ids[0], ids[1]}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if all := findIDs(t, s, hashN(7)); len(all) != 5 {
		t.Fatalf("find without limit: %d holders, want 5", len(all))
	}
}

// TestFindSybils: 150 identities from two networks, registered after the
// honest holders and heartbeating more often, do not push the honest
// holders (each from its own network) out of /v1/find.
func TestFindSybils(t *testing.T) { eachBackend(t, testFindSybils) }

func testFindSybils(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Minute)
	h := hashN(9)
	var honest []string
	for i := range 3 {
		p := newSigner(t)
		from := fmt.Sprintf("203.0.%d.5:4000", 113+i)
		p.announceFrom(t, s, ms(clock.Now()), from)
		p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
		honest = append(honest, p.id.String())
	}
	clock.Advance(time.Second)
	junk := []string{"/dns/" + strings.Repeat("x", 200) + ".example/tcp/1"}
	var sybils []signer
	for i := range 150 {
		p := newSigner(t)
		from := fmt.Sprintf("198.51.%d.%d:5000", 100+i%2, 1+i%200)
		p.announceFrom(t, s, ms(clock.Now()), from, junk...)
		p.packagesFrom(t, s, ms(clock.Now())+1, from, []string{h})
		sybils = append(sybils, p)
	}
	for round := range 20 {
		clock.Advance(2 * time.Second)
		for _, p := range sybils[round%10*15 : round%10*15+15] { // heartbeats, newest last_seen
			p.announceFrom(t, s, ms(clock.Now()), "198.51.100.1:5000", junk...)
		}
		got := findIDs(t, s, h)
		if len(got) != DefaultFindLimit {
			t.Fatalf("round %d: %d holders, want %d", round, len(got), DefaultFindLimit)
		}
		for _, id := range honest {
			if !slices.Contains(got, id) {
				t.Fatalf("round %d: honest holder %s not among the %d found", round, id, len(got))
			}
		}
	}
}

// TestFullDeltaFind: a full set, then deltas, then find.
func TestFullDeltaFind(t *testing.T) { eachBackend(t, testFullDeltaFind) }

func testFullDeltaFind(t *testing.T, be backend) {
	s, _, _ := newTestServer(t, be, time.Minute)
	me := newSigner(t)
	ts := ms(t0)
	next := func() int64 { ts++; return ts }
	me.announce(t, s, next())
	id := []string{me.id.String()}
	none := []string{}

	if c := me.packages(t, s, next(), true, []string{hashN(1), hashN(2), hashN(3), hashN(3)}, nil).Count; c != 3 {
		t.Fatalf("count after full: %d", c)
	}
	if c := me.packages(t, s, next(), false, []string{hashN(4), hashN(1)}, []string{hashN(2), hashN(9)}).Count; c != 3 {
		t.Fatalf("count after delta: %d", c)
	}
	for h, want := range map[int][]string{1: id, 2: none, 3: id, 4: id, 9: none} {
		if got := findIDs(t, s, hashN(h)); !slices.Equal(got, want) {
			t.Errorf("after delta, find %d: %v, want %v", h, got, want)
		}
	}
	// Remove and add of the same hash in one delta: removed, then added.
	me.packages(t, s, next(), false, []string{hashN(3)}, []string{hashN(3)})
	if got := findIDs(t, s, hashN(3)); !slices.Equal(got, id) {
		t.Errorf("remove+add: %v", got)
	}
	// A new full set replaces everything.
	if c := me.packages(t, s, next(), true, []string{hashN(5), hashN(4)}, nil).Count; c != 2 {
		t.Fatalf("count after second full: %d", c)
	}
	for h, want := range map[int][]string{1: none, 3: none, 4: id, 5: id} {
		if got := findIDs(t, s, hashN(h)); !slices.Equal(got, want) {
			t.Errorf("after full, find %d: %v, want %v", h, got, want)
		}
	}
	// An empty full set clears.
	if c := me.packages(t, s, next(), true, nil, nil).Count; c != 0 {
		t.Fatalf("count after empty full: %d", c)
	}
	if got := findIDs(t, s, hashN(4)); len(got) != 0 {
		t.Errorf("after clearing: %v", got)
	}
}

// TestTTLExpiry: a silent peer vanishes at once from reads when its TTL
// passes, the sweep deletes its hashes, and its replay guard outlives it.
func TestTTLExpiry(t *testing.T) { eachBackend(t, testTTLExpiry) }

func testTTLExpiry(t *testing.T, be backend) {
	const ttl = 200 * time.Millisecond
	s, db, clock := newTestServer(t, be, ttl)
	a, b := newSigner(t), newSigner(t)
	a.announce(t, s, ms(clock.Now()))
	a.packages(t, s, ms(clock.Now())+1, true, []string{hashN(1)}, nil)
	clock.Advance(150 * time.Millisecond)
	b.announce(t, s, ms(clock.Now()))
	b.packages(t, s, ms(clock.Now())+1, true, []string{hashN(1)}, nil)
	if got := findIDs(t, s, hashN(1)); len(got) != 2 {
		t.Fatalf("before expiry: %v", got)
	}

	clock.Advance(100 * time.Millisecond) // a: 250 ms silent, b: 100 ms
	if got := findIDs(t, s, hashN(1)); !slices.Equal(got, []string{b.id.String()}) {
		t.Fatalf("a expired, find: %v", got)
	}
	if got := peerIDs(t, s); !slices.Equal(got, []string{b.id.String()}) {
		t.Fatalf("a expired, peers: %v", got)
	}
	// An expired peer cannot send packages; it must announce again.
	w := serve(s, a.request(t, "POST", "/v1/packages", mustJSON(t, map[string]any{"peer_id": a.id.String(), "ts": ms(clock.Now()), "full": false, "add": []string{hashN(2)}})))
	if w.Code != 404 {
		t.Fatalf("packages of an expired peer: %d %s", w.Code, w.Body)
	}

	ctx := context.Background()
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if all, _ := findAll(ctx, db, hashN(1), time.Time{}, 10); len(all) != 1 {
		t.Fatalf("sweep left %d rows for hash 1", len(all))
	}
	if ts, ok, _ := db.LastTS(ctx, a.id.String()); !ok || ts != ms(t0)+1 {
		t.Fatalf("replay guard of a: %d %v", ts, ok)
	}
	// a comes back: registered afresh, with no hashes.
	if ans := a.announce(t, s, ms(clock.Now())+1); !ans.Registered {
		t.Fatal("re-announce after expiry is not a fresh registration")
	}
	if got := findIDs(t, s, hashN(1)); len(got) != 1 {
		t.Fatalf("a's old hashes came back: %v", got)
	}

	// Long after, with no heartbeats, the sweep forgets both peers.
	clock.Advance(MaxClockSkew + time.Second)
	if n, err := s.Sweep(ctx); err != nil || n != 2 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if _, ok, _ := db.LastTS(ctx, a.id.String()); ok {
		t.Fatal("a not forgotten")
	}
}

// TestExpiredHashesNotResurrected: a peer that expired and comes back
// before the sweep ran starts with an empty set.
func TestExpiredHashesNotResurrected(t *testing.T) { eachBackend(t, testExpiredHashesNotResurrected) }

func testExpiredHashesNotResurrected(t *testing.T, be backend) {
	s, _, clock := newTestServer(t, be, time.Second)
	a := newSigner(t)
	a.announce(t, s, ms(clock.Now()))
	a.packages(t, s, ms(clock.Now())+1, true, hashes(0, 100), nil)
	clock.Advance(2 * time.Second)
	if ans := a.announce(t, s, ms(clock.Now())); !ans.Registered {
		t.Fatal("not registered afresh")
	}
	if got := findIDs(t, s, hashN(5)); len(got) != 0 {
		t.Fatalf("old hashes visible: %v", got)
	}
}

func TestDeregister(t *testing.T) { eachBackend(t, testDeregister) }

func testDeregister(t *testing.T, be backend) {
	s, db, clock := newTestServer(t, be, time.Minute)
	a, b := newSigner(t), newSigner(t)
	for _, p := range []signer{a, b} {
		p.announce(t, s, ms(clock.Now()))
		p.packages(t, s, ms(clock.Now())+1, true, []string{hashN(1)}, nil)
	}
	body := mustJSON(t, map[string]any{"peer_id": a.id.String(), "ts": ms(clock.Now()) + 2})
	w := serve(s, a.request(t, "DELETE", "/v1/peers/"+a.id.String(), body))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"removed":true`) {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	if got := findIDs(t, s, hashN(1)); !slices.Equal(got, []string{b.id.String()}) {
		t.Fatalf("find after delete: %v", got)
	}
	if got := peerIDs(t, s); !slices.Equal(got, []string{b.id.String()}) {
		t.Fatalf("peers after delete: %v", got)
	}
	if all, _ := findAll(context.Background(), db, hashN(1), time.Time{}, 10); len(all) != 1 {
		t.Fatalf("delete left hash rows: %v", all)
	}
	// A captured announce signed before the DELETE cannot bring a back.
	old := mustJSON(t, map[string]any{"peer_id": a.id.String(), "ts": ms(clock.Now()) + 1, "addrs": []string{}})
	if w := serve(s, a.request(t, "POST", "/v1/announce", old)); w.Code != 409 {
		t.Fatalf("replayed announce after delete: %d %s", w.Code, w.Body)
	}
	// Deleting an unknown peer is fine.
	c := newSigner(t)
	body = mustJSON(t, map[string]any{"peer_id": c.id.String(), "ts": ms(clock.Now())})
	if w := serve(s, c.request(t, "DELETE", "/v1/peers/"+c.id.String(), body)); w.Code != 200 || !strings.Contains(w.Body.String(), `"removed":false`) {
		t.Fatalf("delete unknown: %d %s", w.Code, w.Body)
	}
}

func TestMigrations(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/t.db"
	for range 2 { // reopening applies nothing twice
		db, err := OpenSQLite(path)
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := db.r.QueryRow(`SELECT version FROM schema_version`).Scan(&v); err != nil || v != len(migrations) {
			t.Fatalf("version %d %v", v, err)
		}
		var rows int
		db.r.QueryRow(`SELECT count(*) FROM schema_version`).Scan(&rows)
		if rows != 1 {
			t.Fatalf("%d schema_version rows", rows)
		}
		db.Close()
	}
	db, _ := OpenSQLite(path)
	db.w.Exec(`UPDATE schema_version SET version = 99`)
	db.Close()
	if _, err := OpenSQLite(path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("opening a newer schema: %v", err)
	}
}

// TestFindUsesIndex: find(hash) is an index lookup, not a scan.
func TestFindUsesIndex(t *testing.T) {
	db := openTestDB(t)
	rows, err := db.r.Query(`EXPLAIN QUERY PLAN SELECT p.peer_id, p.addrs, p.last_seen, p.packages
		FROM packages k CROSS JOIN peers p ON p.id = k.peer
		WHERE k.hash = ? AND p.last_seen >= ?
		ORDER BY p.last_seen DESC, p.id LIMIT ?`, []byte("x"), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		rows.Scan(&id, &parent, &notused, &detail)
		plan = append(plan, detail)
	}
	joined := strings.Join(plan, "; ")
	if !strings.Contains(joined, "SEARCH k USING PRIMARY KEY (hash=?)") || !strings.Contains(joined, "SEARCH p USING INTEGER PRIMARY KEY") {
		t.Fatalf("plan: %s", joined)
	}
}
