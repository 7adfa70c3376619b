package e2e

// BenchmarkSwarm (issue: swarming and compression): many slow uplinks fill
// one downlink, and compression beats the link. Four holders A1..A4 and a
// consumer B on a simulated LAN; each holder's uplink is shaped with
// `tc qdisc add dev eth0 root tbf rate 50mbit burst 256kb latency 100ms`
// (netem is not available here). B fetches NARs through its own peerix
// (a fresh daemon each round: no learned rates or records) and reads them
// whole; rates are NAR bytes a second, medians of interleaved rounds.
//
//   - four-holders: 256 MiB of random bytes all four hold, against
//     one-holder, 256 MiB of random bytes only A1 holds (aim: 3.5x; the
//     limit is 4x);
//   - binaries: 256 MiB of the machine's shared objects, only A1 holds,
//     through peerix (zstd on the wire) against the link's own rate (the
//     same NAR straight from A1's /local/, raw) (aim: 2x);
//   - random-raw: the random NAR from A1 alone through peerix against the
//     same straight from A1 (aim: 0.95x: compression never costs);
//   - unshaped: the same pairs with no shaping (veth); with
//     PEERIX_BASELINE_BINARY (an older build of peerix), also the
//     random and the binaries NAR from A1 alone through a B daemon of this
//     build against one of that build (aim: no slower, 1x).
//
// Run: CI=true NIX_REMOTE=local flock /tmp/peerix-e2e.lock \
//   go test ./test/e2e -run '^$' -bench BenchmarkSwarm -benchtime 1x -timeout 60m -v
// (BENCH_ROUNDS sets the rounds, default 3.)

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/peerix/peerix/internal/nixtest"
)

