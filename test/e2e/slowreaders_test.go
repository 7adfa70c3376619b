package e2e

// The daemon under attack from slow readers and connection floods: a
// simulated LAN with the daemon T (peerix serve --mode lan, its files
// limited to 256 as on a small box) and an attacker X holding 40 addresses.
// The attacker, written from docs/protocol.md's HTTP routes (anyone may
// fetch /local/nar/...), opens hundreds of connections that ask for a
// 32 MiB NAR and never read a byte (half of them taking the block format,
// X-Peerix-Accept-Encoding). This machine's Nix, played by a client on T's
// loopback, must keep being served, and T's descriptors stay bounded; a
// transfer that makes no progress is cut.

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

const (
	// attackNofile is T's limit of open files under attack.
	attackNofile = 256
	// attackSources is how many addresses the attacker holds.
	attackSources = 40
)

// attackWorld is a LAN with the daemon T and the attacker X.
type attackWorld struct {
	lan           *lanNet
	T, X          *nsHost
	d             *peerixProc
	narPath       string // /local/nar/... of a 32 MiB NAR
	small         string // hash part of a small path T holds
	secret        string // hash part of a path T keeps private (deny-listed)
	secretNAR     string // /local/nar/... of it
	secretNarHash string
	srcs          []netip.Addr
}

// newAttackWorld makes the LAN and starts T with the peerix binary bin
// ("": the one built for the run).
func newAttackWorld(t testing.TB, bin string) *attackWorld {
	t.Helper()
	w := &attackWorld{lan: newLAN(t, "T", "X")}
	w.T, w.X = w.lan.host("T"), w.lan.host("X")
	for i := range attackSources {
		a := withLast(w.lan.subnet, byte(100+i))
		mustIP(t, "-n", w.X.ns, "addr", "add", netip.PrefixFrom(a, 24).String(), "dev", "eth0")
		w.srcs = append(w.srcs, a)
	}
	tStore := initStore(t, "t-store")
	big := make([]byte, 32<<20)
	rand.Read(big)
	ctx := context.Background()
	bigPath, err := nixtest.AddFile(ctx, tStore, "peerix-attack-big", big)
	if err != nil {
		t.Fatal(err)
	}
	smallPath, err := nixtest.AddFile(ctx, tStore, "peerix-attack-small", []byte("small"))
	if err != nil {
		t.Fatal(err)
	}
	w.small = hashPart(smallPath)
	secretPath, err := nixtest.AddFile(ctx, tStore, "peerix-attack-secret", []byte("private "+randomNix32(20)))
	if err != nil {
		t.Fatal(err)
	}
	w.secret = hashPart(secretPath)
	w.secretNarHash = strings.TrimPrefix(nixtest.MustInfo(t, tStore, secretPath).NarHash, "sha256:")
	w.secretNAR = "/local/nar/" + w.secret + "-" + w.secretNarHash + ".nar"
	// The deny-list alone: the secret path is refused, the rest shared
	// without asking an upstream.
	o := lanDaemon(t, w.T, tStore, "--filter", "patterns")
	o.args = slices.DeleteFunc(o.args, func(s string) bool { return s == "--verbose" })
	o.nofile = attackNofile
	o.bin = bin
	w.d = startPeerix(t, o)
	resp, body := clientGet(t, w.d.client, http.MethodGet, w.d.url+"/local/"+hashPart(bigPath)+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("T's narinfo of the big path: %s", resp.Status)
	}
	w.narPath = "/local/" + parseNarInfo(t, body)["URL"]
	return w
}

