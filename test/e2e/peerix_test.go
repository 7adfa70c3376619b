package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The peerix processes under test: `peerix serve` in any mode and `peerix
// tracker`, on this machine's loopback or on a simulated host, all started,
// watched and stopped by startPeerix. The option builders below (localDaemon,
// lanDaemon, p2pDaemon, trackerServer) say how each kind is run and how to
// tell that it is ready.

const (
	// startTimeout bounds how long a process may take to become ready.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop before the process is killed.
	stopTimeout = 5 * time.Second
	// logTail is how much of a process's log a failure shows.
	logTail = 32 << 10
)

// The ports a real installation uses, which the processes on simulated
// hosts use too (each host has its own).
const (
	servePort   = 12304 // peerix serve: HTTP (and, in LAN mode, UDP discovery)
	trackerPort = 12305 // peerix tracker: the /v1 API
	libp2pPort  = 12306 // libp2p: the daemons' P2P port, the tracker's relay
)

// gracefulLine is what each subcommand logs when it stops on SIGTERM: its
// presence shows that the signal reached peerix itself.
var gracefulLine = map[string]string{
	"serve":   "peerix stopped",
	"tracker": "tracker shutting down",
}

// peerixOptions say which peerix process to start, where, and how to tell
// that it is ready.
type peerixOptions struct {
	// label names the process in messages ("A", "tracker", "peer03").
	label string
	// host is the simulated host it runs on; nil: this machine.
	host *nsHost
	// args are the subcommand and its flags, without --listen.
	args []string
	// listen is the --listen address. Empty: a free port on 127.0.0.1 of
	// this machine, and another one if the port is taken before peerix
	// binds it. A process on a host must be given one.
	listen string
	// readyPath is asked (GET, from the process's own machine) until it
	// answers 200.
	readyPath string
	// ready, if set, must also accept the body of that answer: it returns
	// what is still missing, "" when the process is ready. It may fill in
	// fields of p (a daemon's peer ID).
	ready func(p *peerixProc, body []byte) (missing string)
	// nofile, if set, is the process's limit of open files (soft and hard,
	// set with prlimit before peerix starts).
	nofile int
	// bin is the peerix binary; empty: the one built for the run.
	bin string
	// env is added to the process's environment.
	env []string
}

// peerixProc is one running peerix process. It is stopped (SIGTERM, then
// SIGKILL after stopTimeout) when the test ends, whether it passed or not;
// if it exits on its own before that, or does not stop gracefully, the test
// fails.
type peerixProc struct {
	opts  peerixOptions // as started, listen included
	label string
	host  *nsHost // nil: this machine
	// addr is host:port of its HTTP listener on its own machine's loopback.
	addr string
	// url is http://127.0.0.1:port: the process as its own machine sees it.
	url string
	// hostURL is http://<host address>:port: the process as other hosts
	// see it (on this machine, url).
	hostURL string
	// client makes requests from the process's own machine.
	client *http.Client
	// peerID is a P2P daemon's peer ID, from /api/status.
	peerID string

	cmd    *exec.Cmd
	log    *lockedBuffer // stdout and stderr
	exited chan struct{}
	err    error // exit status, once exited is closed

	mu       sync.Mutex
	stopping bool // an exit from now on is expected
	// startFailed: it never became ready, which tryStartPeerix reported
	// with its log.
	startFailed bool
}

