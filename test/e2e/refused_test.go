package e2e

// Refused is not found: a peer asks a daemon, over the peer protocols as
// docs/protocol.md describes them, about paths it guesses the daemon might
// hold privately. The attacker is a libp2p host written here from the
// protocol description: framed requests on /peerix/narinfo/1.0.0,
// /peerix/nar/1.0.0 and /peerix/nar/1.1.0 (with a range and the block
// format asked for). Neither the answer nor its timing may tell a private
// path from an absent one.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/nixtest"
)

// slowUpstream is a binary cache that serves the narinfos in dir at once
// and answers 404 for anything else only after delay: the filter of a
// daemon that waits for it on a peer's request gives its private paths
// away by the time they take. asked reports whether a file was requested
// and answered.
func slowUpstream(t *testing.T, dir string, delay time.Duration) (url string, asked func(name string) bool) {
	t.Helper()
	var answered sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := filepath.Base(r.URL.Path)
		defer answered.Store(name, true)
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil && strings.HasSuffix(name, ".narinfo") {
			w.Header().Set("Content-Type", "text/x-nix-narinfo")
			w.Write(b)
			return
		}
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func(name string) bool { _, ok := answered.Load(name); return ok }
}

// p2pProbe is the attacker: a libp2p host of its own, connected to the
// daemon under test.
type p2pProbe struct {
	h      host.Host
	target peer.ID
}

func newP2PProbe(t *testing.T, targetID string, port int) *p2pProbe {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	id, err := peer.Decode(targetID)
	if err != nil {
		t.Fatal(err)
	}
	ai := peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/" + strconv.Itoa(port))}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, ai); err != nil {
		t.Fatalf("the attacker cannot connect to the daemon: %v", err)
	}
	return &p2pProbe{h: h, target: id}
}

