package e2e

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// Benchmarks of peerix between simulated hosts, on the topologies the LAN
// and NAT tests stand on (newLAN, newNATNet), with the same peerix processes
// (startPeerix). They need what those tests need (root, Nix, iproute2,
// iptables) and run only when asked:
//
//	go test ./test/e2e -run '^$' -bench BenchmarkLAN -benchtime 3x
//	go test ./test/e2e -run '^$' -bench BenchmarkP2P -benchtime 3x
//
// NAR sub-benchmarks stream a 256 MiB path (testdata/bench.nix, salt
// BENCH_SALT or peerix-bench-1, shared with scripts/bench-local.sh) and
// report MB/s (10^6 bytes) and the mean time to the first byte; narinfo
// sub-benchmarks report the time per lookup. Every machine here is a
// network namespace on one box, so the numbers show peerix's own cost, and
// everything shares the same cores.

// BenchmarkLAN: two hosts on a simulated LAN, both running
// `peerix serve --mode lan --filter none`; A holds the paths, B starts
// empty and trusts A's key. Everything is measured from B, through B's
// peerix, as B's Nix sees it, with A's own figures for comparison. (The
// processes' cleanup fails the benchmark if one of them died.)
func BenchmarkLAN(b *testing.B) {
	paths := buildBenchPaths(b, "small", "big")
	small, big := paths[0], paths[1]
	hosts := []string{"A", "B"}
	if baselineBinary(b) != "" {
		hosts = append(hosts, "C") // B's twin, with the baseline build
	}
	lan := newLAN(b, hosts...)
	A, B := lan.host("A"), lan.host("B")
	key := keygen(b, "bench-lan")
	aStore := benchStore(b, "a-store", small, big)
	size, digest := narOf(b, aStore, big)
	da := startPeerix(b, lanDaemon(b, A, aStore, "--filter", "none", "--signing-key-file", key.secretFile))
	db := startPeerix(b, lanDaemon(b, B, benchStore(b, "b-store"), "--filter", "none", "--trusted-public-key", key.public))

	b.Run("narinfo-hit", func(b *testing.B) {
		// The first ask broadcasts, A answers, B fetches A's narinfo; the
		// ones after it come from B's lookup cache.
		url := db.url + "/" + hashPart(small) + ".narinfo"
		start := time.Now()
		getOK(b, db.client, url)
		firstAsk := time.Since(start)
		for b.Loop() {
			getOK(b, db.client, url)
		}
		// After the loop: its start deletes metrics reported before it.
		b.ReportMetric(float64(firstAsk.Microseconds())/1e3, "first-ask-ms")
	})
	b.Run("narinfo-miss", func(b *testing.B) { benchMiss(b, db) })

	bigHash := hashPart(big)
	viaB := db.url + "/" + narInfoURL(b, db.client, db.url+"/"+bigHash+".narinfo", "nar/lan/")
	onA := narInfoURL(b, da.client, da.url+"/local/"+bigHash+".narinfo", "nar/")
	b.Run("nar-via-B", func(b *testing.B) {
		checkNAR(b, db.client, viaB, size, digest)
		benchNAR(b, db.client, viaB, size)
	})
	b.Run("nar-vs-local", func(b *testing.B) {
		var dc *peerixProc
		if base := baselineBinary(b); base != "" {
			opts := lanDaemon(b, lan.host("C"), benchStore(b, "c-store"), "--filter", "none", "--trusted-public-key", key.public)
			opts.bin = base
			dc = startPeerix(b, opts)
		}
		benchLANVsLocal(b, da, db, dc, bigHash, size, digest, da.url+"/local/"+onA)
	})
	b.Run("nar-from-A-over-LAN", func(b *testing.B) { benchNAR(b, db.client, da.hostURL+"/"+onA, size) })
	b.Run("nar-on-A", func(b *testing.B) { benchNAR(b, da.client, da.url+"/local/"+onA, size) })
	b.Run("nix-store-r-on-B", func(b *testing.B) {
		// The real Nix on B, signatures required, into a fresh store each time.
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			store := benchStore(b, "b-nix")
			b.StartTimer()
			r := B.nix(b, "nix-store", "--store", store, "-r", big,
				"--option", "substituters", db.url,
				"--option", "trusted-public-keys", key.public,
				"--option", "require-sigs", "true")
			if r.err != nil {
				b.Fatalf("Nix on B could not substitute %s through B's peerix:\n%v", big, r)
			}
		}
	})
}

