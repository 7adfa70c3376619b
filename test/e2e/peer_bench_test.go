package e2e

// Peer transfers against their limits (issue: speed at the limit), measured
// in the same run, interleaved, as medians of rounds:
//
//   - BenchmarkLAN/nar-vs-local: the 256 MiB NAR through B's peerix from A
//     over the LAN, against the same NAR served locally on A (A's
//     /local/, read on A): warm (B's daemon already verified enough of A's
//     NARs for A to be proven, so bytes stream through as they arrive) and
//     cold (a fresh daemon on B: the NAR is verified whole before Nix gets
//     a byte).
//   - BenchmarkP2P/nar-vs-raw: the same through B's peerix from A across
//     the NATs after hole punching, against bare libp2p (test/e2e/rawp2p)
//     streaming as many bytes from A to B over the same routers, once over
//     TCP and once over QUIC.
//
// With PEERIX_BASELINE_BINARY (an older build), a third host C runs a
// daemon of that build beside B's, fetching the same NAR from the same A,
// in the same rounds. BENCH_ROUNDS sets the rounds (default 5). With
// BENCH_PPROF_DIR, peerix is built with -tags pprof and each of these
// sub-benchmarks ends by taking CPU profiles of the daemons during more of
// the same transfers, into that directory (go tool pprof -top FILE).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pprofAddr is where daemons on simulated hosts serve pprof when
// BENCH_PPROF_DIR is set (each host has its own loopback).
const pprofAddr = "127.0.0.1:6060"

// benchRounds is BENCH_ROUNDS, or def.
func benchRounds(def int) int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return def
}

// timeNAR GETs the NAR at url with c, reads it whole (size bytes) and
// returns the time from the request to the last byte.
func timeNAR(b *testing.B, c *http.Client, url string, size int64) time.Duration {
	b.Helper()
	start := time.Now()
	n, _, err := fetchNAR(c, url)
	took := time.Since(start)
	if err != nil || n != size {
		b.Fatalf("GET %s: %d bytes, %v; want %d", url, n, err, size)
	}
	return took
}

// mbps is size bytes in the median of ds, in MB/s.
func mbps(size int64, ds []time.Duration) float64 {
	return float64(size) / median(ds).Seconds() / 1e6
}

// reportRate reports arm's median rate and logs every sample.
func reportRate(b *testing.B, name string, size int64, ds []time.Duration) float64 {
	r := mbps(size, ds)
	b.ReportMetric(r, name+"-MB/s")
	b.Logf("%s: %.0f MB/s (median of %v)", name, r, rounded(ds))
	return r
}

// reportRatio reports x/y of two rates as the metric name.
func reportRatio(b *testing.B, name string, x, y, aim float64) {
	b.ReportMetric(x/y, name)
	verdict := ""
	if aim > 0 {
		verdict = fmt.Sprintf(" (aim at least %.2f: %s)", aim, met(x/y >= aim))
	}
	b.Logf("%s: %.2f%s", name, x/y, verdict)
}

