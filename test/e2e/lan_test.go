package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/nixtest"
)

// LAN mode end to end: peerix daemons on hosts of a simulated LAN (network
// namespaces joined by a bridge) find each other's store paths by UDP
// broadcast, and the real Nix substitutes through them.

// missDeadline is how fast a LAN miss must be answered: Nix waits for it on
// every path no peer has.
const missDeadline = time.Second

// initStore makes an empty chroot store.
func initStore(t testing.TB, name string) string {
	t.Helper()
	return nixtest.InitStore(t, name)
}

// closureOf lists path and everything it references, directly or not.
func closureOf(fx *fixtureSet, path string) []string {
	seen := map[string]bool{}
	todo := []string{path}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		todo = append(todo, fx.facts[p].refs...)
	}
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// checkAnswers wants exactly one answer per host in from, each naming
// port 12304 and local/<hash>.narinfo.
func checkAnswers(t *testing.T, what string, answers []wireAnswer, hash string, from ...*nsHost) {
	t.Helper()
	var got, want []string
	for _, a := range answers {
		got = append(got, a.from.Addr().String())
		if a.port != lanPort || a.path != "local/"+hash+".narinfo" {
			t.Errorf("%s: answer %v; want port %d and path %q", what, a, lanPort, "local/"+hash+".narinfo")
		}
	}
	for _, h := range from {
		want = append(want, h.addr.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: answers from %v, want one from each of %v (all answers: %v)", what, got, want, answers)
	}
}

// TestLANSubstitute: three hosts, each with its own store and peerix. A
// holds the fixture closure; the real Nix on B substitutes it through B's
// peerix, which finds it on A; C holds nothing and answers nothing.
func TestLANSubstitute(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "A", "B", "C")
	A, B, C := lan.host("A"), lan.host("B"), lan.host("C")
	key := keygen(t, "peerix-lan-a")
	bStore, cStore := initStore(t, "b-store"), initStore(t, "c-store")
	da := startPeerix(t, lanDaemon(t, A, fx.src, "--filter", "none", "--signing-key-file", key.secretFile))
	db := startPeerix(t, lanDaemon(t, B, bStore, "--filter", "none", "--trusted-public-key", key.public))
	dc := startPeerix(t, lanDaemon(t, C, cStore, "--filter", "none", "--trusted-public-key", key.public))
	rootHash := hashPart(fx.root)
	bcast := netip.AddrPortFrom(lan.broadcast, lanPort)

	// On the wire, asked from B: A answers, C (which has nothing) does not.
	probeB := B.listenUDP(t, 0)
	checkAnswers(t, "request from B before substituting", askLAN(t, probeB, bcast, rootHash, 600*time.Millisecond), rootHash, A)

	start := time.Now()
	r := B.nix(t, "nix-store", "--store", bStore, "-r", fx.root,
		"--option", "substituters", db.url,
		"--option", "trusted-public-keys", key.public,
		"--option", "require-sigs", "true")
	if r.err != nil {
		t.Fatalf("Nix on B could not substitute through B's peerix:\n%v", r)
	}
	t.Logf("nix-store -r of the %d-path closure on B through peerix: %v", len(fx.paths), time.Since(start).Round(time.Millisecond))
	assertSameClosure(t, fx, bStore)
	if r := nix3(t, "path-info", "--store", cStore, "--all"); r.err != nil || len(bytes.TrimSpace(r.stdout)) != 0 {
		t.Errorf("C's store should have stayed empty; nix path-info --all:\n%v", r)
	}

	// A miss from B's loopback: 404, and fast.
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		absent := randomNix32(32)
		t0 := time.Now()
		resp, _ := clientGet(t, db.client, method, db.url+"/"+absent+".narinfo")
		took := time.Since(t0)
		t.Logf("LAN miss, %s from B's loopback: %s in %v", method, resp.Status, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s /%s.narinfo (nobody has it) from B's loopback: %s, want 404", method, absent, resp.Status)
		}
		if took >= missDeadline {
			t.Errorf("%s /%s.narinfo (nobody has it) took %v, want under %v", method, absent, took, missDeadline)
		}
	}

	// A hit from B's loopback: A's narinfo, A's signature, a nar/lan/ URL
	// whose NAR is the path's.
	big := fx.byName["big"]
	t0 := time.Now()
	resp, body := clientGet(t, db.client, http.MethodGet, db.url+"/"+hashPart(big)+".narinfo")
	t.Logf("LAN hit, GET from B's loopback: %s in %v", resp.Status, time.Since(t0).Round(time.Millisecond))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /%s.narinfo from B's loopback: %s\n%s", hashPart(big), resp.Status, body)
	}
	ni := parseNarInfo(t, body)
	if ni["StorePath"] != big || ni["NarHash"] != fx.facts[big].narHash || !strings.HasPrefix(ni["URL"], "nar/lan/") {
		t.Errorf("B's narinfo for %s:\n%s\nwant its StorePath, NarHash %s and a nar/lan/ URL", big, body, fx.facts[big].narHash)
	}
	if !strings.Contains(" "+ni["Sig"], " "+strings.SplitN(key.public, ":", 2)[0]+":") {
		t.Errorf("B's narinfo for %s carries no signature by A's key:\n%s", big, body)
	}
	status, digest, n, err := clientDigest(db.client, db.url+"/"+ni["URL"])
	if err != nil || status != http.StatusOK || hex.EncodeToString(digest) != fx.facts[big].narDigest {
		t.Errorf("GET /%s from B's loopback: status %d, %d bytes sha256 %x, err %v; want the NAR of %s",
			ni["URL"], status, n, digest, err, big)
	}

	// Peer routes of B from host C: forbidden.
	cc := C.httpClient()
	for _, c := range []struct{ method, target string }{
		{http.MethodGet, "/" + rootHash + ".narinfo"},
		{http.MethodHead, "/" + rootHash + ".narinfo"},
		{http.MethodGet, "/" + ni["URL"]},
		{http.MethodGet, "/nix-cache-info"},
	} {
		resp, body := clientGet(t, cc, c.method, db.hostURL+c.target)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s%s from host C: %s, want 403", c.method, db.hostURL, c.target, resp.Status)
		}
		if bytes.Contains(body, []byte("nix-archive-1")) || bytes.Contains(body, []byte("StorePath:")) {
			t.Errorf("%s %s%s from host C leaks data: %.200q", c.method, db.hostURL, c.target, body)
		}
	}
	// A's local store from host C: open, as for any peer.
	resp, body = clientGet(t, cc, http.MethodGet, da.hostURL+"/local/"+rootHash+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/local/%s.narinfo from host C: %s\n%s", da.hostURL, rootHash, resp.Status, body)
	}
	if ni := parseNarInfo(t, body); ni["StorePath"] != fx.root || ni["NarHash"] != fx.facts[fx.root].narHash {
		t.Errorf("A's /local narinfo for %s, from host C:\n%s", fx.root, body)
	}

	// B now holds the closure and shares it: asked from C, A and B answer.
	probeC := C.listenUDP(t, 0)
	checkAnswers(t, "request from C after B substituted", askLAN(t, probeC, bcast, rootHash, 600*time.Millisecond), rootHash, A, B)

	da.alive(t)
	db.alive(t)
	dc.alive(t)
}