// honest plays this machine's Nix: from T's loopback it asks, over a new
// connection each time, for nix-cache-info, a local narinfo and a narinfo
// no peer has (404), one after another, until ctx ends.
func (w *attackWorld) honest(ctx context.Context) *latencies {
	l := &latencies{done: make(chan struct{})}
	c := &http.Client{
		Transport: &http.Transport{DialContext: w.T.dial, DisableKeepAlives: true, DisableCompression: true},
		Timeout:   5 * time.Second,
	}
	targets := []struct {
		path string
		want int
	}{
		{"/nix-cache-info", http.StatusOK},
		{"/local/" + w.small + ".narinfo", http.StatusOK},
		{"/" + randomNix32(32) + ".narinfo", http.StatusNotFound},
	}
	go func() {
		defer close(l.done)
		for i := 0; ctx.Err() == nil; i++ {
			tg := targets[i%len(targets)]
			start := time.Now()
			resp, _, err := doRequest(context.Background(), c, http.MethodGet, w.d.url+tg.path)
			ok := err == nil && resp.StatusCode == tg.want
			l.add(time.Since(start), ok, err)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return l
}

// latencies collects the honest client's requests.
type latencies struct {
	mu      sync.Mutex
	d       []time.Duration
	failed  int
	lastErr error
	done    chan struct{}
}

func (l *latencies) add(d time.Duration, ok bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d = append(l.d, d)
	if !ok {
		l.failed++
		if err != nil {
			l.lastErr = err
		}
	}
}

// summary: p50, p99, the share of requests answered right, how many.
func (l *latencies) summary() (p50, p99 time.Duration, success float64, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0, 0, 0, 0
	}
	d := slices.Clone(l.d)
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(math.Ceil(p*float64(len(d))))-1)] }
	return q(0.5), q(0.99), float64(len(d)-l.failed) / float64(len(d)), len(d)
}

// watch samples T's open files and memory every 100 ms until ctx ends.
func (w *attackWorld) watch(ctx context.Context) *usageSamples {
	u := &usageSamples{done: make(chan struct{})}
	go func() {
		defer close(u.done)
		for {
			if n, err := w.d.openFiles(); err == nil {
				u.mu.Lock()
				u.fds = append(u.fds, n)
				u.mu.Unlock()
			}
			if rss, _, err := w.d.vmMiB(); err == nil {
				u.mu.Lock()
				u.rss = max(u.rss, rss)
				u.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return u
}

// usageSamples is what watch saw of T: its open descriptors over time, its
// largest RSS.
type usageSamples struct {
	mu   sync.Mutex
	fds  []int
	rss  float64 // MiB, the most seen
	done chan struct{}
}

func (u *usageSamples) maxFDs() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Max(append([]int{0}, u.fds...))
}

// attacker is a set of connections from X to T that it never reads from.
type attacker struct {
	w        *attackWorld
	mu       sync.Mutex
	conns    []net.Conn
	opened   int
	dialErrs int
	// refusedProbes: requests answered, and those answered other than 404.
	probes, probesOdd int
}

func (a *attacker) probed(notFound bool) {
	a.mu.Lock()
	a.probes++
	if !notFound {
		a.probesOdd++
	}
	a.mu.Unlock()
}

// open makes n connections from X, round-robin over its addresses, each
// with a tiny receive buffer, and sends each request (what request
// returns; "" sends nothing).
func (a *attacker) open(n int, request func(i int) string) {
	var conns []net.Conn
	errs := 0
	a.w.X.do(func() error {
		for i := range n {
			src := a.w.srcs[(a.opened+i)%len(a.w.srcs)]
			d := net.Dialer{
				Timeout:   2 * time.Second,
				LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
				Control: func(_, _ string, rc syscall.RawConn) error {
					return rc.Control(func(fd uintptr) {
						syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
					})
				},
			}
			c, err := d.Dial("tcp4", net.JoinHostPort(a.w.T.addr.String(), strconv.Itoa(lanPort)))
			if err != nil {
				errs++
				continue
			}
			if r := request(a.opened + i); r != "" {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				io.WriteString(c, r)
			}
			conns = append(conns, c)
		}
		return nil
	})
	a.mu.Lock()
	a.conns = append(a.conns, conns...)
	a.opened += n
	a.dialErrs += errs
	a.mu.Unlock()
}

// closeOldest closes the n oldest connections (the attacker moving on).
func (a *attacker) closeOldest(n int) {
	a.mu.Lock()
	n = min(n, len(a.conns))
	old := a.conns[:n]
	a.conns = slices.Clone(a.conns[n:])
	a.mu.Unlock()
	for _, c := range old {
		c.Close()
	}
}

func (a *attacker) close() { a.closeOldest(math.MaxInt) }

// keep closes the oldest connections beyond n.
func (a *attacker) keep(n int) {
	a.mu.Lock()
	extra := len(a.conns) - n
	a.mu.Unlock()
	if extra > 0 {
		a.closeOldest(extra)
	}
}

// slowReaders: 400 connections that ask for the big NAR (every other one
// in the block format) and never read,
// then, each second, 40 new ones (the oldest closed beyond 400), until ctx
// ends. The connections stay open (never read) when it returns.
func (w *attackWorld) slowReaders(ctx context.Context, a *attacker) {
	req := func(i int) string {
		blocks := ""
		if i%2 == 1 {
			blocks = "X-Peerix-Accept-Encoding: zstd-blocks\r\n"
		}
		return "GET " + w.narPath + " HTTP/1.1\r\nHost: " + w.T.addr.String() + "\r\n" + blocks + "\r\n"
	}
	a.open(400, req)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			a.open(40, req)
			a.keep(400)
		}
	}
}

