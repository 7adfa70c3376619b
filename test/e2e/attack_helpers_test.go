package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// What the attack tests (tracker_attack_test.go) share: an attacker's
// identities and source addresses, signed writes sent from any host, and
// the measures taken before and during each attack (the honest peer's
// finds, the tracker's memory and file descriptors). Everything speaks the
// tracker's HTTP API as docs/protocol.md describes it; nothing here
// imports peerix's own packages.

// attackID is one throwaway identity of an attacker.
type attackID struct {
	key crypto.PrivKey
	id  string
}

func newAttackIDs(t testing.TB, n int) []attackID {
	t.Helper()
	out := make([]attackID, n)
	for i := range out {
		out[i].key, out[i].id = newPeerKey(t)
	}
	return out
}

// extraNets gives host h an address in each of n more /24s (on its eth0,
// outside the LAN's own /24) and teaches each of servers the way back, so
// that h can talk to them from several source networks, as an attacker
// with several address blocks would. It returns the addresses.
func (l *lanNet) extraNets(t testing.TB, h *nsHost, n int, servers ...*nsHost) []netip.Addr {
	t.Helper()
	b := l.subnet.Addr().As4()
	var out []netip.Addr
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, b[1] ^ 0x80, byte(1 + i), 0}), 24)
		a := withLast(p, 50)
		mustIP(t, "-n", h.ns, "addr", "add", netip.PrefixFrom(a, 24).String(), "dev", "eth0")
		for _, s := range servers {
			mustIP(t, "-n", s.ns, "route", "add", p.String(), "dev", "eth0")
		}
		out = append(out, a)
	}
	return out
}

// httpClientFrom makes HTTP requests from host h whose connections leave
// from source address src.
func (h *nsHost) httpClientFrom(src netip.Addr) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := h.do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{
		Transport: &http.Transport{DialContext: dial, DisableCompression: true, MaxIdleConnsPerHost: 64, IdleConnTimeout: 10 * time.Second},
		Timeout:   60 * time.Second,
	}
}

// writeFrom sends a signed write to the tracker at base (its URL as the
// client sees it) with client c, signed by key for method and route (see
// sign), and returns the answer.
func (tr *peerixProc) writeFrom(t testing.TB, c *http.Client, base string, key crypto.PrivKey, method, route string, body []byte) (trackerAnswer, error) {
	return sendWrite(c, base, method, route, body, tr.sign(t, key, method, route, body))
}

