package e2e

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// BenchmarkLookups measures what the issue "lookups that know" asks, on
// the LAN of TestLANLookups (lookupWorld): the upstream U (nginx, a static
// binary cache at priority 40, like cache.nixos.org), the user's machine B
// whose Nix has `peerix serve --mode lan` in front of U, and a peer A
// running peerix. The real Nix on B realises the 202-path closure (one
// realise per Nix invocation, into a fresh store, with a fresh XDG cache;
// every path checked byte-exact). Nix keeps its default settings but for
// the substituters and their key, so it asks for a missing narinfo once
// per invocation; BENCH_NEGATIVE_TTL0=1 sets narinfo-cache-negative-ttl 0
// as TestLANLookups does, and Nix asks again each time it wants one. Each
// comparison runs interleaved rounds
// (BENCH_ROUNDS, default 7), starting each round with the next of its
// arms, and reports the medians and their ratios. Every peerix round starts a fresh
// daemon on B (no lookup cache, no reputation): what a first lookup of a
// closure costs, not a repeated one.
//
//	go test ./test/e2e -run '^$' -bench BenchmarkLookups -benchtime 1x -timeout 60m
//
// Sub-benchmarks, in order:
//   - peers-hold-nothing: peerix in front of U, A empty, vs U alone, and
//     an empty cache (nginx) in front of U: what any substituter in front
//     costs Nix;
//   - peer-holds-everything: A holds the closure (signed as the upstream
//     would have), peerix in front of U vs U alone (a static cache on the
//     same LAN);
//   - large-path: the real Nix realises the 256 MiB path from A through
//     B's peerix (a fresh daemon, which spools and verifies the NAR before
//     Nix gets a byte, and a daemon to which A is proven, which streams it
//     through as it is verified) vs from U alone, a static cache on the
//     same LAN: the LAN transfer row as the user lives with it;
//   - upstream-100mbit: the same with U's link shaped to 100 Mbit/s (tbf;
//     the kernel has no netem, so no added latency), for the closure and
//     for a 256 MiB path;
//   - lying-peer: A holds everything and the fakePeer of TestLANLookups
//     lies in every narinfo, vs the same without it;
//   - large-nar: a 256 MiB NAR through B's peerix from A (spooled and
//     verified before the first byte; and, from a proven holder, streamed
//     as it arrives) vs straight from A's /local: time to first byte and
//     total.
func BenchmarkLookups(b *testing.B) {
	rounds := 7
	if s := os.Getenv("BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("BENCH_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	big := buildBenchPaths(b, "big")[0]
	w := newLookupWorld(b, "L")
	// Nix as users run it: a miss is asked once per invocation.
	// BENCH_NEGATIVE_TTL0=1: again each time Nix wants it, as the tests do.
	w.nixDefaults = os.Getenv("BENCH_NEGATIVE_TTL0") == ""
	bigWant := closureNarHashes(b, "auto", big)

	// freshB starts a fresh daemon on B and waits until it follows A's
	// summary (and, given, other hosts'); then a moment for the first
	// whole summaries to arrive. It is stopped when the round ends.
	freshB := func(b *testing.B, also ...*nsHost) *peerixProc {
		b.Helper()
		d := w.daemonB(b)
		for _, h := range append([]*nsHost{w.A}, also...) {
			waitFollows(b, d, h)
		}
		time.Sleep(500 * time.Millisecond)
		return d
	}
	// throughPeerix realises the closure on B with a fresh peerix in
	// front of U, and logs what peerix's handlers took (its /metrics).
	throughPeerix := func(b *testing.B, what string) time.Duration {
		d := freshB(b)
		defer stopProc(b, d)
		a0, b0 := procCPU(b, w.daemonA), procCPU(b, d)
		u0, n0 := w.upstreamLines(b), w.upstreamRequests(b, "")
		took := w.realise(b, what, d.url, w.upstream)
		logHandlerTime(b, d, took, procCPU(b, w.daemonA)-a0, procCPU(b, d)-b0)
		b.Logf("  the upstream got %d requests, %d of them from Nix", w.upstreamLines(b)-u0, w.upstreamRequests(b, "")-n0)
		return took
	}
	upstreamAlone := func(b *testing.B, what string) time.Duration {
		return w.realise(b, what, w.upstream)
	}

	b.Run("peers-hold-nothing", func(b *testing.B) {
		// A third arm: what any substituter in front costs Nix. An nginx
		// on B serving an empty cache at peerix's priority answers every
		// narinfo 404 at once, as peerix does here.
		empty := b.TempDir()
		if err := os.WriteFile(filepath.Join(empty, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		null, nullLog := startUpstream(b, w.B, empty)
		nullRequests := func() int {
			b, _ := os.ReadFile(nullLog)
			return strings.Count(string(b), ".narinfo")
		}
		arms := interleaveN(rounds,
			func(i int) time.Duration {
				return throughPeerix(b, fmt.Sprintf("round %d, peerix in front, peers hold nothing", i))
			},
			func(i int) time.Duration { return upstreamAlone(b, fmt.Sprintf("round %d, upstream alone", i)) },
			func(i int) time.Duration {
				n := nullRequests()
				took := w.realise(b, fmt.Sprintf("round %d, an empty cache (nginx on B) in front", i), null, w.upstream)
				b.Logf("  the empty cache got %d narinfo requests", nullRequests()-n)
				return took
			})
		px, up, nl := arms[0], arms[1], arms[2]
		reportPair(b, "peerix", px, "upstream", up, 1.10)
		reportPair(b, "empty-cache", nl, "upstream", up, 0)
		reportPair(b, "peerix", px, "empty-cache", nl, 0)
	})

	filled := false
	fill := func(b *testing.B) {
		b.Helper()
		if filled {
			return
		}
		d := w.daemonB(b)
		w.fillA(b, d)
		stopProc(b, d)
		filled = true
	}
	b.Run("peer-holds-everything", func(b *testing.B) {
		fill(b)
		px, up := interleave(rounds,
			func(i int) time.Duration {
				return throughPeerix(b, fmt.Sprintf("round %d, peerix in front, A holds the closure", i))
			},
			func(i int) time.Duration {
				return upstreamAlone(b, fmt.Sprintf("round %d, the upstream as a static cache on the LAN", i))
			})
		reportPair(b, "peerix", px, "static", up, 1.2)
		if os.Getenv("BENCH_DIRECT_A") != "" {
			da, st := interleave(rounds,
				func(i int) time.Duration {
					return w.realise(b, fmt.Sprintf("round %d, A's /local as the only substituter", i), w.daemonA.hostURL+"/local")
				},
				func(i int) time.Duration {
					return upstreamAlone(b, fmt.Sprintf("round %d, the upstream as a static cache on the LAN", i))
				})
			reportPair(b, "A-local", da, "static", st, 0)
		}
		// With BENCH_PPROF_DIR: CPU profiles of B's and A's daemons over
		// more realises (B's daemon warm after the first).
		if os.Getenv("BENCH_PPROF_DIR") != "" {
			d := freshB(b)
			defer stopProc(b, d)
			profileWhile(b, "lookups-peer-holds-everything", []*peerixProc{d, w.daemonA}, func() {
				w.realise(b, "profiled round, peerix in front, A holds the closure", d.url, w.upstream)
			})
		}
	})

	// bigEverywhere puts the 256 MiB path in the upstream's cache and on A
	// (signed as the upstream, so A shares it and B's verifier vouches for
	// it).
	bigPlaced := false
	bigEverywhere := func(b *testing.B) {
		b.Helper()
		if bigPlaced {
			return
		}
		staticCache(b, w.cacheDir, w.upstreamSK, big)
		w.signAsUpstream(b, big)
		putOnA(b, w, big)
		bigPlaced = true
	}
	realiseBig := func(b *testing.B, what string, substituters ...string) time.Duration {
		return realiseOn(b, w.B, what, w.upKey, bigWant, []string{big}, substituters)
	}
	// bigFreshVsUpstream realises the 256 MiB path through a fresh
	// daemon on B in front of U, and from U alone, interleaved; where
	// tells the rounds apart in the log.
	bigFreshVsUpstream := func(b *testing.B, where string) (px, up []time.Duration) {
		return interleave(max(3, rounds/2),
			func(i int) time.Duration {
				d := freshB(b)
				defer stopProc(b, d)
				return realiseBig(b, fmt.Sprintf("round %d, 256 MiB path, a fresh peerix in front, on A, %s", i, where), d.url, w.upstream)
			},
			func(i int) time.Duration {
				return realiseBig(b, fmt.Sprintf("round %d, 256 MiB path, upstream alone, %s", i, where), w.upstream)
			})
	}

	b.Run("large-path", func(b *testing.B) {
		bigEverywhere(b)
		fresh, static := bigFreshVsUpstream(b, "U a static cache on the LAN")
		reportPair(b, "fresh-peerix", fresh, "static", static, 0)
		// A daemon that has verified 4 of A's NARs (16 MiB and more): A
		// is proven to it, and a large NAR streams through. (One daemon
		// on B at a time: they share its port.)
		d := freshB(b)
		defer stopProc(b, d)
		url := d.url + "/" + narInfoURL(b, d.client, d.url+"/"+hashPart(big)+".narinfo", "nar/lan/")
		for range 4 {
			if n, _, err := fetchNAR(d.client, url); err != nil {
				b.Fatalf("warming B's daemon with %s: %d bytes, %v", url, n, err)
			}
		}
		proven, static := interleave(max(3, rounds/2),
			func(i int) time.Duration {
				return realiseBig(b, fmt.Sprintf("round %d, 256 MiB path, peerix in front, A proven", i), d.url, w.upstream)
			},
			func(i int) time.Duration {
				return realiseBig(b, fmt.Sprintf("round %d, 256 MiB path, the upstream as a static cache on the LAN", i), w.upstream)
			})
		reportPair(b, "proven-peerix", proven, "static-2", static, 0)
	})

	b.Run("upstream-100mbit", func(b *testing.B) {
		fill(b)
		bigEverywhere(b)
		nsRun(b, w.U.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst", "256kb", "latency", "100ms")
		defer nsRun(b, w.U.ns, "tc", "qdisc", "del", "dev", "eth0", "root")
		b.Logf("U's eth0: %s", strings.TrimSpace(nsRun(b, w.U.ns, "tc", "qdisc", "show", "dev", "eth0")))
		px, up := interleave(rounds,
			func(i int) time.Duration {
				return throughPeerix(b, fmt.Sprintf("round %d, peerix in front, A holds the closure, U at 100 Mbit/s", i))
			},
			func(i int) time.Duration {
				return upstreamAlone(b, fmt.Sprintf("round %d, upstream alone at 100 Mbit/s", i))
			})
		reportPair(b, "peerix", px, "upstream", up, 0)
		px, up = bigFreshVsUpstream(b, "U at 100 Mbit/s")
		reportPair(b, "256MiB-peerix", px, "256MiB-upstream", up, 0)
	})

	b.Run("lying-peer", func(b *testing.B) {
		fill(b)
		lying := w.lyingPeer()
		lying.quiet.Store(true)
		liar := startFakePeer(b, w.lan.host("L"), lying)
		with, without := interleave(rounds,
			func(i int) time.Duration {
				liar.quiet.Store(false)
				d := freshB(b, liar.host)
				defer stopProc(b, d)
				asked := liar.narInfos.Load()
				took := w.realise(b, fmt.Sprintf("round %d, A holds the closure, a liar on the LAN", i), d.url, w.upstream)
				if !logShows(d, "peer lied") {
					b.Errorf("round %d: B's peerix never caught the liar (asked %d narinfos)", i, liar.narInfos.Load()-asked)
				}
				b.Logf("round %d: the liar was asked for %d narinfos", i, liar.narInfos.Load()-asked)
				return took
			},
			func(i int) time.Duration {
				liar.quiet.Store(true)
				return throughPeerix(b, fmt.Sprintf("round %d, A holds the closure, no liar", i))
			})
		reportPair(b, "with-liar", with, "without", without, 0)
		extra := median(with) - median(without)
		b.ReportMetric(extra.Seconds(), "extra-s")
		b.Logf("the liar costs %v (median with minus median without); aim: at most 2 s: %s", extra.Round(time.Millisecond), met(extra <= 2*time.Second))
	})

	b.Run("large-nar", func(b *testing.B) {
		bigEverywhere(b)
		size, digest := narOf(b, w.aStore, big)
		hash := hashPart(big)
		bc := w.B.httpClient()
		direct := w.daemonA.hostURL + "/local/" + narInfoURL(b, bc, w.daemonA.hostURL+"/local/"+hash+".narinfo", "nar/")
		type fetch struct{ ttfb, total time.Duration }
		get := func(c *http.Client, url string) fetch {
			start := time.Now()
			n, ttfb, err := fetchNAR(c, url)
			total := time.Since(start)
			if err != nil || n != size {
				b.Fatalf("GET %s: %d bytes, %v; want %d", url, n, err, size)
			}
			return fetch{ttfb, total}
		}
		d := freshB(b)
		checkNAR(b, d.client, d.url+"/"+narInfoURL(b, d.client, d.url+"/"+hash+".narinfo", "nar/lan/"), size, digest)
		stopProc(b, d)
		// From a holder B's daemon has no record of: spooled whole and
		// verified before the first byte leaves.
		var spooled, fromA []fetch
		interleave(rounds,
			func(i int) time.Duration {
				d := freshB(b)
				defer stopProc(b, d)
				url := d.url + "/" + narInfoURL(b, d.client, d.url+"/"+hash+".narinfo", "nar/lan/")
				f := get(d.client, url)
				spooled = append(spooled, f)
				b.Logf("round %d: 256 MiB NAR through B's peerix, unproven holder: first byte %v, total %v", i, f.ttfb.Round(time.Millisecond), f.total.Round(time.Millisecond))
				return f.total
			},
			func(i int) time.Duration {
				f := get(bc, direct)
				fromA = append(fromA, f)
				b.Logf("round %d: 256 MiB NAR from A's /local: first byte %v, total %v", i, f.ttfb.Round(time.Millisecond), f.total.Round(time.Millisecond))
				return f.total
			})
		// From a proven holder (4 verified NARs, 16 MiB, no lie): its
		// bytes of a large NAR reach the client as they arrive.
		d = freshB(b)
		defer stopProc(b, d)
		url := d.url + "/" + narInfoURL(b, d.client, d.url+"/"+hash+".narinfo", "nar/lan/")
		for range 4 {
			get(d.client, url)
		}
		var through, fromA2 []fetch
		interleave(rounds,
			func(i int) time.Duration {
				f := get(d.client, url)
				through = append(through, f)
				b.Logf("round %d: 256 MiB NAR through B's peerix, proven holder: first byte %v, total %v", i, f.ttfb.Round(time.Millisecond), f.total.Round(time.Millisecond))
				return f.total
			},
			func(i int) time.Duration {
				f := get(bc, direct)
				fromA2 = append(fromA2, f)
				return f.total
			})
		ttfbs := func(fs []fetch) []time.Duration {
			var out []time.Duration
			for _, f := range fs {
				out = append(out, f.ttfb)
			}
			return out
		}
		totals := func(fs []fetch) []time.Duration {
			var out []time.Duration
			for _, f := range fs {
				out = append(out, f.total)
			}
			return out
		}
		fromA = append(fromA, fromA2...)
		for _, m := range []struct {
			name string
			fs   []fetch
		}{{"spooled", spooled}, {"cut-through", through}, {"direct", fromA}} {
			t1, t2 := median(ttfbs(m.fs)), median(totals(m.fs))
			b.ReportMetric(float64(t1.Microseconds())/1e3, m.name+"-first-byte-ms")
			b.ReportMetric(t2.Seconds(), m.name+"-total-s")
			b.Logf("256 MiB NAR, %s: median first byte %v, median total %v (%.0f MB/s); first bytes %v, totals %v", m.name,
				t1.Round(time.Millisecond), t2.Round(time.Millisecond), float64(size)/t2.Seconds()/1e6, rounded(ttfbs(m.fs)), rounded(totals(m.fs)))
		}
		b.ReportMetric(float64(median(totals(spooled)))/float64(median(totals(fromA))), "spooled/direct")
		b.ReportMetric(float64(median(totals(through)))/float64(median(totals(fromA))), "cut-through/direct")
	})
}

// putOnA copies path into A's store (it must carry the upstream's
// signature already, for A's filter) and waits until A shares it.
func putOnA(b testing.TB, w *lookupWorld, path string) {
	b.Helper()
	if err := nixtest.Copy(b.Context(), w.aStore, path); err != nil {
		b.Fatal(err)
	}
	bc := w.B.httpClient()
	waitFor(b, "A shares "+path, 30*time.Second, func() (bool, string) {
		resp, _, err := clientDo(bc, http.MethodGet, w.daemonA.hostURL+"/local/"+hashPart(path)+".narinfo")
		if err != nil {
			return false, err.Error()
		}
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// stopProc stops a daemon with SIGTERM (the next one on its host needs its
// ports).
func stopProc(t testing.TB, p *peerixProc) {
	t.Helper()
	if _, err := p.stop(syscall.SIGTERM, stopTimeout); err != nil {
		t.Fatalf("stopping %s: %v", p, err)
	}
}

// interleave runs rounds pairs of x and y, x first in even rounds and y
// first in odd ones, and returns their durations.
func interleave(rounds int, x, y func(round int) time.Duration) (xs, ys []time.Duration) {
	d := interleaveN(rounds, x, y)
	return d[0], d[1]
}

// interleaveN runs each of arms once a round, for rounds rounds, starting
// each round with the next arm, and returns their durations by arm.
func interleaveN(rounds int, arms ...func(round int) time.Duration) [][]time.Duration {
	out := make([][]time.Duration, len(arms))
	for i := range rounds {
		for k := range arms {
			a := (i + k) % len(arms)
			out[a] = append(out[a], arms[a](i))
		}
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// reportPair reports the medians of two sets of timings (seconds) and their
// ratio, and logs them with every sample; aim > 0 is the ratio aimed at.
func reportPair(b *testing.B, xName string, xs []time.Duration, yName string, ys []time.Duration, aim float64) {
	b.Helper()
	mx, my := median(xs), median(ys)
	ratio := float64(mx) / float64(my)
	b.ReportMetric(mx.Seconds(), xName+"-s")
	b.ReportMetric(my.Seconds(), yName+"-s")
	b.ReportMetric(ratio, xName+"/"+yName)
	verdict := ""
	if aim > 0 {
		verdict = fmt.Sprintf("; aim at most %.2fx: %s", aim, met(ratio <= aim))
	}
	b.Logf("%s: median %v %v; %s: median %v %v; ratio of medians %.2fx%s", xName, mx.Round(time.Millisecond), rounded(xs),
		yName, my.Round(time.Millisecond), rounded(ys), ratio, verdict)
}

// logHandlerTime logs how long d's handlers took for Nix's requests (from
// its /metrics) against the whole realise: the rest is Nix, the upstream
// and the network.
func logHandlerTime(b *testing.B, d *peerixProc, realise, cpuA, cpuB time.Duration) {
	b.Helper()
	resp, body := clientGet(b, d.client, http.MethodGet, d.url+"/metrics")
	if resp.StatusCode != http.StatusOK {
		b.Errorf("GET /metrics of %s: %s", d.label, resp.Status)
		return
	}
	var parts []string
	for _, route := range []string{"remote-narinfo", "remote-nar", "cache-info"} {
		sum, count := metricValue(string(body), `peerix_request_duration_seconds_sum{route="`+route+`"}`),
			metricValue(string(body), `peerix_request_duration_seconds_count{route="`+route+`"}`)
		if count == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %.0f requests, %v in all (mean %v)", route, count,
			time.Duration(sum*float64(time.Second)).Round(time.Millisecond),
			time.Duration(sum/count*float64(time.Second)).Round(time.Microsecond)))
	}
	// How the narinfo answers' times spread (cumulative histogram buckets).
	var spread []string
	for _, le := range []string{"0.001", "0.005", "0.01", "0.05", "0.1", "0.25"} {
		n := metricValue(string(body), `peerix_request_duration_seconds_bucket{route="remote-narinfo",le="`+le+`"}`)
		spread = append(spread, fmt.Sprintf("<=%ss: %.0f", le, n))
	}
	parts = append(parts, "narinfo answers "+strings.Join(spread, " "))
	hits := metricValue(string(body), `peerix_cache_hits_total{source="peers"}`)
	misses := metricValue(string(body), `peerix_cache_misses_total{source="peers"}`)
	b.Logf("  B's peerix handlers (realise took %v): %s; narinfo hits %.0f, misses %.0f; CPU time of B's peerix %v, of A's %v",
		realise.Round(time.Millisecond), cmp.Or(strings.Join(parts, "; "), "no requests"), hits, misses,
		cpuB.Round(time.Millisecond), cpuA.Round(time.Millisecond))
}

// procCPU returns the CPU time (user and system) process p has used so
// far, from /proc/<pid>/stat.
func procCPU(t testing.TB, p *peerixProc) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("CPU time of %s: %v", p, err)
	}
	// The fields after the command name (in parentheses): state is the
	// 3rd field of the line, utime and stime the 14th and 15th.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("CPU time of %s: /proc/%d/stat: %q", p, p.cmd.Process.Pid, b)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is the kernel's USER_HZ, in which /proc reports CPU times
// (100 on Linux everywhere but a few exotic builds).
const clockTicks = 100

// metricValue returns the value of the Prometheus sample named exactly
// series (name and labels) in a text exposition, 0 if there is none.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}
