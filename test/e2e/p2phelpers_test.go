package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
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

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The P2P side of the tests: `peerix tracker` and `peerix serve --mode p2p`
// processes, on the test machine or on a simulated host, and the tracker's
// /v1 API written down from docs/protocol.md (independently of
// internal/tracker).

// peerixProc is one peerix process under test. It is stopped (SIGTERM,
// then SIGKILL after stopTimeout) when the test ends; if it exits on its
// own before that, the test fails.
type peerixProc struct {
	label  string
	host   *nsHost // nil: the test machine itself
	args   []string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	err    error // exit status, once exited is closed

	mu       sync.Mutex
	stopping bool // an exit from now on is expected
}

// startPeerixProc starts peerix with args, on host (through `ip netns
// exec`, which execs peerix, so signals reach it directly) or here.
func startPeerixProc(t *testing.T, label string, host *nsHost, args []string) (*peerixProc, error) {
	p := &peerixProc{
		label:  label,
		host:   host,
		args:   args,
		out:    &lockedBuffer{},
		exited: make(chan struct{}),
	}
	if host != nil {
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", host.ns, peerixBin}, args...)...)
	} else {
		p.cmd = exec.Command(peerixBin, args...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// No signing key may leak in from the environment of whoever runs the tests.
	p.cmd.Env = append(os.Environ(), "NIX_SECRET_KEY_FILE=")
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting peerix %s (%s): %w", strings.Join(args, " "), label, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
			if !p.expected() {
				t.Errorf("peerix %s exited during the test: %v\noutput:\n%s", label, p.err, tail(p.out.String(), 16<<10))
			} else if t.Failed() {
				t.Logf("peerix %s (%s) output:\n%s", label, strings.Join(args, " "), tail(p.out.String(), 16<<10))
			}
			return
		default:
		}
		if _, err := p.stop(syscall.SIGTERM, stopTimeout); err != nil {
			t.Errorf("peerix %s: %v", label, err)
		}
		if t.Failed() {
			t.Logf("peerix %s (%s) output:\n%s", label, strings.Join(args, " "), tail(p.out.String(), 16<<10))
		}
	})
	return p, nil
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
func (p *peerixProc) alive(t *testing.T) {
	t.Helper()
	if !p.running() {
		t.Fatalf("peerix %s has exited: %v\noutput:\n%s", p.label, p.err, tail(p.out.String(), 16<<10))
	}
}

// stop sends sig and waits up to timeout for the process to exit; then it
// kills it and says so. It returns how long the exit took.
func (p *peerixProc) stop(sig syscall.Signal, timeout time.Duration) (time.Duration, error) {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	start := time.Now()
	select {
	case <-p.exited:
		return 0, nil
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return time.Since(start), nil
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

// logLines returns the lines of the process's output that contain any of
// words (case-insensitive), at most max of them.
func (p *peerixProc) logLines(max int, words ...string) []string {
	var out []string
	for _, l := range strings.Split(p.out.String(), "\n") {
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

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]\n" + s[len(s)-n:]
}

// --- peerix tracker ----------------------------------------------------------

// trackerProc is a running `peerix tracker`.
type trackerProc struct {
	*peerixProc
	base   string       // http://host:port, as client reaches it
	client *http.Client // makes requests from where the test reads the tracker
}

type trackerOptions struct {
	host      *nsHost // nil: on the test machine
	listen    string  // --listen
	relayPort int     // --relay-port
	ttl       time.Duration
	// base is the tracker's URL as client reaches it.
	base   string
	client *http.Client
}

// startTracker runs `peerix tracker` with a fresh SQLite database and waits
// (bounded) until GET /v1/info answers with a relay.
func startTracker(t *testing.T, opts trackerOptions) *trackerProc {
	t.Helper()
	db := filepath.Join(t.TempDir(), "tracker", "tracker.db")
	args := []string{"tracker",
		"--listen", opts.listen,
		"--db", db,
		"--relay-port", strconv.Itoa(opts.relayPort),
		"--peer-ttl", opts.ttl.String(),
		"--verbose",
	}
	p, err := startPeerixProc(t, "tracker", opts.host, args)
	if err != nil {
		t.Fatal(err)
	}
	tr := &trackerProc{peerixProc: p, base: opts.base, client: opts.client}
	var last string
	_, err = poll(startTimeout, 50*time.Millisecond, func() (bool, error) {
		if !p.running() {
			return false, fmt.Errorf("exited: %v", p.err)
		}
		var info trackerInfo
		code, body, err := getJSON(tr.client, tr.base+"/v1/info", &info)
		switch {
		case err != nil:
			last = err.Error()
		case code != http.StatusOK:
			last = fmt.Sprintf("HTTP %d: %s", code, body)
		case info.Relay == nil || info.Relay.PeerID == "":
			last = fmt.Sprintf("no relay in %s", body)
		default:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("peerix tracker not ready: %v (last: %s)\noutput:\n%s", err, last, tail(p.out.String(), 16<<10))
	}
	return tr
}

// trackerPeer is one entry of /v1/peers and /v1/find.
type trackerPeer struct {
	PeerID   string    `json:"peer_id"`
	Addrs    []string  `json:"addrs"`
	LastSeen time.Time `json:"last_seen"`
	Packages int       `json:"packages"`
}

type trackerPeers struct {
	Peers []trackerPeer `json:"peers"`
}

type trackerInfo struct {
	OK    bool `json:"ok"`
	Relay *struct {
		PeerID string   `json:"peer_id"`
		Addrs  []string `json:"addrs"`
	} `json:"relay"`
	ObservedAddr string  `json:"observed_addr"`
	TTLSeconds   float64 `json:"ttl_s"`
}

func getJSON(c *http.Client, url string, v any) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, body, err
	}
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, body, fmt.Errorf("GET %s: %w: %.300s", url, err, body)
		}
	}
	return resp.StatusCode, body, nil
}