// sendWrite sends body with the signature header value sig.
func sendWrite(c *http.Client, base, method, route string, body []byte, sig string) (trackerAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+route, bytes.NewReader(body))
	if err != nil {
		return trackerAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(signatureHeader, sig)
	}
	resp, err := c.Do(req)
	if err != nil {
		return trackerAnswer{}, fmt.Errorf("%s %s: %w", method, route, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a := trackerAnswer{status: resp.StatusCode, body: b}
	_ = json.Unmarshal(b, &a)
	return a, nil
}

// lastTS is the ts of the last body made: each write's ts must be greater
// than the last the tracker accepted from its identity (docs/protocol.md),
// and two writes of one identity can fall in the same millisecond.
var lastTS atomic.Int64

// nextTS is now in Unix milliseconds, greater than any ts made before.
func nextTS() int64 {
	for {
		last, now := lastTS.Load(), time.Now().UnixMilli()
		ts := max(now, last+1)
		if lastTS.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

// announceBody and packagesBody are the bodies of those writes, ts now
// (strictly increasing).
func announceBody(t testing.TB, id string, addrs []string) []byte {
	if addrs == nil {
		addrs = []string{}
	}
	return jsonBody(t, map[string]any{"peer_id": id, "ts": nextTS(), "addrs": addrs})
}

func packagesBody(t testing.TB, id string, full bool, add []string) []byte {
	if add == nil {
		add = []string{}
	}
	return jsonBody(t, map[string]any{"peer_id": id, "ts": nextTS(), "full": full, "add": add, "remove": []string{}})
}

// findStats are the honest peer's finds: how many, how many found what
// they should, latency percentiles.
type findStats struct {
	n, ok    int
	p50, p99 time.Duration
}

func (s findStats) String() string {
	return fmt.Sprintf("%d/%d found, p50 %v, p99 %v", s.ok, s.n, s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond))
}

// honestFinds asks the tracker at base n times, every `every`, which peers
// hold hash; a find is good when it answers 200 and lists want among the
// first 16 holders (a daemon considers no more).
func honestFinds(c *http.Client, base, hash, want string, n int, every time.Duration) findStats {
	var lat []time.Duration
	s := findStats{n: n}
	for i := range n {
		if i > 0 {
			time.Sleep(every)
		}
		var ans trackerPeers
		start := time.Now()
		code, _, err := getJSON(c, base+"/v1/find/"+hash, &ans)
		lat = append(lat, time.Since(start))
		if err != nil || code != http.StatusOK {
			continue
		}
		first := ans.Peers[:min(len(ans.Peers), 16)]
		if want == "" || slices.ContainsFunc(first, func(p trackerPeer) bool { return p.PeerID == want }) {
			s.ok++
		}
	}
	slices.Sort(lat)
	s.p50 = lat[len(lat)/2]
	s.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	return s
}

// usage is a process's resident memory and open file descriptors.
type usage struct {
	rssMiB, hwmMiB float64
	fds            int
}

func (u usage) String() string {
	return fmt.Sprintf("RSS %.0f MiB (peak %.0f), %d fds", u.rssMiB, u.hwmMiB, u.fds)
}

func (p *peerixProc) usage(t testing.TB) usage {
	t.Helper()
	rss, hwm, err := p.vmMiB()
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return usage{rss, hwm, len(fds)}
}

// benchLine logs the measures of one attack in the form docs/benchmarks.md
// quotes ("The tracker under attack").
func benchLine(t testing.TB, attack string, before, during findStats, ub, ud usage) {
	t.Helper()
	t.Logf("BENCH %s | without: finds %s; tracker %s | under attack: finds %s; tracker %s", attack, before, ub, during, ud)
}

// indexFill reads the tracker's whole hash index (GET /v1/index,
// docs/protocol.md): about how many distinct hashes it holds, its size in
// bytes, and its false-positive rate (the share of bits set, to the power
// of its probes): near 1 when it is saturated and answers "may hold" for
// every hash.
func indexFill(t testing.TB, c *http.Client, base string) (entries uint32, size uint64, fp float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, body, err := doRequest(ctx, c, http.MethodGet, base+"/v1/index")
	if err != nil || resp.StatusCode != http.StatusOK || len(body) < 40 || string(body[:4]) != "PXIX" || body[5] != 0 {
		t.Fatalf("GET /v1/index: %v %v %.100q", err, resp, body)
	}
	k := int(body[6])
	bitsSet := 0
	for _, b := range body[40:] {
		bitsSet += bits.OnesCount8(b)
	}
	size = uint64(len(body) - 40)
	return binary.BigEndian.Uint32(body[36:40]), size, math.Pow(float64(bitsSet)/float64(size*8), float64(k))
}

// junkAddrs are n addresses as long as the tracker takes that lead
// nowhere: names under .invalid and IPv6 documentation addresses.
func junkAddrs(n int) []string {
	out := make([]string, 0, n)
	for i := range n {
		if i%2 == 0 {
			name := strings.Repeat(randomNix32(50)+".", 4) + "invalid"
			out = append(out, fmt.Sprintf("/dns/%s/tcp/%d", name[:min(len(name), 220)], 1000+i))
		} else {
			out = append(out, fmt.Sprintf("/ip6/2001:db8:%x:%x::%x/udp/%d/quic-v1", i, len(out), i*7+1, 2000+i))
		}
	}
	return out
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
