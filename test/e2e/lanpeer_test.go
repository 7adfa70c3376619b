package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// The LAN side of the tests: the LAN wire format written down from the spec
// (independently of internal/lan), and a stand-in for the original Python
// peerix. The peerix daemons on the simulated hosts are started with
// startPeerix(lanDaemon(...)).

// lanPort is the UDP port of LAN discovery and, in these tests, also the
// HTTP port of every daemon and of the old peer, as in the original.
const lanPort = 12304

// clientGet makes one request with c and returns the response with its body
// read.
func clientGet(t testing.TB, c *http.Client, method, url string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := clientDo(c, method, url)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, body
}

func clientDo(c *http.Client, method, url string) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	return doRequest(ctx, c, method, url)
}

// clientDigest GETs url with c and returns the status and the hex SHA-256
// and length of the body.
func clientDigest(c *http.Client, url string) (int, []byte, int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return resp.StatusCode, nil, n, fmt.Errorf("GET %s: reading body after %d bytes: %w", url, n, err)
	}
	return resp.StatusCode, h.Sum(nil), n, nil
}

// --- the LAN wire format, from SPEC.md ------------------------------------

const (
	wireRequestKind  = 0x00
	wireResponseKind = 0x01
)

// wireRequest is byte 0x00, u32 request id, the 32 ASCII bytes of the hash.
func wireRequest(id uint32, hash string) []byte {
	b := []byte{wireRequestKind}
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, hash...)
}

// wireResponse is byte 0x01, u32 request id, u32 HTTP port, the narinfo
// path relative to http://<responder>:<port>/.
func wireResponse(id, port uint32, path string) []byte {
	b := []byte{wireResponseKind}
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, port)
	return append(b, path...)
}

// wireAnswer is a response as received.
type wireAnswer struct {
	from netip.AddrPort
	id   uint32
	port uint32
	path string
}

func (a wireAnswer) String() string {
	return fmt.Sprintf("%s: id %d port %d %q", a.from, a.id, a.port, a.path)
}

func parseWireResponse(b []byte) (id, port uint32, path string, ok bool) {
	if len(b) < 10 || b[0] != wireResponseKind {
		return 0, 0, "", false
	}
	return binary.BigEndian.Uint32(b[1:5]), binary.BigEndian.Uint32(b[5:9]), string(b[9:]), true
}

func parseWireRequest(b []byte) (id uint32, hash string, ok bool) {
	if len(b) != 1+4+32 || b[0] != wireRequestKind {
		return 0, "", false
	}
	return binary.BigEndian.Uint32(b[1:5]), string(b[5:]), true
}

// askLAN sends a request for hash from conn to `to` (usually the LAN's
// broadcast address) and collects the responses to it until wait is over.
// conn must not be read by anyone else meanwhile.
func askLAN(t *testing.T, conn *net.UDPConn, to netip.AddrPort, hash string, wait time.Duration) []wireAnswer {
	t.Helper()
	id := mrand.Uint32()
	if _, err := conn.WriteToUDPAddrPort(wireRequest(id, hash), to); err != nil {
		t.Fatalf("sending a LAN request to %s: %v", to, err)
	}
	return collectAnswers(t, conn, wait, func(a wireAnswer) bool { return a.id == id })
}

// collectAnswers reads responses from conn until wait is over and returns
// those match accepts; any other datagram is ignored.
func collectAnswers(t *testing.T, conn *net.UDPConn, wait time.Duration, match func(wireAnswer) bool) []wireAnswer {
	t.Helper()
	var answers []wireAnswer
	deadline := time.Now().Add(wait)
	buf := make([]byte, 2048)
	for {
		if err := conn.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return answers
			}
			t.Fatalf("reading LAN answers: %v", err)
		}
		id, port, path, ok := parseWireResponse(buf[:n])
		if !ok {
			continue
		}
		a := wireAnswer{from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), id: id, port: port, path: path}
		if match(a) {
			answers = append(answers, a)
		}
	}
}

// --- a stand-in for the original peerix -----------------------------------