// peers returns GET /v1/peers.
func (tr *trackerProc) peers() ([]trackerPeer, error) {
	var ans trackerPeers
	code, body, err := getJSON(tr.client, tr.base+"/v1/peers", &ans)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /v1/peers: HTTP %d: %.300s", code, body)
	}
	if err == nil && ans.Peers == nil {
		err = fmt.Errorf("GET /v1/peers: no peers list (want [] when empty): %.300s", body)
	}
	return ans.Peers, err
}

// find returns GET /v1/find/<hash>.
func (tr *trackerProc) find(hash string) ([]trackerPeer, error) {
	var ans trackerPeers
	code, body, err := getJSON(tr.client, tr.base+"/v1/find/"+hash, &ans)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /v1/find/%s: HTTP %d: %.300s", hash, code, body)
	}
	if err == nil && ans.Peers == nil {
		err = fmt.Errorf("GET /v1/find/%s: no peers list (want [] when empty): %.300s", hash, body)
	}
	return ans.Peers, err
}

// mustPeers and mustFind fail the test on an error.
func (tr *trackerProc) mustPeers(t *testing.T) []trackerPeer {
	t.Helper()
	ps, err := tr.peers()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func (tr *trackerProc) mustFind(t *testing.T, hash string) []trackerPeer {
	t.Helper()
	ps, err := tr.find(hash)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// ids lists the peer IDs, sorted.
func ids(ps []trackerPeer) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.PeerID)
	}
	slices.Sort(out)
	return out
}

func peerByID(ps []trackerPeer, id string) (trackerPeer, bool) {
	for _, p := range ps {
		if p.PeerID == id {
			return p, true
		}
	}
	return trackerPeer{}, false
}

// sortedCopy returns s sorted, leaving s alone.
func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// --- signed tracker writes, from docs/protocol.md ------------------------------

const signatureHeader = "X-Peerix-Signature"

// newPeerKey makes a libp2p ed25519 identity and returns it with its peer ID.
func newPeerKey(t *testing.T) (crypto.PrivKey, string) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id.String()
}