// BenchmarkP2P: the simulated internet of TestP2PAcrossNAT, hosts A and B
// each behind its own masquerading router, the tracker with its relay on
// the internet. A holds the 256 MiB path, B fetches it through B's peerix:
// first directly after hole punching, then, with all traffic between the
// routers dropped and B's peerix restarted, through the relay. Which way
// the bytes went is checked on B's router's counters.
func BenchmarkP2P(b *testing.B) {
	big := buildBenchPaths(b, "big")[0]
	labels := []string{"A", "B"}
	base := baselineBinary(b)
	if base != "" {
		labels = append(labels, "C") // B's twin, with the baseline build
	}
	n := newNATNet(b, labels...)
	A, B := n.hosts["A"], n.hosts["B"]
	tr := startPeerix(b, trackerServer(b, n.tracker, 30*time.Second))
	key := keygen(b, "bench-p2p")
	aStore := benchStore(b, "a-store", big)
	size, digest := narOf(b, aStore, big)
	da := startPeerix(b, p2pDaemon(A, tr.hostURL, aStore, filepath.Join(b.TempDir(), "a-state"),
		"--signing-key-file", key.secretFile, "--verbose"))
	db := startPeerix(b, p2pDaemon(B, tr.hostURL, benchStore(b, "b-store"), filepath.Join(b.TempDir(), "b-state"),
		"--trusted-public-key", key.public, "--verbose"))
	waitHolder(b, tr, "A", da.peerID, hashPart(big))
	waitCircuit(b, tr, "A", da.peerID)

	b.Run("narinfo-miss", func(b *testing.B) { benchMiss(b, db) })
	b.Run("nar-vs-raw", func(b *testing.B) {
		raw := startRawP2P(b, A, rawP2PPort, size)
		n.openRawPort(b, "A", rawP2PPort)
		var dc *peerixProc
		if base != "" {
			opts := p2pDaemon(n.hosts["C"], tr.hostURL, benchStore(b, "c-store"), filepath.Join(b.TempDir(), "c-state"),
				"--trusted-public-key", key.public, "--verbose")
			opts.bin = base
			dc = startPeerix(b, opts)
		}
		benchP2PVsRaw(b, n, raw, da, db, dc, big, size, digest)
	})
	b.Run("nar-direct", func(b *testing.B) {
		benchP2PNAR(b, n, da, db, big, size, digest, "direct")
	})
	b.Run("nar-relayed", func(b *testing.B) {
		n.cutDirect(b, "A", "B")
		// Fresh connections: the ones B has may be direct.
		restarted, _ := db.restart(b)
		benchP2PNAR(b, n, da, restarted, big, size, digest, "relayed")
	})
}