// slowloris: 400 connections that send a request's first line and then
// one header line every 5 s, never finishing it; 40 new ones each second
// (the oldest closed beyond 400).
func (w *attackWorld) slowloris(ctx context.Context, a *attacker) {
	req := func(int) string { return "GET " + w.narPath + " HTTP/1.1\r\nHost: x\r\n" }
	a.open(400, req)
	tick := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			tick++
			a.open(40, req)
			a.keep(400)
			if tick%5 == 0 {
				a.mu.Lock()
				for _, c := range a.conns {
					c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
					io.WriteString(c, "X-Slow: 1\r\n")
				}
				a.mu.Unlock()
			}
		}
	}
}

// idleFlood: 400 connections that each ask for a small narinfo, read the
// answer (so nothing stalls) and stay open, idle; 40 new ones each second
// (the oldest closed beyond 400).
func (w *attackWorld) idleFlood(ctx context.Context, a *attacker) {
	req := func(int) string {
		return "GET /local/" + w.small + ".narinfo HTTP/1.1\r\nHost: x\r\n\r\n"
	}
	a.open(400, req)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			a.open(40, req)
			a.keep(400)
		}
	}
}

// refusedProbes: 40 clients, one per attacker address, each asking T as
// fast as it answers (keep-alive) for its private path's narinfo and NAR
// (with a Range, in the block format) and for absent paths, until ctx
// ends. Every answer must be 404; the attacker counts them.
func (w *attackWorld) refusedProbes(ctx context.Context, a *attacker) {
	targets := []struct{ path, rng string }{
		{"/local/" + w.secret + ".narinfo", ""},
		{"/local/" + randomNix32(32) + ".narinfo", ""},
		{w.secretNAR, "bytes=10-99"},
		// An absent path with a well-formed NarHash (the secret's): a
		// random one is malformed, answered 400.
		{"/nar/" + randomNix32(32) + "-" + w.secretNarHash + ".nar", "bytes=10-99"},
	}
	var wg sync.WaitGroup
	for _, src := range w.srcs {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := w.X.do(func() (err error) {
					d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
			DisableCompression:  true,
			MaxIdleConnsPerHost: 1,
		}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		base := "http://" + net.JoinHostPort(w.T.addr.String(), strconv.Itoa(lanPort))
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			for i := 0; ctx.Err() == nil; i++ {
				tg := targets[i%len(targets)]
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+tg.path, nil)
				if tg.rng != "" {
					req.Header.Set("Range", tg.rng)
					req.Header.Set("X-Peerix-Accept-Encoding", "zstd-blocks")
				}
				resp, err := c.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						a.probed(false)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				a.probed(resp.StatusCode == http.StatusNotFound)
			}
		})
	}
	wg.Wait()
}

// attackRun is what one run measured.
type attackRun struct {
	name         string
	p50, p99     time.Duration
	success      float64
	requests     int
	maxFDs       int
	rss          float64
	lastErr      error
	opened, errs int
	probes, odd  int
}

// run measures the honest client for d while attack (nil: none) runs.
func (w *attackWorld) run(t testing.TB, name string, d time.Duration, attack func(context.Context, *attacker)) (attackRun, *attacker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	a := &attacker{w: w}
	u := w.watch(ctx)
	attackDone := make(chan struct{})
	go func() {
		defer close(attackDone)
		if attack != nil {
			attack(ctx, a)
		}
	}()
	// The honest client starts once the attack is under way.
	time.Sleep(500 * time.Millisecond)
	l := w.honest(ctx)
	<-ctx.Done()
	<-l.done
	<-u.done
	<-attackDone
	r := attackRun{name: name, maxFDs: u.maxFDs(), rss: u.rss, lastErr: l.lastErr, opened: a.opened, errs: a.dialErrs, probes: a.probes, odd: a.probesOdd}
	r.p50, r.p99, r.success, r.requests = l.summary()
	t.Logf("%-14s honest client: %d requests, p50 %v, p99 %v, %.1f%% answered right (last error: %v); T: at most %d open files, RSS %.0f MiB; attacker: %d connections opened, %d refused at connect, %d probes (%d not answered 404)",
		name, r.requests, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), 100*r.success, r.lastErr, r.maxFDs, r.rss, r.opened, r.errs, r.probes, r.odd)
	return r, a
}