// profileWhile takes CPU profiles (pprofSeconds) of procs while it runs
// work over and over, if BENCH_PPROF_DIR is set; the files are
// <dir>/<name>-<label>.pprof.
func profileWhile(b *testing.B, name string, procs []*peerixProc, work func()) {
	dir := os.Getenv("BENCH_PPROF_DIR")
	if dir == "" {
		return
	}
	const pprofSeconds = 6
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, p := range procs {
		wg.Go(func() {
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, pprofSeconds)
			resp, err := p.client.Get(url)
			if err != nil {
				b.Errorf("profile of %s: %v", p.label, err)
				return
			}
			defer resp.Body.Close()
			file := filepath.Join(dir, name+"-"+p.label+".pprof")
			f, err := os.Create(file)
			if err == nil {
				_, err = io.Copy(f, resp.Body)
				f.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Errorf("profile of %s into %s: %s, %v", p.label, file, resp.Status, err)
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			b.Logf("profiles in %s/%s-*.pprof", dir, name)
			return
		default:
			work()
		}
	}
}

// pprofEnv is the environment that makes a daemon of this build serve
// pprof, when profiles are asked for.
func pprofEnv() []string {
	if os.Getenv("BENCH_PPROF_DIR") == "" {
		return nil
	}
	return []string{"PEERIX_PPROF=" + pprofAddr}
}

// baselineBinary is PEERIX_BASELINE_BINARY as an absolute path, or "".
func baselineBinary(b *testing.B) string {
	p := os.Getenv("PEERIX_BASELINE_BINARY")
	if p == "" {
		return ""
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		b.Fatal(err)
	}
	return abs
}

// rawP2P is bare libp2p between simulated hosts: rawp2p serve on one.
type rawP2P struct {
	bin  string
	id   string
	port int
}

var (
	rawP2PBuild sync.Once
	rawP2PBin   string
	rawP2PErr   error
)

// startRawP2P builds test/e2e/rawp2p and serves size bytes a stream from
// host h on port; it stops when the benchmark ends.
func startRawP2P(b *testing.B, h *nsHost, port int, size int64) *rawP2P {
	b.Helper()
	rawP2PBuild.Do(func() {
		rawP2PBin = filepath.Join(workDir, "bin", "rawp2p")
		out, err := exec.Command("go", "build", "-o", rawP2PBin, "./rawp2p").CombinedOutput()
		if err != nil {
			rawP2PErr = fmt.Errorf("go build ./rawp2p: %w\n%s", err, out)
		}
	})
	if rawP2PErr != nil {
		b.Fatal(rawP2PErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.command(ctx, rawP2PBin, "serve", "-port", strconv.Itoa(port), "-bytes", strconv.FormatInt(size, 10))
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); cmd.Wait() })
	id, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("rawp2p serve on %s: %v", h.label, err)
	}
	return &rawP2P{bin: rawP2PBin, id: strings.TrimSpace(id), port: port}
}

// get streams the bytes from the server at ip (its transport: "tcp" or
// "quic") on host h and returns the time from the stream's opening to its
// last byte.
func (r *rawP2P) get(b *testing.B, h *nsHost, ip, transport string, size int64) time.Duration {
	b.Helper()
	addr := fmt.Sprintf("/ip4/%s/tcp/%d/p2p/%s", ip, r.port, r.id)
	if transport == "quic" {
		addr = fmt.Sprintf("/ip4/%s/udp/%d/quic-v1/p2p/%s", ip, r.port, r.id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := h.command(ctx, r.bin, "get", addr).Output()
	if err != nil {
		b.Fatalf("rawp2p get %s on %s: %v", addr, h.label, err)
	}
	var n, ns int64
	if _, err := fmt.Sscan(string(out), &n, &ns); err != nil || n != size {
		b.Fatalf("rawp2p get %s: %q; want %d bytes", addr, out, size)
	}
	return time.Duration(ns)
}

// openRawPort lets the WAN reach port (TCP and UDP) of the host behind
// router label (port forwarding, as a user would set up), and keeps that
// traffic out of the routers' counters: bare libp2p measures the same
// links, not peerix's bytes.
func (n *natNet) openRawPort(b *testing.B, label string, port int) {
	b.Helper()
	r := n.routers[label]
	p := strconv.Itoa(port)
	for _, proto := range []string{"tcp", "udp"} {
		nsRun(b, r.ns, n.ipt, "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", proto, "--dport", p,
			"-j", "DNAT", "--to-destination", r.inner.addr.String())
		nsRun(b, r.ns, n.ipt, "-I", "FORWARD", "1", "-p", proto, "--dport", p, "-j", "ACCEPT")
		nsRun(b, r.ns, n.ipt, "-I", "FORWARD", "1", "-p", proto, "--sport", p, "-j", "ACCEPT")
		for _, other := range n.routers {
			if other != r {
				nsRun(b, other.ns, n.ipt, "-I", "FORWARD", "1", "-p", proto, "--sport", p, "-j", "ACCEPT")
				nsRun(b, other.ns, n.ipt, "-I", "FORWARD", "1", "-p", proto, "--dport", p, "-j", "ACCEPT")
			}
		}
	}
}