// TestLANInterop: peerix and the original peerix's wire format, both ways,
// with a summary-speaking peerix peer S on the same LAN. (a) an old peer
// holds paths, S others; the real Nix on a peerix host substitutes all of
// them through its peerix. (b) the peerix host holds paths; the old peer
// asks for them by broadcast, and fetches the narinfo and the NAR the way
// the original does.
func TestLANInterop(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "O", "P", "S")
	O, P := lan.host("O"), lan.host("P")

	// The old peer holds the closure of "refs"; P holds "big" and "deep".
	old := startOldPeer(t, lan, O)
	oldPaths := closureOf(fx, fx.byName["refs"])
	for _, p := range oldPaths {
		old.hold(t, fx.src, p, fx.facts[p])
	}
	pPaths := []string{fx.byName["big"], fx.byName["deep"]}
	pStore := initStore(t, "p-store")
	if r := nix3(t, append([]string{"copy", "--no-check-sigs", "--from", fx.src, "--to", pStore}, pPaths...)...); r.err != nil {
		t.Fatalf("filling P's store:\n%v", r)
	}
	// S speaks summaries and holds "single-exec" (signed by S's key).
	sKey := keygen(t, "peerix-interop-s")
	sStore := initStore(t, "s-store")
	sPath := fx.byName["single-exec"]
	copyPaths(t, fx.src, sStore, sPath)
	startPeerix(t, lanDaemon(t, lan.host("S"), sStore, "--filter", "none", "--signing-key-file", sKey.secretFile))
	dp := startPeerix(t, lanDaemon(t, P, pStore, "--filter", "none",
		"--trusted-public-key", old.key.public(), "--trusted-public-key", sKey.public))
	// The old peer becomes known as any original does: by a request of its own.
	old.introduce(t, dp)

	t.Run("summary peer serves peerix beside the old peer", func(t *testing.T) {
		r := P.nix(t, "nix-store", "--store", pStore, "-r", sPath,
			"--option", "substituters", dp.url,
			"--option", "trusted-public-keys", sKey.public,
			"--option", "require-sigs", "true")
		if r.err != nil {
			t.Fatalf("Nix on P could not substitute %s from the summary peer S:\n%v", sPath, r)
		}
		if digest, _, err := dumpDigest(t.Context(), pStore, sPath); err != nil || digest != fx.facts[sPath].narDigest {
			t.Errorf("%s in P's store: sha256 %s, err %v; want %s", sPath, digest, err, fx.facts[sPath].narDigest)
		}
	})

	t.Run("old peer serves peerix", func(t *testing.T) {
		start := time.Now()
		r := P.nix(t, "nix-store", "--store", pStore, "-r", fx.byName["refs"],
			"--option", "substituters", dp.url,
			"--option", "trusted-public-keys", old.key.public(),
			"--option", "require-sigs", "true")
		if r.err != nil {
			t.Fatalf("Nix on P could not substitute from the old peer through peerix:\n%v\nold peer's HTTP requests: %q", r, old.requests())
		}
		t.Logf("nix-store -r of %d paths from the old peer: %v", len(oldPaths), time.Since(start).Round(time.Millisecond))
		for _, p := range oldPaths {
			want := fx.facts[p]
			digest, size, err := dumpDigest(t.Context(), pStore, p)
			if err != nil {
				t.Errorf("%s did not arrive in P's store: %v", p, err)
				continue
			}
			if digest != want.narDigest || size != want.narSize {
				t.Errorf("%s in P's store: %d bytes sha256 %s; the old peer has %d bytes sha256 %s",
					p, size, digest, want.narSize, want.narDigest)
			}
			if refs := references(t, pStore, p); !slices.Equal(refs, want.refs) {
				t.Errorf("%s in P's store references %q, want %q", p, refs, want.refs)
			}
		}
		// peerix took the narinfo at local/<hash>.narinfo and resolved its
		// URL (local/nar/...) against the old peer's root.
		hits := old.requests()
		for _, p := range oldPaths {
			h := hashPart(p)
			narPath := "/local/nar/" + h + "-" + strings.TrimPrefix(fx.facts[p].narHash, "sha256:") + ".nar"
			if !slices.Contains(hits, "GET /local/"+h+".narinfo") || !slices.Contains(hits, "GET "+narPath) {
				t.Errorf("the old peer was not asked for GET /local/%s.narinfo and GET %s; it got %q", h, narPath, hits)
			}
		}
	})

	t.Run("peerix serves old peer", func(t *testing.T) {
		oc := O.httpClient()
		for _, p := range pPaths {
			h := hashPart(p)
			answers := old.ask(h, 600*time.Millisecond)
			checkAnswers(t, "old peer's request for "+filepath.Base(p), answers, h, P)
			if len(answers) == 0 {
				continue
			}
			a := answers[0]
			root := fmt.Sprintf("http://%s:%d/", a.from.Addr(), a.port)
			resp, body := clientGet(t, oc, http.MethodGet, root+a.path)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("old peer: GET %s%s: %s\n%s", root, a.path, resp.Status, body)
				continue
			}
			ni := parseNarInfo(t, body)
			if ni["StorePath"] != p || ni["NarSize"] != fmt.Sprint(fx.facts[p].narSize) {
				t.Errorf("old peer: narinfo of %s from peerix:\n%s", p, body)
			}
			algo, nix32, _ := strings.Cut(ni["NarHash"], ":")
			want, err := nixbase32.DecodeString(nix32)
			if algo != "sha256" || err != nil || len(want) != sha256.Size {
				t.Errorf("old peer: NarHash %q of %s is not sha256:<nix32> (%v)", ni["NarHash"], p, err)
				continue
			}
			// The original resolves the URL against the responder's root.
			status, got, n, err := clientDigest(oc, root+ni["URL"])
			if err != nil || status != http.StatusOK {
				t.Errorf("old peer: GET %s%s: status %d, err %v", root, ni["URL"], status, err)
				continue
			}
			if !bytes.Equal(got, want) || fmt.Sprint(n) != ni["NarSize"] {
				t.Errorf("old peer: NAR of %s from %s%s: %d bytes sha256 %x; narinfo says %s bytes sha256 %x",
					p, root, ni["URL"], n, got, ni["NarSize"], want)
			}
		}
		// For what P does not hold, silence.
		if answers := old.ask(randomNix32(32), 600*time.Millisecond); len(answers) != 0 {
			t.Errorf("old peer's request for a path nobody has got answers: %v", answers)
		}
	})
	dp.alive(t)
}