// startPeerix starts a peerix process and waits (bounded) until it is
// ready, or fails the test.
func startPeerix(t testing.TB, opts peerixOptions) *peerixProc {
	t.Helper()
	p, err := tryStartPeerix(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tryStartPeerix is startPeerix for goroutines: it returns errors.
func tryStartPeerix(t testing.TB, opts peerixOptions) (*peerixProc, error) {
	if opts.listen != "" {
		return startOnce(t, opts)
	}
	if opts.host != nil {
		return nil, fmt.Errorf("peerix %s on host %s: no --listen address given", opts.label, opts.host.label)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var port int
		if port, err = freePort(); err != nil {
			return nil, err
		}
		o := opts
		o.listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		var p *peerixProc
		if p, err = startOnce(t, o); err == nil {
			return p, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

func startOnce(t testing.TB, opts peerixOptions) (*peerixProc, error) {
	_, port, err := net.SplitHostPort(opts.listen)
	if err != nil {
		return nil, fmt.Errorf("peerix %s: --listen %q: %w", opts.label, opts.listen, err)
	}
	p := &peerixProc{
		opts:   opts,
		label:  opts.label,
		host:   opts.host,
		addr:   net.JoinHostPort("127.0.0.1", port),
		log:    &lockedBuffer{},
		exited: make(chan struct{}),
	}
	p.url = "http://" + p.addr
	p.hostURL = p.url
	p.client = &http.Client{Timeout: requestTimeout, Transport: &http.Transport{DisableCompression: true}}
	args := append(slices.Clone(opts.args), "--listen", opts.listen)
	bin := cmp.Or(opts.bin, peerixBin)
	if opts.nofile > 0 {
		// prlimit execs peerix: the process (and its pid) is peerix's.
		args = append([]string{fmt.Sprintf("--nofile=%d:%d", opts.nofile, opts.nofile), "--", bin}, args...)
		bin = "prlimit"
	}
	if h := opts.host; h != nil {
		p.hostURL = "http://" + net.JoinHostPort(h.addr.String(), port)
		p.client = h.httpClient()
		p.cmd = h.command(context.Background(), bin, args...)
		opts.env = append(opts.env, pprofEnv()...)
	} else {
		p.cmd = exec.Command(bin, args...)
		p.cmd.WaitDelay = 5 * time.Second
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	// No signing key may leak in from the environment of whoever runs the tests.
	p.cmd.Env = append(append(os.Environ(), "NIX_SECRET_KEY_FILE="), opts.env...)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", p, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stopAtEnd(t) })

	if err := p.waitReady(); err != nil {
		// Reported here, not again when the test ends.
		p.startFailed = true
		_, _ = p.stop(syscall.SIGKILL, stopTimeout)
		return nil, fmt.Errorf("%s: %w\nlog:\n%s", p, err, tail(p.log.String(), logTail))
	}
	return p, nil
}

// String names the process and its command line.
func (p *peerixProc) String() string {
	where := "on this machine"
	if p.host != nil {
		where = "on host " + p.host.label
	}
	return fmt.Sprintf("peerix %s (%s, %s --listen %s)", p.label, where, strings.Join(p.opts.args, " "), p.opts.listen)
}

// waitReady polls readyPath until the process is ready, has exited, or
// startTimeout has passed.
func (p *peerixProc) waitReady() error {
	var last string
	_, err := poll(startTimeout, 50*time.Millisecond, func() (bool, error) {
		if !p.running() {
			return false, fmt.Errorf("exited before it was ready: %v", p.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, body, err := doRequest(ctx, p.client, http.MethodGet, p.url+p.opts.readyPath)
		switch {
		case err != nil:
			last = err.Error()
		case resp.StatusCode != http.StatusOK:
			last = fmt.Sprintf("GET %s: %s: %.300s", p.opts.readyPath, resp.Status, body)
		case p.opts.ready != nil:
			last = p.opts.ready(p, body)
			return last == "", nil
		default:
			return true, nil
		}
		return false, nil
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("not ready within %v (last: %s)", startTimeout, last)
	}
	return err
}

// stopAtEnd is the process's part of the test's cleanup: it stops the
// process, and shows its log if the test failed.
func (p *peerixProc) stopAtEnd(t testing.TB) {
	switch {
	case p.startFailed:
		return
	case !p.running() && !p.expected():
		t.Errorf("%s exited during the test: %v\nlog:\n%s", p, p.err, tail(p.log.String(), logTail))
		return
	case p.running():
		if _, err := p.stop(syscall.SIGTERM, stopTimeout); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if t.Failed() {
		t.Logf("%s log:\n%s", p, tail(p.log.String(), logTail))
	}
}

func (p *peerixProc) expected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

// running reports whether the process has not exited yet.
func (p *peerixProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// alive fails the test if the process has exited.
func (p *peerixProc) alive(t testing.TB) {
	t.Helper()
	if !p.running() {
		t.Fatalf("%s has exited: %v\nlog:\n%s", p, p.err, tail(p.log.String(), logTail))
	}
}

// healthy checks that the process runs and says so on /health, asked from
// the host from.
func (p *peerixProc) healthy(t testing.TB, from *nsHost) {
	t.Helper()
	p.alive(t)
	resp, body := clientGet(t, from.httpClient(), http.MethodGet, p.hostURL+"/health")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s/health from host %s: %s\n%s", p.hostURL, from.label, resp.Status, body)
	}
}

// stop sends sig and waits up to timeout for the process to exit; then it
// kills it and says so. After SIGTERM the exit must be graceful: status 0
// and the subcommand's "stopped" log line, which also shows that the
// signal reached peerix itself. It returns how long the exit took.
func (p *peerixProc) stop(sig syscall.Signal, timeout time.Duration) (time.Duration, error) {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	start := time.Now()
	if !p.running() {
		return 0, nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		took := time.Since(start)
		if sig != syscall.SIGTERM {
			return took, nil
		}
		if p.err != nil {
			return took, fmt.Errorf("exited with %v after SIGTERM; want a graceful stop (status 0)", p.err)
		}
		if line := gracefulLine[p.opts.args[0]]; line != "" && !strings.Contains(p.log.String(), line) {
			return took, fmt.Errorf("exited after SIGTERM without logging %q: did the signal reach peerix?", line)
		}
		return took, nil
	case <-time.After(timeout):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		return time.Since(start), fmt.Errorf("did not exit within %v of %v, nor 10s after SIGKILL", timeout, sig)
	}
	return time.Since(start), fmt.Errorf("did not exit within %v of %v; killed", timeout, sig)
}

// restart stops the process with SIGTERM and starts it again with the same
// options (the same address, state dir and database). It returns the new
// process and how long the stop took.
func (p *peerixProc) restart(t testing.TB) (*peerixProc, time.Duration) {
	t.Helper()
	took, err := p.stop(syscall.SIGTERM, stopTimeout)
	if err != nil {
		t.Fatalf("stopping %s: %v", p, err)
	}
	return startPeerix(t, p.opts), took
}

// logLines returns the lines of the process's log that contain any of
// words (case-insensitive), at most max of them.
func (p *peerixProc) logLines(max int, words ...string) []string {
	var out []string
	for _, l := range strings.Split(p.log.String(), "\n") {
		ll := strings.ToLower(l)
		for _, w := range words {
			if strings.Contains(ll, strings.ToLower(w)) {
				out = append(out, l)
				break
			}
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

// openFiles counts the process's open file descriptors (/proc/<pid>/fd).
func (p *peerixProc) openFiles() (int, error) {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	return len(es), err
}

// openFileKinds says what the process's open files are, counted by kind
// (socket, anon_inode:[eventpoll], a path's directory), for a test's
// failure message.
func (p *peerixProc) openFileKinds() string {
	dir := fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	kinds := map[string]int{}
	for _, e := range es {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		switch {
		case err != nil:
			target = "?"
		case strings.HasPrefix(target, "socket:"):
			target = "socket"
		case strings.HasPrefix(target, "/"):
			target = filepath.Dir(target) + "/"
		}
		kinds[target]++
	}
	return fmt.Sprint(kinds)
}

// vmMiB returns the process's VmRSS and VmHWM from /proc, in MiB.
func (p *peerixProc) vmMiB() (rss, hwm float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kB, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kB / 1024
		case "VmHWM:":
			hwm = kB / 1024
		}
	}
	return rss, hwm, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]\n" + s[len(s)-n:]
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before peerix binds it; tryStartPeerix retries when that happens.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// --- the kinds of peerix process ----------------------------------------------

// localDaemon is `peerix serve --mode local` of storeRoot on this machine's
// loopback, ready once it serves /local/nix-cache-info.
func localDaemon(t testing.TB, storeRoot string, flags ...string) peerixOptions {
	return peerixOptions{
		label: "local",
		args: append([]string{"serve", "--mode", "local",
			"--store-root", storeRoot,
			"--state-dir", filepath.Join(t.TempDir(), "state"),
		}, flags...),
		readyPath: "/local/nix-cache-info",
	}
}

// lanDaemon is `peerix serve --mode lan` of storeRoot on host h, on
// 0.0.0.0:12304 (HTTP and UDP), ready once it answers /health; verbose in
// tests, as users run it (info) in benchmarks. The hosts have no
// internet, so the default filter (upstream) needs one a test provides;
// flags say which (or "--filter", "none").
func lanDaemon(t testing.TB, h *nsHost, storeRoot string, flags ...string) peerixOptions {
	args := []string{"serve", "--mode", "lan",
		"--store-root", storeRoot,
		"--state-dir", filepath.Join(t.TempDir(), "state"),
	}
	if _, bench := t.(*testing.B); !bench {
		args = append(args, "--verbose")
	}
	return peerixOptions{
		label:     h.label,
		host:      h,
		args:      append(args, flags...),
		listen:    fmt.Sprintf("0.0.0.0:%d", lanPort),
		readyPath: "/health",
	}
}

// p2pDaemon is `peerix serve --mode p2p` of storeRoot against the tracker at
// trackerURL, with --filter none (the upstream filter needs the internet,
// which the tests lack) and its identity in stateDir. On a host it listens on
// 127.0.0.1:12304 with P2P port 12306, as an installation does; on this
// machine on free ports. It is ready once /api/status names its peer ID,
// which it records in peerID.
func p2pDaemon(h *nsHost, trackerURL, storeRoot, stateDir string, flags ...string) peerixOptions {
	o := peerixOptions{label: "p2p", host: h, readyPath: "/api/status"}
	port := 0
	// Many daemons on this machine cannot share the LAN port; on
	// simulated hosts LAN discovery stays on, as by default.
	lanFlag := "--lan=false"
	if h != nil {
		o.label = h.label
		o.listen = fmt.Sprintf("127.0.0.1:%d", servePort)
		port = libp2pPort
		lanFlag = "--lan=true"
	}
	o.args = append([]string{"serve", "--mode", "p2p", lanFlag,
		"--tracker", trackerURL,
		"--filter", "none",
		"--p2p-port", strconv.Itoa(port),
		"--store-root", storeRoot,
		"--state-dir", stateDir,
	}, flags...)
	o.ready = func(p *peerixProc, body []byte) string {
		var st apiStatus
		switch err := json.Unmarshal(body, &st); {
		case err != nil:
			return err.Error()
		case st.Mode != "p2p":
			return fmt.Sprintf("/api/status says mode %q, want p2p", st.Mode)
		case st.PeerID == "":
			return "no peer_id in /api/status"
		}
		p.peerID = st.PeerID
		return ""
	}
	return o
}

// trackerServer is `peerix tracker` with a fresh SQLite database and
// --peer-ttl ttl, verbose. On a host it listens on 0.0.0.0:12305 with its
// relay on 12306; on this machine on a free port without a fixed relay
// port. It is ready once /v1/info names its relay.
func trackerServer(t testing.TB, h *nsHost, ttl time.Duration) peerixOptions {
	o := peerixOptions{label: "tracker", host: h, readyPath: "/v1/info"}
	relayPort := 0
	if h != nil {
		o.listen = fmt.Sprintf("0.0.0.0:%d", trackerPort)
		relayPort = libp2pPort
	}
	o.args = []string{"tracker",
		"--db", filepath.Join(t.TempDir(), "tracker", "tracker.db"),
		"--relay-port", strconv.Itoa(relayPort),
		"--peer-ttl", ttl.String(),
		"--verbose",
	}
	o.ready = func(_ *peerixProc, body []byte) string {
		var info trackerInfo
		if err := json.Unmarshal(body, &info); err != nil {
			return err.Error()
		}
		if info.Relay == nil || info.Relay.PeerID == "" {
			return fmt.Sprintf("no relay in /v1/info: %.300s", body)
		}
		return ""
	}
	return o
}

// --- peerix keygen ---------------------------------------------------------------

// keyPair is a Nix signing key pair made by `peerix keygen`.
type keyPair struct {
	secretFile string
	public     string // name:base64, as trusted-public-keys takes it
}

// keygen makes a key pair with `peerix keygen NAME --out DIR`.
func keygen(t testing.TB, name string) keyPair {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerixBin, "keygen", name, "--out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peerix keygen %s --out %s: %v\n%s", name, dir, err, out)
	}
	kp := keyPair{secretFile: filepath.Join(dir, name+".sec")}
	sec, err := os.ReadFile(kp.secretFile)
	if err != nil {
		t.Fatalf("peerix keygen wrote no secret key: %v", err)
	}
	pub, err := os.ReadFile(filepath.Join(dir, name+".pub"))
	if err != nil {
		t.Fatalf("peerix keygen wrote no public key: %v", err)
	}
	kp.public = strings.TrimSpace(string(pub))
	if !strings.HasPrefix(kp.public, name+":") || !strings.HasPrefix(strings.TrimSpace(string(sec)), name+":") {
		t.Fatalf("peerix keygen %s: keys not in Nix's name:base64 form:\npublic %q", name, kp.public)
	}
	if fi, err := os.Stat(kp.secretFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("secret key %s has mode %v; want no access for group and others", kp.secretFile, fi.Mode().Perm())
	}
	return kp
}

// --- bounded waiting ---------------------------------------------------------

var errPollTimeout = errors.New("timed out")

// poll calls cond every `every` until it reports done, returns an error, or
// timeout passes; it returns how long that took.
func poll(timeout, every time.Duration, cond func() (bool, error)) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		done, err := cond()
		if err != nil {
			return time.Since(start), err
		}
		if done {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("%w after %v", errPollTimeout, timeout)
		}
		time.Sleep(every)
	}
}

// waitFor polls cond (bounded) and fails the test with what cond last said
// if it never holds. It returns how long it took.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	var last string
	took, err := poll(timeout, 100*time.Millisecond, func() (bool, error) {
		ok, s := cond()
		last = s
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: %v; last: %s", what, err, last)
	}
	return took
}

// doRequest makes one request with c and returns the response with its
// body read (at most 16 MiB).
func doRequest(ctx context.Context, c *http.Client, method, url string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp, body, err
}