// sign is the X-Peerix-Signature value for body: standard padded base64 of
// the libp2p signature over the exact bytes.
func sign(t *testing.T, key crypto.PrivKey, body []byte) string {
	t.Helper()
	sig, err := key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// trackerAnswer is a tracker's answer to a write.
type trackerAnswer struct {
	status int
	body   []byte
	// From the JSON body, if any.
	OK     bool   `json:"ok"`
	Code   string `json:"code"`
	Error  string `json:"error"`
	LastTS int64  `json:"last_ts"`
}

// write sends one write request with the given signature header value
// (none if sig is "").
func (tr *trackerProc) write(t *testing.T, method, route string, body []byte, sig string) trackerAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, tr.base+route, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(signatureHeader, sig)
	}
	resp, err := tr.client.Do(req)
	if err != nil {
		// A server may answer an oversized body early and close; that is
		// still an answer if we got a response, which we did not here.
		t.Fatalf("%s %s: %v", method, route, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a := trackerAnswer{status: resp.StatusCode, body: b}
	_ = json.Unmarshal(b, &a)
	return a
}

// jsonBody marshals v.
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// --- peerix serve --mode p2p -------------------------------------------------

// p2pDaemon is a `peerix serve --mode p2p` under test.
type p2pDaemon struct {
	*peerixProc
	label  string
	host   *nsHost // nil: the test machine
	opts   p2pOptions
	base   string       // http://127.0.0.1:port: the daemon as its own machine sees it
	client *http.Client // makes requests from the daemon's own machine
	peerID string       // from /api/status
}

type p2pOptions struct {
	tracker        string // --tracker URL
	listen         string // --listen HOST:PORT; its port is also where base points
	p2pPort        int    // --p2p-port
	storeRoot      string
	stateDir       string
	signingKeyFile string
	trustedKeys    []string
	verbose        bool
}

func (o p2pOptions) args() []string {
	args := []string{"serve", "--mode", "p2p",
		"--tracker", o.tracker,
		// The upstream filter needs the internet, which the tests lack.
		"--filter", "none",
		"--listen", o.listen,
		"--p2p-port", strconv.Itoa(o.p2pPort),
		"--store-root", o.storeRoot,
		"--state-dir", o.stateDir,
	}
	if o.verbose {
		args = append(args, "--verbose")
	}
	if o.signingKeyFile != "" {
		args = append(args, "--signing-key-file", o.signingKeyFile)
	}
	for _, k := range o.trustedKeys {
		args = append(args, "--trusted-public-key", k)
	}
	return args
}

// apiStatus is the part of /api/status the tests read.
type apiStatus struct {
	PeerID  string `json:"peer_id"`
	Mode    string `json:"mode"`
	Version string `json:"version"`
	Tracker string `json:"tracker"`
}

// apiPeer is one entry of /api/peers.
type apiPeer struct {
	PeerID    string   `json:"peer_id"`
	Addrs     []string `json:"addrs"`
	Source    string   `json:"source"`
	Connected bool     `json:"connected"`
	Direct    bool     `json:"direct"`
	Relayed   bool     `json:"relayed"`
}

// startP2PDaemon starts the daemon and waits (bounded) until /api/status
// names its peer ID.
func startP2PDaemon(t *testing.T, label string, host *nsHost, opts p2pOptions) *p2pDaemon {
	t.Helper()
	d, err := tryStartP2PDaemon(t, label, host, opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tryStartP2PDaemon is startP2PDaemon for goroutines: it returns errors.
func tryStartP2PDaemon(t *testing.T, label string, host *nsHost, opts p2pOptions) (*p2pDaemon, error) {
	_, port, err := net.SplitHostPort(opts.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", opts.listen, err)
	}
	d := &p2pDaemon{label: label, host: host, opts: opts, base: "http://127.0.0.1:" + port}
	if host != nil {
		d.client = host.httpClient()
	} else {
		d.client = &http.Client{Timeout: requestTimeout, Transport: &http.Transport{DisableCompression: true}}
	}
	d.peerixProc, err = startPeerixProc(t, label, host, opts.args())
	if err != nil {
		return nil, err
	}
	var last string
	_, err = poll(startTimeout, 50*time.Millisecond, func() (bool, error) {
		if !d.running() {
			return false, fmt.Errorf("exited: %v", d.err)
		}
		var st apiStatus
		code, body, err := getJSON(d.client, d.base+"/api/status", &st)
		switch {
		case err != nil:
			last = err.Error()
		case code != http.StatusOK:
			last = fmt.Sprintf("HTTP %d: %.300s", code, body)
		case st.Mode != "p2p":
			return false, fmt.Errorf("/api/status says mode %q, want p2p", st.Mode)
		case st.PeerID == "":
			last = "no peer_id in /api/status"
		default:
			d.peerID = st.PeerID
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("peerix %s (%s) not ready: %v (last: %s)\noutput:\n%s",
			label, strings.Join(opts.args(), " "), err, last, tail(d.out.String(), 16<<10))
	}
	return d, nil
}

// restart stops the daemon with SIGTERM and starts it again with the same
// options (the same state dir).
func (d *p2pDaemon) restart(t *testing.T) (*p2pDaemon, time.Duration) {
	t.Helper()
	took, err := d.stop(syscall.SIGTERM, stopTimeout)
	if err != nil {
		t.Fatalf("stopping peerix %s: %v", d.label, err)
	}
	return startP2PDaemon(t, d.label, d.host, d.opts), took
}

// apiPeers reads /api/peers.
func (d *p2pDaemon) apiPeers(t *testing.T) []apiPeer {
	t.Helper()
	var ps []apiPeer
	code, body, err := getJSON(d.client, d.base+"/api/peers", &ps)
	if err != nil || code != http.StatusOK {
		t.Errorf("GET /api/peers of %s: HTTP %d, %v: %.300s", d.label, code, err, body)
		return nil
	}
	return ps
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
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
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