// TestLANGarbage throws malformed and hostile datagrams at peerix's UDP port
// and hostile answers at its own requests: peerix must stay up and silent,
// fetch nothing it was not entitled to, answer misses with 404, and then
// still work, from an honest peer Y (X, caught lying, stays shunned).
func TestLANGarbage(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "P", "X", "Y")
	P, X := lan.host("P"), lan.host("X")
	// X is a hostile peer on UDP and TCP 12304 that holds nothing and, until
	// told otherwise, answers nothing; every HTTP request it gets is recorded.
	bad := startOldPeer(t, lan, X)
	// P trusts X's key, so that what stops X's hostile answers below is
	// the LAN layer's own checks, not only the verifier behind it.
	dp := startPeerix(t, lanDaemon(t, P, fx.src, "--filter", "none", "--trusted-public-key", bad.key.public()))
	bad.mu.Lock()
	bad.onRequest = func(netip.AddrPort, uint32, string) [][]byte { return nil }
	bad.mu.Unlock()

	leaf := fx.byName["leaf"]
	held := hashPart(leaf)
	pUDP := netip.AddrPortFrom(P.addr, lanPort)
	bcast := netip.AddrPortFrom(lan.broadcast, lanPort)
	baitPath := "local/" + randomNix32(32) + ".narinfo" // X would serve it, if asked

	var garbage [][]byte
	add := func(b ...[]byte) { garbage = append(garbage, b...) }
	req := func(kind byte, id uint32, rest string) []byte {
		b := wireRequest(id, rest)
		b[0] = kind
		return b
	}
	add(
		[]byte{},
		[]byte{0x00},
		[]byte{0x01},
		req(0x00, 1, held[:31]),           // truncated request
		req(0x00, 2, held+"x"),            // one byte too long
		req(0x00, 3, ""),                  // no hash at all
		bytes.Repeat([]byte{0x00}, 2000),  // oversized
		bytes.Repeat([]byte{0x01}, 65000), // oversized, near the UDP limit
		append(wireRequest(4, held), make([]byte, 1400)...),
		req(0x02, 5, held), // unknown kinds
		req(0x7f, 6, held),
		req(0xff, 7, held),
		req(0x00, 8, "e"+held[1:]), // outside Nix base-32
		req(0x00, 9, strings.ToUpper(held)),
		req(0x00, 10, "../../../../../../../etc/passwd"[:31]+"\x00"),
		req(0x00, 11, strings.Repeat("\x00", 32)),
		req(0x00, 12, strings.Repeat("é", 16)),
		// Responses nobody asked for, some well-formed, some hostile.
		wireResponse(13, lanPort, baitPath),
		wireResponse(14, lanPort, "../../etc/passwd"),
		wireResponse(15, lanPort, "/etc/passwd"),
		wireResponse(16, lanPort, "local/../../etc/passwd"),
		wireResponse(17, 0, baitPath),
		wireResponse(18, 70000, baitPath),
		wireResponse(19, lanPort, ""),
		wireResponse(20, lanPort, strings.Repeat("a/", 1000)+held+".narinfo"),
		wireResponse(21, lanPort, "http://"+X.addr.String()+":12304/"+baitPath),
		[]byte{0x01, 0, 0, 0, 22, 0, 0}, // truncated response
	)
	probe := X.listenUDP(t, 0)
	for _, to := range []netip.AddrPort{pUDP, bcast} {
		for _, b := range garbage {
			if _, err := probe.WriteToUDPAddrPort(b, to); err != nil && len(b) < 60000 {
				t.Errorf("sending %d bytes of garbage to %s: %v", len(b), to, err)
			}
		}
	}
	// Silence: not one answer to any of it.
	if answers := collectAnswers(t, probe, 300*time.Millisecond, func(wireAnswer) bool { return true }); len(answers) != 0 {
		t.Errorf("peerix answered garbage: %v", answers)
	}

	// A flood of valid requests for a path it holds, in one burst.
	const flood = 1000
	ids := map[uint32]bool{}
	for len(ids) < flood {
		ids[mrand.Uint32()] = true
	}
	t0 := time.Now()
	for id := range ids {
		if _, err := probe.WriteToUDPAddrPort(wireRequest(id, held), pUDP); err != nil {
			t.Fatalf("flood: %v", err)
		}
	}
	sent := time.Since(t0)
	answers := collectAnswers(t, probe, time.Second, func(wireAnswer) bool { return true })
	for _, a := range answers {
		if !ids[a.id] || a.port != lanPort || a.path != "local/"+held+".narinfo" || a.from != pUDP {
			t.Errorf("flood: answer %v is not to one of the requests", a)
		}
	}
	t.Logf("flood of %d requests (sent in %v): %d answers", flood, sent.Round(time.Microsecond), len(answers))
	if len(answers) == 0 {
		t.Errorf("flood: no answer to any of %d requests for a held path", flood)
	}
	dp.healthy(t, X)

	// Hostile answers to peerix's own requests. Each case is a lookup of
	// its own hash from P's loopback; X answers the broadcast as the case
	// says and serves the narinfo the case gives. Every lookup must end in
	// 404, and X must get no request beyond what the case allows.
	type hostile struct {
		name    string
		answer  func(id uint32, hash string) [][]byte
		narinfo func(hash string) (status int, body string) // nil: X serves none
	}
	fakePath := func(h string) string { return "/nix/store/" + h + "-peerix-e2e-bait" }
	// Signed by X's key, which P trusts: only the LAN checks stand between
	// these narinfos and P's Nix.
	baitFacts := pathFacts{narHash: fx.facts[leaf].narHash, narSize: fx.facts[leaf].narSize}
	goodNarinfo := func(h, url, compression string) string {
		return fmt.Sprintf("StorePath: %s\nURL: %s\nCompression: %s\nNarHash: %s\nNarSize: %d\nReferences: \nSig: %s\n",
			fakePath(h), url, compression, baitFacts.narHash, baitFacts.narSize, bad.key.sign(fakePath(h), baitFacts))
	}
	// Each well-formed answer names a port of its own, so that each case
	// is a holder of its own: peerix shuns a holder caught lying, and the
	// cases run at once.
	respond := func(path string) func(uint32, string) [][]byte {
		port := bad.anotherPort(t)
		return func(id uint32, h string) [][]byte {
			return [][]byte{wireResponse(id, port, strings.ReplaceAll(path, "HASH", h))}
		}
	}
	cases := []hostile{
		{name: "path traversal", answer: respond("../../etc/passwd")},
		{name: "traversal ending in the hash", answer: respond("local/../../HASH.narinfo")},
		{name: "absolute path", answer: respond("/local/HASH.narinfo")},
		{name: "full URL to elsewhere", answer: respond("http://" + P.addr.String() + ":12304/local/HASH.narinfo")},
		{name: "port 0", answer: func(id uint32, h string) [][]byte {
			return [][]byte{wireResponse(id, 0, "local/"+h+".narinfo")}
		}},
		{name: "wrong id", answer: func(id uint32, h string) [][]byte {
			return [][]byte{wireResponse(id+1, lanPort, "local/"+h+".narinfo"), wireResponse(id^0xffffffff, lanPort, "local/"+h+".narinfo")}
		}},
		{name: "narinfo of another path", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, fmt.Sprintf("StorePath: %s\nURL: local/nar/x.nar\nCompression: none\nNarHash: %s\nNarSize: %d\nReferences: %s\nSig: %s\n",
				leaf, fx.facts[leaf].narHash, fx.facts[leaf].narSize, "", bad.key.sign(leaf, fx.facts[leaf]))
		}},
		{name: "NAR URL with ..", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, goodNarinfo(h, "../../../etc/passwd", "none")
		}},
		{name: "absolute NAR URL", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, goodNarinfo(h, "/etc/passwd", "none")
		}},
		{name: "NAR URL to another host", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, goodNarinfo(h, "http://127.0.0.1:12304/local/nix-cache-info", "none")
		}},
		{name: "compressed NAR", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, goodNarinfo(h, "local/nar/x.nar.xz", "xz")
		}},
		{name: "no NarHash", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, fmt.Sprintf("StorePath: %s\nURL: local/nar/x.nar\nCompression: none\nNarSize: 5\n", fakePath(h))
		}},
		{name: "huge narinfo", answer: respond("local/HASH.narinfo"), narinfo: func(h string) (int, string) {
			return 200, goodNarinfo(h, "local/nar/x.nar", "none") + strings.Repeat("References: "+strings.Repeat("x", 1000)+"\n", 1024)
		}},
		{name: "not a narinfo", answer: respond("local/HASH.narinfo"), narinfo: func(string) (int, string) {
			return 200, "<html><body>hello</body></html>\n"
		}},
		{name: "narinfo error 500", answer: respond("local/HASH.narinfo"), narinfo: func(string) (int, string) {
			return 500, "oops\n"
		}},
	}
	hashes := make([]string, len(cases))
	byHash := map[string]hostile{}
	for i, c := range cases {
		hashes[i] = randomNix32(32)
		byHash[hashes[i]] = c
		if c.narinfo != nil {
			status, body := c.narinfo(hashes[i])
			bad.handle("/local/"+hashes[i]+".narinfo", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(status)
				_, _ = w.Write([]byte(body))
			})
		}
	}
	bad.mu.Lock()
	bad.onRequest = func(_ netip.AddrPort, id uint32, h string) [][]byte {
		if c, ok := byHash[h]; ok {
			return c.answer(id, h)
		}
		return nil
	}
	bad.mu.Unlock()
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hashes[i]
			t0 := time.Now()
			resp, body, err := clientDo(dp.client, http.MethodGet, dp.url+"/"+h+".narinfo")
			took := time.Since(t0)
			switch {
			case err != nil:
				t.Errorf("%s: GET /%s.narinfo: %v", c.name, h, err)
			case resp.StatusCode != http.StatusNotFound:
				t.Errorf("%s: GET /%s.narinfo from P's loopback: %s after %v, want 404\n%.300s", c.name, h, resp.Status, took, body)
			case took > 3*time.Second:
				t.Errorf("%s: the miss took %v", c.name, took)
			}
			// Nor is there any NAR to be had for it, under the NarHash the
			// bait narinfos name.
			resp, _, err = clientDo(dp.client, http.MethodGet, dp.url+"/nar/lan/"+h+"-"+strings.TrimPrefix(baitFacts.narHash, "sha256:")+".nar")
			if err != nil || resp.StatusCode < 400 || resp.StatusCode > 499 {
				t.Errorf("%s: GET a nar/lan/ URL for %s: %v %v, want 4xx", c.name, h, statusOf(resp), err)
			}
		}()
	}
	wg.Wait()
	// X may have been asked for exactly the narinfos its answers named,
	// when those answers were well-formed; nothing else, ever.
	allowed := map[string]bool{}
	for i, c := range cases {
		if c.narinfo != nil {
			allowed["GET /local/"+hashes[i]+".narinfo"] = true
		}
	}
	hits := bad.requests()
	for _, hit := range hits {
		if !allowed[hit] {
			t.Errorf("X got a request it should not have: %s", hit)
		}
	}
	// And those answers were taken up, so the narinfo checks were reached.
	for i, c := range cases {
		if c.narinfo != nil && !slices.Contains(hits, "GET /local/"+hashes[i]+".narinfo") {
			t.Errorf("%s: peerix never fetched the narinfo X's well-formed answer named", c.name)
		}
	}

	// Still up, still answering, and its own lookups still work: an honest
	// old peer Y holds a path and serves it (X, caught lying above, stays
	// shunned).
	dp.healthy(t, X)
	checkAnswers(t, "request after the garbage", askLAN(t, probe, bcast, held, 600*time.Millisecond), held, P)
	single := fx.byName["single-exec"]
	good := startOldPeer(t, lan, lan.host("Y"))
	good.key = bad.key // the key P trusts
	good.hold(t, fx.src, single, fx.facts[single])
	good.introduce(t, dp)
	resp, body := clientGet(t, dp.client, http.MethodGet, dp.url+"/"+hashPart(single)+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the garbage: GET /%s.narinfo from P's loopback (X holds it): %s\n%s", hashPart(single), resp.Status, body)
	}
	ni := parseNarInfo(t, body)
	status, digest, _, err := clientDigest(dp.client, dp.url+"/"+ni["URL"])
	if err != nil || status != http.StatusOK || hex.EncodeToString(digest) != fx.facts[single].narDigest {
		t.Errorf("after the garbage: GET /%s from P's loopback: status %d, sha256 %x, err %v; want the NAR of %s", ni["URL"], status, digest, err, single)
	}
	dp.alive(t)
}