// benchLANVsLocal measures the NAR through B's peerix (db; and C's, dc,
// of the baseline build, if not nil) against the same NAR read on A from
// A's local serving (localURL), interleaved: warm (A proven to B: bytes
// stream through as they arrive), then cold (a fresh daemon each round:
// verified whole first). It leaves B's daemon running, restarted.
func benchLANVsLocal(b *testing.B, da, db, dc *peerixProc, hash string, size int64, digest, localURL string) {
	rounds := benchRounds(5)
	daemons := []*peerixProc{db}
	if dc != nil {
		daemons = append(daemons, dc)
	}
	viaURL := func(d *peerixProc) string {
		return d.url + "/" + narInfoURL(b, d.client, d.url+"/"+hash+".narinfo", "nar/lan/")
	}
	// Warm: enough verified NARs from A (swarm's provenNARs) that A is
	// proven.
	for _, d := range daemons {
		u := viaURL(d)
		for range 5 {
			checkNAR(b, d.client, u, size, digest)
		}
	}
	local := func(int) time.Duration { return timeNAR(b, da.client, localURL, size) }
	warm := func(d *peerixProc) func(int) time.Duration {
		u := viaURL(d)
		return func(int) time.Duration { return timeNAR(b, d.client, u, size) }
	}
	arms := []func(int) time.Duration{local, warm(db)}
	if dc != nil {
		arms = append(arms, warm(dc))
	}
	ds := interleaveN(rounds, arms...)
	lr := reportRate(b, "local-on-A", size, ds[0])
	wr := reportRate(b, "warm-via-B", size, ds[1])
	reportRatio(b, "warm-x-local", wr, lr, 0.6)
	if dc != nil {
		br := reportRate(b, "warm-via-C-baseline", size, ds[2])
		reportRatio(b, "warm-baseline-x-local", br, lr, 0)
		reportRatio(b, "warm-x-baseline", wr, br, 0)
	}
	profileWhile(b, "lan-warm", []*peerixProc{da, db}, func() { arms[1](0) })

	// Cold: a fresh daemon each round; the narinfo lookup is not timed.
	cold := func(p **peerixProc) func(int) time.Duration {
		return func(int) time.Duration {
			d, _ := (*p).restart(b)
			*p = d
			u := viaURL(d)
			return timeNAR(b, d.client, u, size)
		}
	}
	arms = []func(int) time.Duration{local, cold(&db)}
	if dc != nil {
		arms = append(arms, cold(&dc))
	}
	ds = interleaveN(rounds, arms...)
	lr = reportRate(b, "local-on-A-2", size, ds[0])
	cr := reportRate(b, "cold-via-B", size, ds[1])
	reportRatio(b, "cold-x-local", cr, lr, 0.6)
	if dc != nil {
		br := reportRate(b, "cold-via-C-baseline", size, ds[2])
		reportRatio(b, "cold-baseline-x-local", br, lr, 0)
		reportRatio(b, "cold-x-baseline", cr, br, 0)
	}
	// Profiled: a fresh daemon's first three NARs (a restart would end
	// the profile; a fourth would make A proven).
	db, _ = db.restart(b)
	u, fetched := viaURL(db), 0
	profileWhile(b, "lan-cold", []*peerixProc{da, db}, func() {
		if fetched < 3 {
			timeNAR(b, db.client, u, size)
		} else {
			time.Sleep(100 * time.Millisecond)
		}
		fetched++
	})
	reportMemory(b, "B", db)
}

// rawP2PPort is the port of bare libp2p (rawp2p serve) on A.
const rawP2PPort = 12399

// benchP2PVsRaw measures the NAR through B's peerix (db; and C's, dc, of
// the baseline build, if not nil) from A after hole punching, warm (A
// proven: bytes stream through as they arrive), against bare libp2p
// streaming as many bytes from A to B over TCP and over QUIC on the same
// routers, interleaved; it reports which transport peerix's bytes took.
func benchP2PVsRaw(b *testing.B, n *natNet, raw *rawP2P, da, db, dc *peerixProc, path string, size int64, digest string) {
	rounds := benchRounds(5)
	daemons := []*peerixProc{db}
	if dc != nil {
		daemons = append(daemons, dc)
	}
	urls := map[*peerixProc]string{}
	for _, d := range daemons {
		_, ni := fetchFromPeers(b, d, path)
		urls[d] = d.url + "/" + ni["URL"]
		if got, _, err := fetchNAR(d.client, urls[d]); err != nil || got != size {
			b.Fatalf("first GET %s through %s: %d bytes, %v; want %d", urls[d], d.label, got, err, size)
		}
		if !waitDirect(b, d, da) {
			if d == db {
				b.Fatal("no direct link to measure")
			}
			b.Log("no baseline arm: its daemon did not reach A directly")
			dc = nil
			break
		}
		for range 5 { // enough verified NARs from A (swarm's provenNARs) that A is proven
			checkNAR(b, d.client, urls[d], size, digest)
		}
	}
	B, ra := n.hosts["B"], n.routers["A"].addr
	via := func(d *peerixProc) func(int) time.Duration {
		return func(int) time.Duration { return timeNAR(b, d.client, urls[d], size) }
	}
	rawArm := func(transport string) func(int) time.Duration {
		return func(int) time.Duration { return raw.get(b, B, ra.String(), transport, size) }
	}
	arms := []func(int) time.Duration{via(db), rawArm("tcp"), rawArm("quic")}
	if dc != nil {
		arms = append(arms, via(dc))
	}
	before := n.counters(b, "B")
	ds := interleaveN(rounds, arms...)
	after := n.counters(b, "B")
	udp := after.fromUDP[ra] - before.fromUDP[ra]
	tcp := after.from[ra] - before.from[ra] - udp
	b.Logf("%d NARs of %d bytes through B: %d bytes came from A's router over TCP, %d over UDP (QUIC)", rounds, size, tcp, udp)
	b.ReportMetric(float64(tcp)/float64(tcp+udp), "tcp-share")
	if tcp+udp < uint64(rounds)*uint64(size) {
		b.Errorf("only %d of the %d bytes came directly from A", tcp+udp, uint64(rounds)*uint64(size))
	}
	pr := reportRate(b, "via-B", size, ds[0])
	tr := reportRate(b, "raw-tcp", size, ds[1])
	qr := reportRate(b, "raw-quic", size, ds[2])
	reportRatio(b, "x-raw-tcp", pr, tr, 0)
	reportRatio(b, "x-raw-quic", pr, qr, 0)
	b.Logf("via B: %.0f MB/s; aim at least 400 MB/s: %s", pr, met(pr >= 400))
	if dc != nil {
		br := reportRate(b, "via-C-baseline", size, ds[3])
		reportRatio(b, "x-baseline", pr, br, 0)
		reportRatio(b, "baseline-x-raw-quic", br, qr, 0)
	}
	profileWhile(b, "p2p-direct", []*peerixProc{da, db}, func() { arms[0](0) })
	reportMemory(b, "A", da)
	reportMemory(b, "B", db)
}