// ask sends one framed request on proto and returns the first answer
// frame as it came (length included) and how long it took from the
// request's last byte.
func (p *p2pProbe) ask(t *testing.T, proto protocol.ID, req []byte) ([]byte, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := p.h.NewStream(ctx, p.target, proto)
	if err != nil {
		t.Fatalf("stream %s: %v", proto, err)
	}
	defer st.Reset()
	st.SetDeadline(time.Now().Add(15 * time.Second))
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(req)))
	if _, err := st.Write(append(frame, req...)); err != nil {
		t.Fatalf("request on %s: %v", proto, err)
	}
	start := time.Now()
	var hdr [4]byte
	if _, err := io.ReadFull(st, hdr[:]); err != nil {
		t.Fatalf("answer on %s: %v", proto, err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > 64<<10 {
		t.Fatalf("answer frame of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(st, body); err != nil {
		t.Fatalf("answer on %s: %v", proto, err)
	}
	return append(hdr[:], body...), time.Since(start)
}

func (p *p2pProbe) narInfo(t *testing.T, hash string) ([]byte, time.Duration) {
	return p.ask(t, "/peerix/narinfo/1.0.0", []byte(hash))
}

func (p *p2pProbe) nar(t *testing.T, hash, narHash string) ([]byte, time.Duration) {
	req := append([]byte(hash+narHash), make([]byte, 8)...) // offset 0
	return p.ask(t, "/peerix/nar/1.0.0", req)
}

// nar11 asks /peerix/nar/1.1.0 for length bytes from offset, taking the
// block format.
func (p *p2pProbe) nar11(t *testing.T, hash, narHash string, offset, length uint64) ([]byte, time.Duration) {
	req := binary.BigEndian.AppendUint64([]byte(hash+narHash), offset)
	req = binary.BigEndian.AppendUint64(req, length)
	req = append(req, 0x01) // flags: the block format
	return p.ask(t, "/peerix/nar/1.1.0", req)
}

// TestRefusedLooksAbsent: a p2p daemon A whose filter asks an upstream
// that takes 3 s to say "not here"; A holds private paths (the upstream
// lacks them), a deny-listed one and a public one. An attacker asks A, over
// the peer protocols, for each private path (while the filter has not
// decided it yet) and for absent ones: every answer is the same frame,
// "not found", and the private ones come no later than the absent ones (no
// upstream round trip shows). Asked again once the filter has decided,
// the same. The public path is found (the attacker does speak the
// protocol).
func TestRefusedLooksAbsent(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	const (
		nPrivate = 8
		delay    = 3 * time.Second
	)
	ctx := t.Context()
	aStore := initStore(t, "a-store")
	// The public path first: A's inventory decides paths in the order they
	// were registered, so it is shared before the private ones' 3 s end.
	public, err := nixtest.AddFile(ctx, aStore, "peerix-public-"+randomNix32(6), []byte("public"))
	if err != nil {
		t.Fatal(err)
	}
	var private []string
	for i := range nPrivate {
		p, err := nixtest.AddFile(ctx, aStore, fmt.Sprintf("peerix-private-%d-%s", i, randomNix32(6)), []byte("private "+randomNix32(20)))
		if err != nil {
			t.Fatal(err)
		}
		private = append(private, p)
	}
	denied, err := nixtest.AddFile(ctx, aStore, "peerix-db-secret-"+randomNix32(6), []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(t.TempDir(), "cache")
	copyPaths(t, aStore, "file://"+cacheDir+"?compression=none", public)
	upstream, asked := slowUpstream(t, cacheDir, delay)

	// No tracker and no LAN. A's inventory asks the filter about every
	// local path at start, in the background; the upstream takes 3 s to
	// answer each private one, so the attacker's first requests (well
	// within those 3 s) find them undecided.
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	o := p2pDaemon(nil, "", aStore, filepath.Join(t.TempDir(), "state"),
		"--filter", "upstream", "--upstream", upstream, "--p2p-port", strconv.Itoa(port), "--verbose")
	o.label = "A"
	da := startPeerix(t, o)
	started := time.Now()

	probe := newP2PProbe(t, da.peerID, port)
	notFound := []byte{0, 0, 0, 1, 0x01}

	// The public path: found (the attacker speaks the protocol right).
	waitFor(t, "A to share the public path", 10*time.Second, func() (bool, string) {
		b, _ := probe.narInfo(t, hashPart(public))
		return len(b) > 5 && b[4] == 0x00, fmt.Sprintf("answer %q", b)
	})

	pubNH := strings.TrimPrefix(nixtest.MustInfo(t, aStore, public).NarHash, "sha256:")
	if b, _ := probe.nar11(t, hashPart(public), pubNH, 0, 10); len(b) != 4+1+8+1 || b[4] != 0x00 {
		t.Fatalf("NAR 1.1.0 of the public path: answer %x, want found (the attacker speaks 1.1.0 right)", b)
	}

	var tPrivate, tAbsent []time.Duration
	for i, p := range private {
		b, d := probe.narInfo(t, hashPart(p))
		if !slices.Equal(b, notFound) {
			t.Errorf("narinfo of private path %s: answer %x, want %x (not found, as for an absent path)", p, b, notFound)
		}
		tPrivate = append(tPrivate, d)
		b, d = probe.narInfo(t, randomNix32(32))
		if !slices.Equal(b, notFound) {
			t.Errorf("narinfo of an absent path: answer %x, want %x", b, notFound)
		}
		tAbsent = append(tAbsent, d)
		// The NAR protocol, with the private path's true NarHash.
		nh := strings.TrimPrefix(nixtest.MustInfo(t, aStore, p).NarHash, "sha256:")
		b, _ = probe.nar(t, hashPart(p), nh)
		if !slices.Equal(b, notFound) {
			t.Errorf("NAR of private path %s (#%d): answer %x, want %x", p, i, b, notFound)
		}
		b, _ = probe.nar(t, randomNix32(32), nh)
		if !slices.Equal(b, notFound) {
			t.Errorf("NAR of an absent path: answer %x, want %x", b, notFound)
		}
		// 1.1.0: a range, in the block format, and a range beyond the
		// NAR (a held path's would be an error).
		for _, r := range [][2]uint64{{0, 0}, {10, 100}, {1 << 40, 1}} {
			b, _ = probe.nar11(t, hashPart(p), nh, r[0], r[1])
			if !slices.Equal(b, notFound) {
				t.Errorf("NAR 1.1.0 of private path %s, offset %d length %d: answer %x, want %x", p, r[0], r[1], b, notFound)
			}
			b, _ = probe.nar11(t, randomNix32(32), nh, r[0], r[1])
			if !slices.Equal(b, notFound) {
				t.Errorf("NAR 1.1.0 of an absent path, offset %d length %d: answer %x, want %x", r[0], r[1], b, notFound)
			}
		}
	}
	nh := strings.TrimPrefix(nixtest.MustInfo(t, aStore, denied).NarHash, "sha256:")
	for _, what := range []string{"narinfo", "NAR", "NAR 1.1.0"} {
		var b []byte
		switch what {
		case "narinfo":
			b, _ = probe.narInfo(t, hashPart(denied))
		case "NAR":
			b, _ = probe.nar(t, hashPart(denied), nh)
		default:
			b, _ = probe.nar11(t, hashPart(denied), nh, 1, 2)
		}
		if !slices.Equal(b, notFound) {
			t.Errorf("%s of the deny-listed path: answer %x, want %x", what, b, notFound)
		}
	}
	slices.Sort(tPrivate)
	slices.Sort(tAbsent)
	med := func(d []time.Duration) time.Duration { return d[len(d)/2] }
	t.Logf("answer times, private paths: %v; absent paths: %v", tPrivate, tAbsent)
	if slices.Max(tPrivate) >= delay/2 || med(tPrivate)-med(tAbsent) > 10*time.Millisecond {
		t.Errorf("private paths are answered later than absent ones (median %v against %v, slowest %v): the upstream's %v shows",
			med(tPrivate), med(tAbsent), slices.Max(tPrivate), delay)
	}
	if undecided := time.Since(started); undecided >= delay {
		t.Logf("the first requests took %v: some private paths may have been decided already", undecided)
	}
	// The private paths were decided in the background meanwhile: asked
	// again, still the same answer, as fast.
	waitFor(t, "A's filter to hear the upstream on the private paths", 20*time.Second, func() (bool, string) {
		n := 0
		for _, p := range private {
			if asked(hashPart(p) + ".narinfo") {
				n++
			}
		}
		return n == nPrivate, fmt.Sprintf("%d of %d answered", n, nPrivate)
	})
	var again, absentAgain []time.Duration
	for _, p := range private {
		b, d := probe.narInfo(t, hashPart(p))
		if !slices.Equal(b, notFound) || d >= delay/2 {
			t.Errorf("private path %s asked again: %x after %v", p, b, d)
		}
		again = append(again, d)
		_, d = probe.narInfo(t, randomNix32(32))
		absentAgain = append(absentAgain, d)
	}
	slices.Sort(again)
	slices.Sort(absentAgain)
	t.Logf("asked again, decided: private paths: %v; absent paths: %v", again, absentAgain)
	da.alive(t)
}