// TestSlowReaders: under a limit of 256 files, 400 connections (from 40
// addresses) that ask T for a 32 MiB NAR and never read, renewed each
// second, must not keep T from serving this machine's Nix: every loopback
// request answered, quickly; T's open files bounded well below the limit.
// Once the attacker stops opening new ones, the stalled transfers it
// keeps open are cut within the write timeout (30 s without progress), and
// T's files go back to what they were.
func TestSlowReaders(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	w := newAttackWorld(t, "")
	before, err := w.d.openFiles()
	if err != nil {
		t.Fatal(err)
	}
	kinds := w.d.openFileKinds()
	r, a := w.run(t, "slow readers", 15*time.Second, w.slowReaders)
	defer a.close()
	if r.success < 1 {
		t.Errorf("under attack, %.1f%% of this machine's requests were answered right (last error: %v); want all", 100*r.success, r.lastErr)
	}
	if r.p99 > time.Second {
		t.Errorf("under attack, this machine's requests took %v (p99); want under a second", r.p99)
	}
	if r.maxFDs > attackNofile*3/4 {
		t.Errorf("under attack, T held %d open files (limit %d)", r.maxFDs, attackNofile)
	}
	w.d.alive(t)

	// The attacker stops, keeping its connections open, unread.
	start := time.Now()
	waitFor(t, "T to cut the stalled transfers", 45*time.Second, func() (bool, string) {
		n, err := w.d.openFiles()
		return err == nil && n <= before+4, fmt.Sprintf("%d open files (%d before the attack: %s), now %s, %v", n, before, kinds, w.d.openFileKinds(), err)
	})
	a.mu.Lock()
	held := len(a.conns)
	a.mu.Unlock()
	t.Logf("T back to its %d open files %v after the attacker stopped opening connections (%d still open on its side)",
		before, time.Since(start).Round(100*time.Millisecond), held)
	w.d.healthy(t, w.T)
}

// BenchmarkDaemonUnderAttack measures this machine's Nix (a loopback
// client) against T under a 256-file limit, without an attack and under
// each: slow readers of a NAR, slowloris requests, idle connections,
// probes for a private path. With PEERIX_BASELINE_BINARY (an older build
// of peerix), the same against a T of that build, on a LAN of its own,
// interleaved. docs/benchmarks.md, "The daemon under attack".
func BenchmarkDaemonUnderAttack(b *testing.B) {
	if skipReason != "" {
		b.Skip(skipReason)
	}
	requireNetns(b)
	builds := []struct {
		name string
		w    *attackWorld
	}{{"this build", newAttackWorld(b, "")}}
	if base := os.Getenv("PEERIX_BASELINE_BINARY"); base != "" {
		builds = append(builds, struct {
			name string
			w    *attackWorld
		}{"baseline", newAttackWorld(b, base)})
	}
	var runs []attackRun
	for range b.N {
		for _, c := range []struct {
			name   string
			attack func(*attackWorld) func(context.Context, *attacker)
		}{
			{"none", func(*attackWorld) func(context.Context, *attacker) { return nil }},
			{"slow readers", func(w *attackWorld) func(context.Context, *attacker) { return w.slowReaders }},
			{"slowloris", func(w *attackWorld) func(context.Context, *attacker) { return w.slowloris }},
			{"idle flood", func(w *attackWorld) func(context.Context, *attacker) { return w.idleFlood }},
			{"refused probes", func(w *attackWorld) func(context.Context, *attacker) { return w.refusedProbes }},
		} {
			for _, bd := range builds {
				r, a := bd.w.run(b, bd.name+": "+c.name, 15*time.Second, c.attack(bd.w))
				a.close()
				runs = append(runs, r)
				// Let T settle: stalled transfers cut, connections gone.
				time.Sleep(time.Second)
			}
		}
	}
	b.Logf("| attack | honest p50 | honest p99 | answered right | T's open files (max) | T's RSS (max) | attacker's probes (not 404) |")
	b.Logf("| --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range runs {
		b.Logf("| %s | %v | %v | %.1f%% | %d | %.0f MiB | %d (%d) |", r.name, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), 100*r.success, r.maxFDs, r.rss, r.probes, r.odd)
	}
}