// waitDirect waits up to 30 s until d has a direct connection to peer p,
// and reports whether it came.
func waitDirect(b *testing.B, d, p *peerixProc) bool {
	start := time.Now()
	last := ""
	for time.Since(start) < 30*time.Second {
		ps, err := getAPIPeers(d)
		last = p.label + " not in " + d.label + "'s /api/peers"
		if err != nil {
			last = err.Error()
		}
		for _, q := range ps {
			if q.PeerID == p.peerID {
				if q.Connected && q.Direct {
					b.Logf("%s reached %s directly %v after its first NAR", d.label, p.label, time.Since(start).Round(time.Millisecond))
					return true
				}
				last = fmt.Sprintf("%+v", q)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Logf("%s has no direct link to %s after 30 s; last: %s", d.label, p.label, last)
	return false
}

// benchP2PNAR fetches path's NAR from A through B's peerix once (which
// makes the connection and, if it can, the hole punch), waits until B's
// link to A is `via` ("direct" or "relayed"), checks the NAR, and then
// times the fetches. The bytes into B's LAN must have come that way: from
// A's router (direct) or from the tracker's relay. It also reports both
// daemons' memory.
func benchP2PNAR(b *testing.B, n *natNet, da, db *peerixProc, path string, size int64, digest, via string) {
	_, ni := fetchFromPeers(b, db, path)
	url := db.url + "/" + ni["URL"]
	if got, _, err := fetchNAR(db.client, url); err != nil || got != size {
		b.Fatalf("first GET %s through B: %d bytes, %v; want %d", url, got, err, size)
	}
	waitFor(b, "B's link to A "+via, 10*time.Second, func() (bool, string) {
		ps, err := getAPIPeers(db)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if p.PeerID != da.peerID {
				continue
			}
			if via == "relayed" {
				return p.Connected && p.Relayed && !p.Direct, fmt.Sprintf("%+v", p)
			}
			return p.Connected && p.Direct, fmt.Sprintf("%+v", p)
		}
		return false, "A not in B's /api/peers"
	})
	checkNAR(b, db.client, url, size, digest)

	before := n.counters(b, "B")
	fetches := benchNAR(b, db.client, url, size)
	after := n.counters(b, "B")
	ra, relay := n.routers["A"].addr, n.tracker.addr
	direct, relayed := after.from[ra]-before.from[ra], after.from[relay]-before.from[relay]
	b.Logf("%d fetches of %d bytes: %d bytes into B's LAN from A's router (direct), %d from the tracker (relayed)", fetches, size, direct, relayed)
	want, got := uint64(fetches)*uint64(size), direct
	if via == "relayed" {
		got = relayed
	}
	if got < want {
		b.Errorf("only %d of the %d bytes came %s (direct %d, relayed %d)", got, want, via, direct, relayed)
	}
	reportMemory(b, "A", da)
	reportMemory(b, "B", db)
}

// buildBenchPaths builds attributes of testdata/bench.nix and returns their
// store paths.
func buildBenchPaths(b *testing.B, attrs ...string) []string {
	b.Helper()
	if skipReason != "" {
		b.Skip(skipReason)
	}
	expr, err := filepath.Abs(filepath.Join("testdata", "bench.nix"))
	if err != nil {
		b.Fatal(err)
	}
	args := []string{expr, "--no-out-link", "--argstr", "salt", cmp.Or(os.Getenv("BENCH_SALT"), "peerix-bench-1")}
	for _, a := range attrs {
		args = append(args, "-A", a)
	}
	paths := strings.Fields(string(nixtest.Must(b, "nix-build", args...)))
	if len(paths) != len(attrs) {
		b.Fatalf("nix-build printed %q; want %d store paths", paths, len(attrs))
	}
	return paths
}

// benchStore makes a chroot store holding paths, or an empty one. It is
// removed at the end although Nix leaves it read-only.
func benchStore(b *testing.B, name string, paths ...string) string {
	b.Helper()
	if len(paths) == 0 {
		return nixtest.InitStore(b, name)
	}
	dir := nixtest.TempStore(b, name)
	nixtest.Must(b, "nix", append([]string{"copy", "--no-check-sigs", "--to", dir}, paths...)...)
	return dir
}

// narOf returns the size and hex SHA-256 of path's NAR in store.
func narOf(b *testing.B, store, path string) (int64, string) {
	b.Helper()
	digest, size, err := dumpDigest(context.Background(), store, path)
	if err != nil {
		b.Fatal(err)
	}
	return size, digest
}

// narInfoURL GETs a narinfo and returns its URL, which must start with
// prefix.
func narInfoURL(b *testing.B, c *http.Client, narinfo, prefix string) string {
	b.Helper()
	ni := parseNarInfo(b, getOK(b, c, narinfo))
	if !strings.HasPrefix(ni["URL"], prefix) {
		b.Fatalf("%s names URL %q, want %s...", narinfo, ni["URL"], prefix)
	}
	return ni["URL"]
}

// getOK GETs url with c and wants 200; it returns the body.
func getOK(b *testing.B, c *http.Client, url string) []byte {
	b.Helper()
	resp, body := clientGet(b, c, http.MethodGet, url)
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %s\n%.300s", url, resp.Status, body)
	}
	return body
}

// benchMiss times narinfo lookups of hashes nobody holds, through d.
func benchMiss(b *testing.B, d *peerixProc) {
	for b.Loop() {
		url := d.url + "/" + randomNix32(32) + ".narinfo"
		if resp, body := clientGet(b, d.client, http.MethodGet, url); resp.StatusCode != http.StatusNotFound {
			b.Fatalf("GET %s (nobody has it): %s, want 404\n%.300s", url, resp.Status, body)
		}
	}
}

// checkNAR wants the NAR at url to be size bytes with SHA-256 digest.
func checkNAR(b *testing.B, c *http.Client, url string, size int64, digest string) {
	b.Helper()
	status, sum, n, err := clientDigest(c, url)
	if err != nil || status != http.StatusOK || n != size || hex.EncodeToString(sum) != digest {
		b.Fatalf("GET %s: status %d, %d bytes sha256 %x, %v; want %d bytes sha256 %s", url, status, n, sum, err, size, digest)
	}
}

// benchNAR times whole downloads of the NAR at url (size bytes, counted
// only), reports the mean time to the first byte, and returns how many
// downloads it made.
func benchNAR(b *testing.B, c *http.Client, url string, size int64) int {
	b.SetBytes(size)
	var first time.Duration
	fetches := 0
	for b.Loop() {
		n, ttfb, err := fetchNAR(c, url)
		if err != nil || n != size {
			b.Fatalf("GET %s: %d bytes, %v; want %d", url, n, err, size)
		}
		first += ttfb
		fetches++
	}
	b.ReportMetric(float64(first.Microseconds())/1e3/float64(fetches), "first-byte-ms")
	return fetches
}

// fetchNAR GETs url and reads the body to the end, without keeping it; it
// returns the body's size and the time to its first byte.
func fetchNAR(c *http.Client, url string) (int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	start := time.Now()
	var ttfb time.Duration
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotFirstResponseByte: func() { ttfb = time.Since(start) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, ttfb, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	return n, ttfb, err
}

// reportMemory reports a process's VmRSS and VmHWM (MiB) as metrics.
func reportMemory(b *testing.B, who string, p *peerixProc) {
	rss, hwm, err := p.vmMiB()
	if err != nil {
		b.Errorf("memory of %s: %v", p, err)
		return
	}
	b.ReportMetric(rss, who+"-VmRSS-MiB")
	b.ReportMetric(hwm, who+"-VmHWM-MiB")
}