// oldPeer speaks only what the original Python peerix speaks: it listens on
// UDP 12304, answers requests for the paths it holds with
// `0x01 id port "local/<hash>.narinfo"`, broadcasts its own requests, and
// serves, like nix-serve behind the original, `/local/<hash>.narinfo` whose
// URL is `local/nar/<...>.nar` (relative to its root) and the NAR there.
type oldPeer struct {
	t         *testing.T
	host      *nsHost
	broadcast netip.Addr
	conn      *net.UDPConn
	httpPort  int
	key       nixKey

	mu      sync.Mutex
	paths   map[string]*oldPath // by hash part
	nars    map[string]*oldPath // by NAR URL path, "/local/nar/<...>.nar"
	pending map[uint32]chan wireAnswer
	hits    []string // "METHOD /path" of every HTTP request it got
	ranges  []string // "/path bytes=N-" of every request with a Range header
	// onRequest, if set, decides the answer to every request it hears:
	// the datagrams to send back. A hostile peer is an old peer with this.
	onRequest func(from netip.AddrPort, id uint32, hash string) [][]byte
	// handlers overrides what it serves at a URL path.
	handlers map[string]http.HandlerFunc
}

type oldPath struct {
	path    string
	narinfo string
	narFile string
}

// nixKey is an ed25519 signing key in Nix's naming.
type nixKey struct {
	name   string
	secret ed25519.PrivateKey
}

func newNixKey(t *testing.T, name string) nixKey {
	t.Helper()
	_, sec, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return nixKey{name: name, secret: sec}
}

// public is the key as trusted-public-keys takes it.
func (k nixKey) public() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.secret.Public().(ed25519.PublicKey))
}

// sign returns the Sig value for Nix's fingerprint of a path.
func (k nixKey) sign(path string, f pathFacts) string {
	fp := fmt.Sprintf("1;%s;%s;%d;%s", path, f.narHash, f.narSize, strings.Join(f.refs, ","))
	return k.name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.secret, []byte(fp)))
}

