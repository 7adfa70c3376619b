package e2e

// Lookups as a user lives with them: a LAN with an upstream binary cache
// (U, nginx, priority 40, like cache.nixos.org), a peer A running peerix,
// and the user's machine B, whose Nix has peerix in front of the upstream
// as the README configures it. The real Nix on B realises a closure of 202
// small paths. Attackers, written from docs/protocol.md, join the LAN: a
// peer that lies in every narinfo, one that sends a wrong byte and stalls.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// lookupWorld is the LAN of TestLANLookups and what runs on it.
type lookupWorld struct {
	lan       *lanNet
	U, A, B   *nsHost
	upstream  string // U's cache URL
	accessLog string // nginx's
	upKey     string // public key of U's signatures
	closure   []string
	root      string
	narHashes map[string]string // of the closure, as `nix path-info --json` writes them
	// second is the root of another closure (and secondHashes its
	// NarHashes) that A gets too: substituting it after an attacker was
	// caught shows what the daemon learned (the first closure's lookups
	// are still remembered then).
	second       string
	secondHashes map[string]string
	aStore       string
	daemonA      *peerixProc
	cacheDir     string
	upstreamSK   string
	// nixDefaults: Nix on B keeps its default narinfo-cache-negative-ttl
	// (an hour: a miss is asked once per invocation) instead of 0 (asked
	// again each time Nix wants it), as a user's Nix does.
	nixDefaults bool
}