func statusOf(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status
}

// TestLANResume: two old peers hold the same path. The one whose narinfo
// comes first sends half the NAR, stalls 800 ms and hangs up; the other's
// narinfo comes 100 ms later, after Nix (here: a GET right after the
// narinfo) has asked for the NAR. peerix must resume the transfer from the
// second peer at the byte reached (a Range request), so its Nix gets the
// whole NAR, byte for byte.
func TestLANResume(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "P", "O1", "O2")
	P := lan.host("P")
	big := fx.byName["big"]
	h := hashPart(big)
	facts := fx.facts[big]
	half := facts.narSize / 2

	broken := startOldPeer(t, lan, lan.host("O1"))
	broken.hold(t, fx.src, big, facts)
	narFile := broken.paths[h].narFile
	broken.handle(broken.narURL(big), func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			http.Error(w, "no ranges here", http.StatusInternalServerError)
			return
		}
		f, err := os.Open(narFile)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Length", strconv.FormatInt(facts.narSize, 10))
		_, _ = io.CopyN(w, f, half)
		w.(http.Flusher).Flush()
		// Long enough for the second narinfo to arrive meanwhile.
		time.Sleep(800 * time.Millisecond)
		// Returning short of Content-Length drops the connection.
	})

	good := startOldPeer(t, lan, lan.host("O2"))
	good.hold(t, fx.src, big, facts)
	goodNarinfo := good.paths[h].narinfo
	// The good peer's narinfo comes second.
	good.handle("/local/"+h+".narinfo", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
		_, _ = io.WriteString(w, goodNarinfo)
	})

	pStore := initStore(t, "p-store")
	dp := startPeerix(t, lanDaemon(t, P, pStore, "--filter", "none",
		"--trusted-public-key", broken.key.public(), "--trusted-public-key", good.key.public()))
	broken.introduce(t, dp)
	good.introduce(t, dp)
	resp, body := clientGet(t, dp.client, http.MethodGet, dp.url+"/"+h+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /%s.narinfo from P's loopback: %s\n%s", h, resp.Status, body)
	}
	ni := parseNarInfo(t, body)
	// At once, as Nix does: the second peer's narinfo is not in yet.
	status, digest, n, err := clientDigest(dp.client, dp.url+"/"+ni["URL"])
	if err != nil || status != http.StatusOK || hex.EncodeToString(digest) != facts.narDigest {
		t.Errorf("GET /%s from P's loopback: status %d, %d bytes sha256 %x, err %v; want %d bytes sha256 %s",
			ni["URL"], status, n, digest, err, facts.narSize, facts.narDigest)
	}
	if !slices.ContainsFunc(broken.requests(), func(s string) bool { return strings.HasPrefix(s, "GET /local/nar/") }) {
		t.Errorf("the first peer was never asked for the NAR: %q", broken.requests())
	}
	// The rest of the broken peer's part, from where it broke (the good
	// peer may have taken the tail meanwhile: then the range has an end).
	wantRange := fmt.Sprintf("bytes=%d-", half)
	if rr := good.rangeRequests(); !slices.ContainsFunc(rr, func(s string) bool { return strings.Contains(s, " "+wantRange) }) {
		t.Errorf("the second peer got no request for %s; its Range requests: %q, all: %q", wantRange, rr, good.requests())
	}

	// The real Nix through the same daemon: the broken peer breaks again.
	r := P.nix(t, "nix-store", "--store", pStore, "-r", big,
		"--option", "substituters", dp.url,
		"--option", "trusted-public-keys", broken.key.public()+" "+good.key.public(),
		"--option", "require-sigs", "true")
	if r.err != nil {
		t.Fatalf("Nix on P could not substitute through a broken and a good peer:\n%v", r)
	}
	digestHex, size, err := dumpDigest(t.Context(), pStore, big)
	if err != nil || digestHex != facts.narDigest || size != facts.narSize {
		t.Errorf("%s in P's store: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", big, size, digestHex, err, facts.narSize, facts.narDigest)
	}
	dp.alive(t)
}