// startOldPeer runs an old peer on h, on UDP and TCP port 12304.
func startOldPeer(t *testing.T, lan *lanNet, h *nsHost) *oldPeer {
	t.Helper()
	p := &oldPeer{
		t:         t,
		host:      h,
		broadcast: lan.broadcast,
		conn:      h.listenUDP(t, lanPort),
		httpPort:  lanPort,
		key:       newNixKey(t, "old-peerix-e2e-"+strings.ToLower(h.label)),
		paths:     map[string]*oldPath{},
		nars:      map[string]*oldPath{},
		pending:   map[uint32]chan wireAnswer{},
		handlers:  map[string]http.HandlerFunc{},
	}
	ln := h.listenTCP(t, fmt.Sprintf("0.0.0.0:%d", lanPort))
	srv := &http.Server{Handler: http.HandlerFunc(p.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	go p.serveUDP()
	t.Cleanup(func() {
		srv.Close()
		p.conn.Close()
	})
	return p
}

// anotherPort makes the old peer serve its HTTP side on one more port too,
// and returns it: a hostile peer that names another port in each answer
// is another holder each time to peerix (which shuns a holder, ip:port,
// once caught lying).
func (p *oldPeer) anotherPort(t *testing.T) uint32 {
	t.Helper()
	ln := p.host.listenTCP(t, "0.0.0.0:0")
	srv := &http.Server{Handler: http.HandlerFunc(p.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

// hold makes the old peer hold path: its NAR is dumped from the store src
// into a file, its narinfo rendered from what `nix-store -q` said of it and
// signed with the peer's key.
func (p *oldPeer) hold(t *testing.T, src, path string, f pathFacts) {
	t.Helper()
	file := filepath.Join(t.TempDir(), filepath.Base(path)+".nar")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nixTimeout)
	defer cancel()
	err = nixtest.DumpTo(ctx, out, src, path)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	h := hashPart(path)
	narURL := "local/nar/" + h + "-" + strings.TrimPrefix(f.narHash, "sha256:") + ".nar"
	var refs []string
	for _, r := range f.refs {
		refs = append(refs, filepath.Base(r))
	}
	ni := fmt.Sprintf("StorePath: %s\nURL: %s\nCompression: none\nNarHash: %s\nNarSize: %d\nReferences: %s\nSig: %s\n",
		path, narURL, f.narHash, f.narSize, strings.Join(refs, " "), p.key.sign(path, f))
	op := &oldPath{path: path, narinfo: ni, narFile: file}
	p.mu.Lock()
	p.paths[h] = op
	p.nars["/"+narURL] = op
	p.mu.Unlock()
}

func (p *oldPeer) serveUDP() {
	buf := make([]byte, 2048)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() == p.host.addr {
			continue // our own broadcast
		}
		b := buf[:n]
		if id, hash, ok := parseWireRequest(b); ok {
			p.mu.Lock()
			onRequest, held := p.onRequest, p.paths[hash] != nil
			p.mu.Unlock()
			var replies [][]byte
			switch {
			case onRequest != nil:
				replies = onRequest(from, id, hash)
			case held:
				replies = [][]byte{wireResponse(id, uint32(p.httpPort), "local/"+hash+".narinfo")}
			}
			for _, r := range replies {
				_, _ = p.conn.WriteToUDPAddrPort(r, from)
			}
			continue
		}
		if id, port, path, ok := parseWireResponse(b); ok {
			p.mu.Lock()
			ch := p.pending[id]
			p.mu.Unlock()
			if ch != nil {
				select {
				case ch <- wireAnswer{from: from, id: id, port: port, path: path}:
				default:
				}
			}
		}
	}
}

// ask broadcasts a request for hash as the original does and returns the
// answers that came within wait.
func (p *oldPeer) ask(hash string, wait time.Duration) []wireAnswer {
	id := mrand.Uint32()
	ch := make(chan wireAnswer, 16)
	p.mu.Lock()
	p.pending[id] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}()
	if _, err := p.conn.WriteToUDPAddrPort(wireRequest(id, hash), netip.AddrPortFrom(p.broadcast, lanPort)); err != nil {
		p.t.Errorf("old peer: broadcasting a request: %v", err)
		return nil
	}
	var answers []wireAnswer
	timeout := time.After(wait)
	for {
		select {
		case a := <-ch:
			answers = append(answers, a)
		case <-timeout:
			return answers
		}
	}
}

func (p *oldPeer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.hits = append(p.hits, r.Method+" "+r.URL.Path)
	if rng := r.Header.Get("Range"); rng != "" {
		p.ranges = append(p.ranges, r.URL.Path+" "+rng)
	}
	handler := p.handlers[r.URL.Path]
	var op *oldPath
	if h, ok := strings.CutPrefix(r.URL.Path, "/local/"); ok && strings.HasSuffix(h, ".narinfo") {
		op = p.paths[strings.TrimSuffix(h, ".narinfo")]
	}
	nar := p.nars[r.URL.Path]
	p.mu.Unlock()
	switch {
	case handler != nil:
		handler(w, r)
	case op != nil:
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		io.WriteString(w, op.narinfo)
	case nar != nil:
		f, err := os.Open(nar.narFile)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/x-nix-nar")
		http.ServeContent(w, r, "", time.Time{}, f)
	default:
		http.NotFound(w, r)
	}
}

// rangeRequests returns the Range requests the old peer got so far.
func (p *oldPeer) rangeRequests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ranges...)
}

// handle makes the old peer serve urlPath with h.
func (p *oldPeer) handle(urlPath string, h http.HandlerFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.handlers[urlPath] = h
}

// narURL is the URL (relative to the root) of a held path's NAR.
func (p *oldPeer) narURL(path string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for u, op := range p.nars {
		if op.path == path {
			return u
		}
	}
	return ""
}

// requests returns the HTTP requests the old peer got so far.
func (p *oldPeer) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.hits...)
}

// introduce makes the old peer known to the daemons as a peer that speaks
// only the original format, as any original peer becomes known: it
// broadcasts a request of its own (what it does whenever its Nix looks a
// path up). It returns once every daemon logged that it noticed.
func (p *oldPeer) introduce(t *testing.T, daemons ...*peerixProc) {
	t.Helper()
	p.ask(randomNix32(32), 50*time.Millisecond)
	const noticed = "LAN peer speaks only the original format"
	for _, d := range daemons {
		deadline := time.Now().Add(5 * time.Second)
		heard := func() bool {
			for _, l := range strings.Split(d.log.String(), "\n") {
				if strings.Contains(l, noticed) && strings.Contains(l, p.host.addr.String()) {
					return true
				}
			}
			return false
		}
		for !heard() {
			if time.Now().After(deadline) {
				t.Fatalf("%s never noticed the old peer on %s (no log line %q)", d.label, p.host.label, noticed)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