// staticCache makes a binary cache of paths (with their closures) in a
// directory, signed with secretKey, uncompressed, at priority 40: Nix asks
// a cache with no Priority line first of all, so peerix (30) would never be
// asked (see the notes on testing with Nix).
func staticCache(t testing.TB, dir, secretKey string, paths ...string) {
	t.Helper()
	if r := nix3(t, append([]string{"copy", "--to", "file://" + dir + "?compression=none&secret-key=" + secretKey}, paths...)...); r.err != nil {
		t.Fatalf("filling the static cache:\n%v", r)
	}
	info := filepath.Join(dir, "nix-cache-info")
	b, err := os.ReadFile(info)
	if err != nil {
		t.Fatal(err)
	}
	b = regexp.MustCompile(`(?m)^Priority:.*\n`).ReplaceAll(b, nil)
	if err := os.WriteFile(info, append(b, "Priority: 40\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newLookupWorld(t testing.TB, extra ...string) *lookupWorld {
	t.Helper()
	nfx := nixtest.Shared(t)
	w := &lookupWorld{root: nfx.Wide}
	out := nixtest.Must(t, "nix-store", "-qR", w.root)
	w.closure = strings.Fields(string(out))
	if len(w.closure) != 202 {
		t.Fatalf("the wide closure has %d paths, want 202", len(w.closure))
	}
	keyDir := t.TempDir()
	w.upstreamSK = filepath.Join(keyDir, "upstream.sec")
	pub := filepath.Join(keyDir, "upstream.pub")
	mustNix(t, "nix-store", "--generate-binary-cache-key", "upstream-lookups", w.upstreamSK, pub)
	b, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	w.upKey = strings.TrimSpace(string(b))
	w.cacheDir = filepath.Join(t.TempDir(), "cache")
	staticCache(t, w.cacheDir, w.upstreamSK, w.root, nfx.All)
	w.narHashes = closureNarHashes(t, "auto", w.root)
	w.second = nfx.All
	w.secondHashes = closureNarHashes(t, "auto", w.second)

	w.lan = newLAN(t, append([]string{"U", "A", "B"}, extra...)...)
	w.U, w.A, w.B = w.lan.host("U"), w.lan.host("A"), w.lan.host("B")
	w.upstream, w.accessLog = startUpstream(t, w.U, w.cacheDir)
	w.aStore = initStore(t, "a-store")
	w.daemonA = startPeerix(t, lanDaemon(t, w.A, w.aStore,
		"--filter", "upstream", "--upstream", w.upstream, "--trusted-public-key", w.upKey))
	return w
}

// daemonB starts peerix on B as a user would run it: in front of the
// upstream, trusting the upstream's key.
func (w *lookupWorld) daemonB(t testing.TB) *peerixProc {
	t.Helper()
	return startPeerix(t, lanDaemon(t, w.B, initStore(t, "b-unused"),
		"--upstream", w.upstream, "--trusted-public-key", w.upKey))
}

// realise has the real Nix on B realise the closure into a fresh store,
// through substituters (in Nix's order: priority), and returns how long it
// took. Every path must arrive byte-exact.
func (w *lookupWorld) realise(t testing.TB, what string, substituters ...string) time.Duration {
	t.Helper()
	var opts []string
	if !w.nixDefaults {
		opts = []string{"narinfo-cache-negative-ttl", "0"}
	}
	return realiseOn(t, w.B, what, w.upKey, w.narHashes, []string{w.root}, substituters, opts...)
}

// realiseSecond is realise of the second closure.
func (w *lookupWorld) realiseSecond(t testing.TB, what string, substituters ...string) time.Duration {
	t.Helper()
	return realiseOn(t, w.B, what, w.upKey, w.secondHashes, []string{w.second}, substituters, "narinfo-cache-negative-ttl", "0")
}

// realiseOn has the real Nix on host h realise roots (with their closures)
// into a fresh store through substituters (in Nix's order: priority),
// signatures by key required, and returns how long Nix took. nixOptions
// are more settings, as name and value. Every path must arrive byte-exact:
// recorded with its NarHash in want (as closureNarHashes gives them), and
// its files on disk matching it.
func realiseOn(t testing.TB, h *nsHost, what, key string, want map[string]string, roots, substituters []string, nixOptions ...string) time.Duration {
	t.Helper()
	store := initStore(t, "b-store")
	args := append([]string{"--store", store, "-r"}, roots...)
	args = append(args,
		"--option", "substituters", strings.Join(substituters, " "),
		"--option", "trusted-public-keys", key,
		"--option", "require-sigs", "true")
	for i := 0; i+1 < len(nixOptions); i += 2 {
		args = append(args, "--option", nixOptions[i], nixOptions[i+1])
	}
	start := time.Now()
	r := h.nixWithin(t, 5*time.Minute, "nix-store", args...)
	took := time.Since(start)
	if r.err != nil {
		t.Fatalf("%s: Nix on %s could not realise %v:\n%v", what, h.label, roots, r)
	}
	// Every path recorded with the original's NarHash, and its files on
	// disk matching it.
	got := closureNarHashes(t, store, roots...)
	if len(got) != len(want) {
		t.Fatalf("%s: %d paths in %s's store, want %d", what, len(got), h.label, len(want))
	}
	for p, nh := range want {
		if got[p] != nh {
			t.Fatalf("%s: %s in %s's store has NarHash %q, the original %q", what, p, h.label, got[p], nh)
		}
	}
	if r := nix3(t, append([]string{"store", "verify", "--store", store, "--no-trust", "-r"}, roots...)...); r.err != nil {
		t.Fatalf("%s: the paths in %s's store do not verify:\n%v", what, h.label, r)
	}
	t.Logf("%s: Nix on %s realised %d paths in %v (Nix's CPU time %v)", what, h.label, len(want), took.Round(time.Millisecond), r.cpu.Round(time.Millisecond))
	return took
}

// closureNarHashes returns the NarHash of every path in the closure of
// roots in store, as `nix path-info --json` writes them.
func closureNarHashes(t testing.TB, store string, roots ...string) map[string]string {
	t.Helper()
	out := nixtest.Must(t, "nix", append([]string{"path-info", "--store", store, "--json", "-r"}, roots...)...)
	var infos []struct {
		Path    string `json:"path"`
		NarHash string `json:"narHash"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatalf("nix path-info --json: %v", err)
	}
	m := map[string]string{}
	for _, in := range infos {
		m[in.Path] = in.NarHash
	}
	return m
}

// upstreamLines counts every request in nginx's access log so far.
func (w *lookupWorld) upstreamLines(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile(w.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// upstreamRequests counts Nix's requests in nginx's access log so far
// (peerix's own, to verify narinfos, are not counted) whose path matches
// kind (".narinfo", "/nar/").
func (w *lookupWorld) upstreamRequests(t testing.TB, kind string) int {
	t.Helper()
	b, err := os.ReadFile(w.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, kind) && strings.Contains(line, " Nix/") {
			n++
		}
	}
	return n
}

// fillA puts the closure into A's store, as if A had built it, and waits
// until B's peerix finds its root on A (A publishes the new paths in one
// generation of its summary, once its filter let each out).
func (w *lookupWorld) fillA(t testing.TB, dB *peerixProc) {
	t.Helper()
	w.signAsUpstream(t, append(slices.Collect(maps.Keys(w.narHashes)), slices.Collect(maps.Keys(w.secondHashes))...)...)
	if err := nixtest.Copy(t.Context(), w.aStore, w.root, w.second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for deadline := start.Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, _ := clientGet(t, dB.client, http.MethodGet, dB.url+"/"+hashPart(w.root)+".narinfo")
		if resp.StatusCode == http.StatusOK {
			t.Logf("B finds the closure on A %v after it arrived in A's store", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("B does not find the closure's root on A 30 s after it arrived in A's store: %s", resp.Status)
		}
	}
}

// signAsUpstream adds the upstream's signature to paths (in this machine's
// store, before they are copied to A), as they would carry it had A
// substituted them from the upstream: peers verify them by signature,
// without asking the upstream.
func (w *lookupWorld) signAsUpstream(t testing.TB, paths ...string) {
	t.Helper()
	if err := nixtest.Sign(t.Context(), "auto", nixtest.Key{SecretFile: w.upstreamSK}, paths...); err != nil {
		t.Fatal(err)
	}
}

// TestLANLookups: with nothing on the peers, peerix in front of the
// upstream must cost next to nothing; with the closure on A, every path
// comes from A, none is answered 404 first; a path added to A's store is
// found within the summary's promised freshness; a lying and a stalling
// peer on the LAN cost time, never the substitution. Timings go to the log;
// docs/benchmarks.md has the interleaved ratios.
func TestLANLookups(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	w := newLookupWorld(t, "L", "S")
	dB := w.daemonB(t)

	alone := w.realise(t, "upstream alone", w.upstream)
	before := w.upstreamRequests(t, ".narinfo")
	withPeerix := w.realise(t, "peerix in front, peers hold nothing", dB.url, w.upstream)
	t.Logf("peers hold nothing: %v with peerix in front, %v without (%.2fx)", withPeerix.Round(time.Millisecond),
		alone.Round(time.Millisecond), float64(withPeerix)/float64(alone))
	if n := w.upstreamRequests(t, ".narinfo") - before; n < len(w.closure) {
		t.Errorf("the upstream got %d narinfo requests, want every path's: peerix answered hits it cannot have", n)
	}

	w.fillA(t, dB)
	narsBefore, narinfosBefore := w.upstreamRequests(t, "/nar/"), w.upstreamRequests(t, ".narinfo")
	fromA := w.realise(t, "A holds the closure", dB.url, w.upstream)
	if n := w.upstreamRequests(t, "/nar/") - narsBefore; n != 0 {
		t.Errorf("%d NARs came from the upstream although A holds them all", n)
	}
	// A 404 from peerix makes Nix ask the upstream's narinfo: none may.
	if n := w.upstreamRequests(t, ".narinfo") - narinfosBefore; n != 0 {
		t.Errorf("the upstream got %d narinfo requests: peerix answered 404 for paths A holds", n)
	}
	static := w.realise(t, "the upstream as a static cache on the same LAN", w.upstream)
	t.Logf("A holds everything: %v through peerix, %v from the static cache on the LAN (%.2fx)",
		fromA.Round(time.Millisecond), static.Round(time.Millisecond), float64(fromA)/float64(static))

	t.Run("a path added to A is found within the promised freshness", func(t *testing.T) {
		// A new path, in the upstream first (A's filter shares only what the
		// upstream has), then in A's store while everything runs.
		p, err := nixtest.AddFile(t.Context(), "auto", "peerix-fresh-"+randomNix32(8), []byte("new on A"))
		if err != nil {
			t.Fatal(err)
		}
		staticCache(t, w.cacheDir, w.upstreamSK, p)
		w.signAsUpstream(t, p)
		if err := nixtest.Copy(t.Context(), w.aStore, p); err != nil {
			t.Fatal(err)
		}
		added := time.Now()
		const promised = 3 * time.Second // docs/protocol.md: about two seconds
		for {
			resp, body := clientGet(t, dB.client, http.MethodGet, dB.url+"/"+hashPart(p)+".narinfo")
			if resp.StatusCode == http.StatusOK {
				if ni := parseNarInfo(t, body); !strings.HasPrefix(ni["URL"], "nar/lan/") {
					t.Errorf("B's narinfo for the new path: %s", body)
				}
				t.Logf("B found the path added to A's store after %v", time.Since(added).Round(time.Millisecond))
				break
			}
			if time.Since(added) > promised {
				t.Fatalf("B still answers %s for a path A registered %v ago", resp.Status, promised)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// The attackers' tests start daemons of their own on B, with no
	// history: an attacker is as good as A to them at first.
	if _, err := dB.stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatalf("stopping B's daemon: %v", err)
	}
	w.daemonA.alive(t)

	t.Run("a lying peer does not stop substitution", func(t *testing.T) {
		liar := startFakePeer(t, w.lan.host("L"), w.lyingPeer())
		d := w.daemonB(t)
		defer d.stop(syscall.SIGTERM, 5*time.Second)
		liar.waitKnown(t, d)
		took := w.realise(t, "A holds the closure, a liar on the LAN", d.url, w.upstream)
		t.Logf("with a lying peer: %v (%+v without it)", took.Round(time.Millisecond), (took - fromA).Round(time.Millisecond))
		// Lookups running when it first lied asked it too; once caught it
		// is shunned: another closure asks it nothing.
		asked := liar.narInfos.Load()
		w.realiseSecond(t, "another closure, the liar caught", d.url, w.upstream)
		if n := liar.narInfos.Load() - asked; n != 0 {
			t.Errorf("the liar was asked for %d more narinfos after it was caught lying", n)
		}
		if !strings.Contains(d.log.String(), "peer lied") {
			t.Error("B's peerix never logged the lie")
		}
	})

	// A's own narinfos, for peers that answer as fast as A.
	narinfos := map[string]string{} // hash part -> A's narinfo
	sizes := map[string]int64{}     // NAR URL path -> NarSize
	for _, p := range append(slices.Collect(maps.Keys(w.narHashes)), slices.Collect(maps.Keys(w.secondHashes))...) {
		resp, body := clientGet(t, w.B.httpClient(), http.MethodGet, w.daemonA.hostURL+"/local/"+hashPart(p)+".narinfo")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("A's narinfo of %s: %s", p, resp.Status)
		}
		ni := parseNarInfo(t, body)
		narinfos[hashPart(p)] = string(body)
		size, err := strconv.ParseInt(ni["NarSize"], 10, 64)
		if err != nil {
			t.Fatalf("A's narinfo of %s: NarSize %q", p, ni["NarSize"])
		}
		sizes["/"+ni["URL"]] = size
	}

	t.Run("a peer lying in its closure answers does not stop substitution", func(t *testing.T) {
		// The liar is the only peer with the root (A's copy is deleted for
		// this test): it serves the upstream's own narinfo and NAR of the
		// root, so B takes the root from it and asks it for the closure,
		// and answers that with well-formed narinfos of every other path
		// with a wrong NarHash and no signature.
		rootInfo, err := os.ReadFile(filepath.Join(w.cacheDir, hashPart(w.root)+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		var lies strings.Builder
		for p := range w.narHashes {
			if p != w.root {
				if lies.Len() > 0 {
					lies.WriteString("\n")
				}
				lies.WriteString(fakeNarInfo(p, strings.Repeat("1", 52), 1234))
			}
		}
		liar := startFakePeer(t, w.lan.host("L"), &fakePeer{
			narInfo: func(hash string) string {
				if hash == hashPart(w.root) {
					return string(rootInfo)
				}
				return ""
			},
			closure: func(string) string { return lies.String() },
			nar: func(rw http.ResponseWriter, r *http.Request) {
				http.ServeFile(rw, r, filepath.Join(w.cacheDir, filepath.Clean(r.URL.Path)))
			},
		})
		if _, err := nixtest.Output(t.Context(), "nix-store", "--store", w.aStore, "--delete", w.root); err != nil {
			t.Fatalf("deleting the root from A's store: %v", err)
		}
		defer putOnA(t, w, w.root)
		waitFor(t, "A no longer shares the root", 10*time.Second, func() (bool, string) {
			resp, _, err := clientDo(w.B.httpClient(), http.MethodGet, w.daemonA.hostURL+"/local/"+hashPart(w.root)+".narinfo")
			if err != nil {
				return false, err.Error()
			}
			return resp.StatusCode == http.StatusNotFound, resp.Status
		})
		d := w.daemonB(t)
		defer d.stop(syscall.SIGTERM, 5*time.Second)
		liar.waitKnown(t, d)
		took := w.realise(t, "the root only on a peer lying in its closure answer, the rest on A", d.url, w.upstream)
		t.Logf("with the closure liar: %v", took.Round(time.Millisecond))
		if n := liar.closures.Load(); n != 1 {
			t.Errorf("the liar was asked for %d closures, want 1 (it alone had the root)", n)
		}
		if !strings.Contains(d.log.String(), "peer lied") {
			t.Error("B's peerix never logged the closure's lies")
		}
		liar.quiet.Store(true)
	})

	t.Run("a peer that sends a wrong byte and stalls does not stop substitution", func(t *testing.T) {
		// Right narinfos (A's own, so that it answers as fast as A and is
		// often the first holder a transfer asks), wrong NARs: one wrong
		// byte where the asked range starts, then nothing.
		staller := startFakePeer(t, w.lan.host("S"), &fakePeer{
			narInfo: func(hash string) string { return narinfos[hash] },
			nar: func(rw http.ResponseWriter, r *http.Request) {
				// The asked range's own length, so that only its bytes
				// give it away.
				size := sizes[r.URL.Path]
				from, to := int64(0), size-1
				if rg := r.Header.Get("Range"); rg != "" {
					if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &from, &to); err != nil {
						to = size - 1
					}
					rw.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, size))
					rw.Header().Set("Content-Length", strconv.FormatInt(to-from+1, 10))
					rw.WriteHeader(http.StatusPartialContent)
				} else {
					rw.Header().Set("Content-Length", strconv.FormatInt(size, 10))
					rw.WriteHeader(http.StatusOK)
				}
				rw.Write([]byte{0xff})
				rw.(http.Flusher).Flush()
				<-r.Context().Done()
			},
		})
		d := w.daemonB(t)
		defer d.stop(syscall.SIGTERM, 5*time.Second)
		staller.waitKnown(t, d)
		took := w.realise(t, "A holds the closure, a staller on the LAN", d.url, w.upstream)
		t.Logf("with a stalling peer: %v (%+v without it)", took.Round(time.Millisecond), (took - fromA).Round(time.Millisecond))
		// The staller answers narinfos as fast as A: it sends some NAR of
		// the first closure first (before A is proven), or else joins A
		// as a second source of the second closure's large NAR (several
		// MiB). Either way its wrong byte stalls, and every path still
		// arrives byte-exact.
		w.realiseSecond(t, "another closure with a large NAR", d.url, w.upstream)
		asked := staller.nars.Load()
		if asked == 0 {
			t.Fatal("the staller was never asked for a NAR: the rest of this test would prove nothing")
		}
		// From then on it is asked only when no one else has the path:
		// the same closure again takes no NAR from it.
		w.realiseSecond(t, "the same closure again, the staller known", d.url, w.upstream)
		if n := staller.nars.Load() - asked; n != 0 {
			t.Errorf("the staller was asked for %d more NARs after it stalled", n)
		}
	})
	w.daemonA.alive(t)
}

// fakePeer is a hostile LAN peer written from docs/protocol.md: it sends
// beacons, publishes a summary that claims every hash, and answers narinfo
// and NAR requests as the test says; optionally it answers every broadcast
// request in the original format too.
type fakePeer struct {
	// What it does, set before it starts:

	// narInfo returns the narinfo text to answer for a hash ("" for 404).
	narInfo func(hash string) string
	// nar serves a NAR request (nil: 404).
	nar func(http.ResponseWriter, *http.Request)
	// closure returns the answer to /local/<hash>.closure ("" for 404).
	closure func(hash string) string
	// answerBroadcasts: answer every original-format request at once.
	answerBroadcasts bool
	// quiet: as if it were not there (no beacons, no answers; HTTP
	// requests get 404), until cleared.
	quiet atomic.Bool

	host                     *nsHost
	httpPort                 uint16
	udp                      *net.UDPConn
	narInfos, nars, closures atomic.Int64 // requests it got
}

// lyingPeer is a fakePeer that answers every broadcast and every narinfo
// request of both closures at once, well-formed, with a wrong NarHash.
func (w *lookupWorld) lyingPeer() *fakePeer {
	return &fakePeer{
		narInfo: func(hash string) string {
			for _, hs := range []map[string]string{w.narHashes, w.secondHashes} {
				for p := range hs {
					if hashPart(p) == hash {
						return fakeNarInfo(p, strings.Repeat("1", 52), 1234)
					}
				}
			}
			return ""
		},
		answerBroadcasts: true,
	}
}

// startFakePeer runs p on h.
func startFakePeer(t testing.TB, h *nsHost, p *fakePeer) *fakePeer {
	t.Helper()
	p.host = h
	ln := h.listenTCP(t, "0.0.0.0:0")
	p.httpPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: http.HandlerFunc(p.serveHTTP)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p.udp = h.listenUDP(t, lanPort)
	go p.serveUDP()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if !p.quiet.Load() {
				p.beacon(netip.AddrPortFrom(lanBroadcast(h), lanPort))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// lanBroadcast is the broadcast address of h's /24.
func lanBroadcast(h *nsHost) netip.Addr {
	b := h.addr.As4()
	b[3] = 255
	return netip.AddrFrom4(b)
}

// beacon sends a beacon (docs/protocol.md): 0x02, version 1, u16 HTTP
// port, u64 epoch, u64 generation, u8 flags.
func (p *fakePeer) beacon(to netip.AddrPort) {
	b := []byte{0x02, 0x01}
	b = binary.BigEndian.AppendUint16(b, p.httpPort)
	b = binary.BigEndian.AppendUint64(b, 0xbad)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = append(b, 0)
	p.udp.WriteToUDPAddrPort(b, to)
}

func (p *fakePeer) serveUDP() {
	buf := make([]byte, 2048)
	for {
		n, from, err := p.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		switch {
		case p.quiet.Load(): // not there
		case n == 21 && b[0] == 0x02 && b[20]&0x01 != 0: // a hello: beacon back
			p.beacon(from)
		case n == 37 && b[0] == 0x00 && p.answerBroadcasts:
			hash := string(b[5:])
			if p.narInfo(hash) == "" {
				continue
			}
			resp := append([]byte{0x01}, b[1:5]...)
			resp = binary.BigEndian.AppendUint32(resp, uint32(p.httpPort))
			resp = append(resp, "local/"+hash+".narinfo"...)
			p.udp.WriteToUDPAddrPort(resp, from)
		}
	}
}

func (p *fakePeer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch path := r.URL.Path; {
	case p.quiet.Load():
		http.NotFound(w, r)
	case path == "/local/summary":
		// A whole filter of 64 bits, all set: "I may hold everything". A
		// poll for a newer generation waits (and never gets one).
		if r.URL.Query().Has("epoch") {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Second):
			}
		}
		hdr := make([]byte, 40)
		copy(hdr, "PXIX")
		hdr[4], hdr[5], hdr[6] = 1, 0, 1 // version, whole filter, one probe
		binary.BigEndian.PutUint64(hdr[8:], 0xbad)
		binary.BigEndian.PutUint64(hdr[16:], 1)
		binary.BigEndian.PutUint64(hdr[24:], 64)
		binary.BigEndian.PutUint32(hdr[36:], 1)
		w.Header().Set("Content-Type", "application/vnd.peerix.index")
		w.Write(append(hdr, bytes.Repeat([]byte{0xff}, 8)...))
	case strings.HasPrefix(path, "/local/") && strings.HasSuffix(path, ".narinfo"):
		p.narInfos.Add(1)
		ni := p.narInfo(strings.TrimSuffix(strings.TrimPrefix(path, "/local/"), ".narinfo"))
		if ni == "" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, ni)
	case strings.HasPrefix(path, "/local/") && strings.HasSuffix(path, ".closure"):
		p.closures.Add(1)
		answer := ""
		if p.closure != nil {
			answer = p.closure(strings.TrimSuffix(strings.TrimPrefix(path, "/local/"), ".closure"))
		}
		if answer == "" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, answer)
	case strings.HasPrefix(path, "/nar/") || strings.HasPrefix(path, "/local/nar/"):
		p.nars.Add(1)
		if p.nar == nil {
			http.NotFound(w, r)
			return
		}
		p.nar(w, r)
	default:
		http.NotFound(w, r)
	}
}

// waitKnown waits until d follows the fake peer's summary.
func (p *fakePeer) waitKnown(t testing.TB, d *peerixProc) {
	t.Helper()
	waitFollows(t, d, p.host)
}

// waitFollows waits until the LAN daemon d follows the summary of the
// peer on host h (it logs so when it hears the peer's first beacon).
func waitFollows(t testing.TB, d *peerixProc, h *nsHost) {
	t.Helper()
	want := "LAN peer speaks summaries"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		sc := bufio.NewScanner(strings.NewReader(d.log.String()))
		for sc.Scan() {
			if strings.Contains(sc.Text(), want) && strings.Contains(sc.Text(), h.addr.String()) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never followed the peer on %s", d.label, h.label)
		}
	}
}

// fakeNarInfo is a well-formed narinfo for path with the given NarHash
// (Nix base-32) and size, unsigned.
func fakeNarInfo(path, narHash string, size int64) string {
	return fmt.Sprintf("StorePath: %s\nURL: nar/%s-%s.nar\nCompression: none\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
		path, hashPart(path), narHash, narHash, size)
}