// TestLANLyingPeer: a peer whose narinfo is signed by a key P trusts but
// whose NAR is not the one the narinfo describes (same size, one byte
// changed). Neither a client of P's peerix nor P's Nix may ever get the
// whole wrong NAR, and the path must not become valid on P.
func TestLANLyingPeer(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "P", "L")
	P := lan.host("P")
	big := fx.byName["big"]
	h := hashPart(big)
	facts := fx.facts[big]

	liar := startOldPeer(t, lan, lan.host("L"))
	liar.hold(t, fx.src, big, facts)
	nar, err := os.ReadFile(liar.paths[h].narFile)
	if err != nil {
		t.Fatal(err)
	}
	nar[len(nar)/2] ^= 0xff
	wrong := sha256.Sum256(nar)
	liar.handle(liar.narURL(big), func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(nar))
	})
	pStore := initStore(t, "p-store")
	dp := startPeerix(t, lanDaemon(t, P, pStore, "--filter", "none", "--trusted-public-key", liar.key.public()))
	liar.introduce(t, dp)

	resp, body := clientGet(t, dp.client, http.MethodGet, dp.url+"/"+h+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /%s.narinfo from P's loopback: %s\n%s", h, resp.Status, body)
	}
	ni := parseNarInfo(t, body)
	status, digest, n, err := clientDigest(dp.client, dp.url+"/"+ni["URL"])
	t.Logf("GET of the lying peer's NAR through P: status %d, %d of %d bytes, err %v", status, n, facts.narSize, err)
	if err == nil && n == facts.narSize && bytes.Equal(digest, wrong[:]) {
		t.Errorf("P's peerix handed out the whole wrong NAR (%d bytes sha256 %x)", n, digest)
	}

	r := P.nix(t, "nix-store", "--store", pStore, "-r", big,
		"--option", "substituters", dp.url,
		"--option", "trusted-public-keys", liar.key.public(),
		"--option", "download-attempts", "1")
	if r.err == nil {
		t.Errorf("Nix on P substituted %s from a peer that sends a wrong NAR:\n%v", big, r)
	}
	if isValid(t, pStore, big) {
		t.Errorf("%s became valid in P's store", big)
	}
	dp.alive(t)
}