func BenchmarkSwarm(b *testing.B) {
	requireNetns(b)
	rounds, _ := strconv.Atoi(os.Getenv("BENCH_ROUNDS"))
	if rounds <= 0 {
		rounds = 3
	}
	paths := buildBenchPaths(b, "big", "big2", "binaries")
	shared, alone, binaries := paths[0], paths[1], paths[2]

	hosts := []string{"A1", "A2", "A3", "A4", "B"}
	lan := newLAN(b, hosts...)
	key := keygen(b, "peerix-swarm-bench")
	var holders []*peerixProc
	for i := range 4 {
		in := []string{shared}
		if i == 0 {
			in = append(in, alone, binaries)
		}
		store := benchStore(b, "a-store", in...)
		holders = append(holders, startPeerix(b, lanDaemon(b, lan.host(hosts[i]), store,
			"--filter", "none", "--signing-key-file", key.secretFile)))
	}
	B := lan.host("B")
	c := B.httpClient()
	facts := map[string]struct {
		size   int64
		digest string
	}{}
	for _, p := range paths {
		size, digest := narOf(b, "auto", p)
		facts[p] = struct {
			size   int64
			digest string
		}{size, digest}
	}
	ratio := zstdRatio(b, binaries)
	b.Logf("the binaries' NAR: %d bytes, zstd -1 (klauspost, fastest) to %.2f of it", facts[binaries].size, ratio)

	// throughPeerix fetches path's NAR through a fresh daemon on B (of
	// the peerix binary bin; "": this build); it returns the time from the
	// narinfo request to the NAR's last byte.
	var throughPeerixOf func(bin, path string) time.Duration
	throughPeerix := func(path string) time.Duration { return throughPeerixOf("", path) }
	throughPeerixOf = func(bin, path string) time.Duration {
		opts := lanDaemon(b, B, initStore(b, "b-unused"), "--filter", "none", "--trusted-public-key", key.public)
		opts.bin = bin
		d := startPeerix(b, opts)
		defer d.stop(syscall.SIGTERM, 5*time.Second)
		for _, h := range holders {
			waitNeighbour(b, d, h.host)
		}
		start := time.Now()
		url := narInfoURL(b, d.client, d.url+"/"+hashPart(path)+".narinfo", "nar/lan/")
		got, digest, err := readNAR(d.client, d.url+"/"+url)
		took := time.Since(start)
		if err != nil || got != facts[path].size || digest != facts[path].digest {
			b.Fatalf("%s through B's peerix: %d bytes sha256 %s, %v", path, got, digest, err)
		}
		if bin == "" && os.Getenv("BENCH_VERBOSE") != "" {
			if st := d.transfers(b); len(st.Recent) > 0 {
				b.Logf("%s: %v, %.2f of the bytes on the wire, from %d holders", path, took.Round(time.Millisecond), st.Recent[0].WireRatio, len(st.Recent[0].Sources))
			}
		}
		return took
	}
	// direct fetches path's NAR straight from A1's /local/, raw.
	direct := func(path string) time.Duration {
		url := narInfoURL(b, c, holders[0].hostURL+"/local/"+hashPart(path)+".narinfo", "nar/")
		start := time.Now()
		got, digest, err := readNAR(c, holders[0].hostURL+"/"+url)
		took := time.Since(start)
		if err != nil || got != facts[path].size || digest != facts[path].digest {
			b.Fatalf("%s from A1: %d bytes sha256 %s, %v", path, got, digest, err)
		}
		return took
	}
	rate := func(path string, ds []time.Duration) float64 {
		return float64(facts[path].size) / median(ds).Seconds() / 1e6
	}
	report := func(name string, xPath string, xs []time.Duration, yPath string, ys []time.Duration, aim float64) {
		rx, ry := rate(xPath, xs), rate(yPath, ys)
		b.ReportMetric(rx, name+"-MB/s")
		b.ReportMetric(rx/ry, name+"-x")
		verdict := ""
		if aim > 0 {
			verdict = fmt.Sprintf("; aim at least %.2fx: %s", aim, met(rx/ry >= aim))
		}
		b.Logf("%s: %.1f MB/s %v against %.1f MB/s %v: %.2fx%s", name, rx, rounded(xs), ry, rounded(ys), rx/ry, verdict)
	}

	run := func(b *testing.B, shaped bool) {
		four, one := interleave(rounds,
			func(int) time.Duration { return throughPeerix(shared) },
			func(int) time.Duration { return throughPeerix(alone) })
		aim := 0.0
		if shaped {
			aim = 3.5
		}
		report("four-holders", shared, four, alone, one, aim)
		bin, link := interleave(rounds,
			func(int) time.Duration { return throughPeerix(binaries) },
			func(int) time.Duration { return direct(binaries) })
		if shaped {
			aim = 2
		}
		report("binaries", binaries, bin, binaries, link, aim)
		raw, rawLink := interleave(rounds,
			func(int) time.Duration { return throughPeerix(alone) },
			func(int) time.Duration { return direct(alone) })
		if shaped {
			aim = 0.95
		}
		report("random-raw", alone, raw, alone, rawLink, aim)
		if base := os.Getenv("PEERIX_BASELINE_BINARY"); base != "" && !shaped {
			for _, p := range []struct{ name, path string }{{"random-vs-today", alone}, {"binaries-vs-today", binaries}} {
				now, today := interleave(rounds,
					func(int) time.Duration { return throughPeerixOf("", p.path) },
					func(int) time.Duration { return throughPeerixOf(base, p.path) })
				report(p.name, p.path, now, p.path, today, 0)
			}
		}
	}
	b.Run("unshaped", func(b *testing.B) { run(b, false) })
	for i := range 4 {
		nsRun(b, lan.host(hosts[i]).ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "50mbit", "burst", "256kb", "latency", "100ms")
	}
	b.Run("50mbit", func(b *testing.B) { run(b, true) })
}

// readNAR reads a NAR over HTTP and returns its size and hex SHA-256.
func readNAR(c *http.Client, url string) (int64, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// zstdRatio is how far zstd at its fastest level (one stream, as
// `zstd -1` would) shrinks path's NAR.
func zstdRatio(b *testing.B, path string) float64 {
	nar := nixtest.MustDump(b, "auto", path)
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		b.Fatal(err)
	}
	return float64(len(e.EncodeAll(nar, nil))) / float64(len(nar))
}
