package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

// servedPair is a host serving a memStore and a host asking it.
func servedPair(t *testing.T) (server, client *Host, st *memStore) {
	t.Helper()
	server, client = newTestHost(t), newTestHost(t)
	st = newMemStore()
	srv := Serve(server, st, 0, testLog(t))
	t.Cleanup(func() { srv.Close() })
	know(client, server)
	return server, client, st
}

func TestQueryNarInfo(t *testing.T) {
	server, client, st := servedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	found := randomHash(t)
	e := st.add(found, []byte("nix-archive-1 pretend"))
	refused := randomHash(t)
	st.add(refused, []byte("secret")).refused = true

	ni, err := QueryNarInfo(ctx, client, server.ID(), found)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(cache.AppendNarInfo(nil, ni)), string(cache.AppendNarInfo(nil, e.ni)); got != want {
		t.Errorf("narinfo:\n%s\nwant:\n%s", got, want)
	}
	if err := store.CheckPeerNarInfo(ni, found); err != nil {
		t.Error(err)
	}

	if _, err := QueryNarInfo(ctx, client, server.ID(), randomHash(t)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("absent path: %v, want ErrNotFound", err)
	}
	// A refused path is answered exactly like an absent one.
	if _, err := QueryNarInfo(ctx, client, server.ID(), refused); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrRefused) {
		t.Errorf("refused path: %v, want ErrNotFound", err)
	}
	if _, err := QueryNarInfo(ctx, client, server.ID(), "not-a-hash"); !errors.Is(err, store.ErrBadRequest) {
		t.Errorf("bad hash: %v, want ErrBadRequest", err)
	}
}

func TestOpenNAROffsets(t *testing.T) {
	server, client, st := servedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data := make([]byte, 300<<10+7)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	hash := randomHash(t)
	e := st.add(hash, data)
	for _, off := range []int64{0, 1, int64(len(data)) / 2, int64(len(data)) - 1, int64(len(data))} {
		size, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), off, 0, false)
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		got, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		if size != int64(len(data)) || !bytes.Equal(got, data[off:]) {
			t.Fatalf("offset %d: size %d, %d bytes, mismatch", off, size, len(got))
		}
	}
	// Beyond the end: an error answer, not a dropped stream.
	_, _, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), int64(len(data))+1, 0, false)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Errorf("offset beyond the end: %v, want a RemoteError", err)
	}
	// Another NarHash: not found.
	other := "1" + narHashOf(e)[1:]
	if other == narHashOf(e) {
		other = "0" + narHashOf(e)[1:]
	}
	if _, _, err := OpenNAR(ctx, client, server.ID(), hash, other, 0, 0, false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("other NarHash: %v, want ErrNotFound", err)
	}
}

// A 64 MiB NAR streams through with bounded memory on both ends.
func TestOpenNARLargeBoundedMemory(t *testing.T) {
	server, client, st := servedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	const size = 64 << 20
	hash := randomHash(t)
	e := st.addGenerated(hash, size, 42)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()

	start := time.Now()
	gotSize, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, body)
	body.Close()
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	if gotSize != size || n != size || !bytes.Equal(h.Sum(nil), e.ni.NarHash.Digest()) {
		t.Fatalf("size %d, read %d, hash mismatch", gotSize, n)
	}
	growth := int64(peak.Load()) - int64(base)
	t.Logf("64 MiB in %v; heap in use %d MiB before, peak %d MiB", time.Since(start).Round(time.Millisecond), base>>20, peak.Load()>>20)
	if growth > 32<<20 {
		t.Errorf("heap grew by %d MiB while streaming 64 MiB", growth>>20)
	}
}

// Garbage requests get a framed error answer; garbage answers are protocol
// errors.
func TestGarbage(t *testing.T) {
	server, client, _ := servedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, tc := range []struct {
		name    string
		proto   string
		request []byte
	}{
		{"narinfo frame too long", string(NarInfoProtocol), frame(bytes.Repeat([]byte("a"), 1000))},
		{"narinfo bad hash", string(NarInfoProtocol), frame([]byte("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"))},
		{"narinfo huge length", string(NarInfoProtocol), []byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}},
		{"nar short", string(NARProtocol), frame(make([]byte, 91))},
		{"nar zeros", string(NARProtocol), frame(make([]byte, 92))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := client.NewStream(ctx, server.ID(), protoID(tc.proto))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(5 * time.Second))
			st.Write(tc.request)
			st.CloseWrite()
			a, err := ReadStatus(st, MaxNarInfoFrame)
			if err != nil {
				t.Fatalf("no framed answer: %v", err)
			}
			if a.Status != StatusError || len(a.Payload) == 0 {
				t.Errorf("answer %d %q, want an error with a message", a.Status, a.Payload)
			}
		})
	}

	// A truncated request (the asker closes early) does not hang the server.
	st, err := client.NewStream(ctx, server.ID(), NarInfoProtocol)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0, 0})
	st.CloseWrite()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, st)
	st.Close()

	// A peer answering garbage.
	liar := newTestHost(t)
	liar.SetStreamHandler(NarInfoProtocol, func(s network.Stream) {
		defer s.Close()
		readExactFrame(s, 32)
		writeFrame(s, []byte{0x07, 'x'})
	})
	liar.SetStreamHandler(NARProtocol, func(s network.Stream) {
		defer s.Close()
		readExactFrame(s, narRequestLen)
		writeFrame(s, []byte{StatusFound, 1, 2}) // found without a proper size
	})
	know(client, liar)
	if _, err := QueryNarInfo(ctx, client, liar.ID(), randomHash(t)); !errors.Is(err, ErrProtocol) {
		t.Errorf("garbage narinfo answer: %v, want ErrProtocol", err)
	}
	if _, _, err := OpenNAR(ctx, client, liar.ID(), randomHash(t), validNarHashString(), 0, 0, false); !errors.Is(err, ErrProtocol) {
		t.Errorf("garbage NAR answer: %v, want ErrProtocol", err)
	}
}

func validNarHashString() string {
	sum := sha256.Sum256([]byte("x"))
	return narInfoFor("00000000000000000000000000000000", "x", sum[:], 1).NarHash.Format(nixhash.NixBase32, false)
}

func frame(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// A peer that never answers is abandoned within the request deadline.
func TestDeadlines(t *testing.T) {
	old := RequestTimeout
	RequestTimeout = 500 * time.Millisecond
	t.Cleanup(func() { RequestTimeout = old })

	client, mute := newTestHost(t), newTestHost(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	mute.SetStreamHandler(NarInfoProtocol, func(s network.Stream) { <-release; s.Reset() })
	mute.SetStreamHandler(NARProtocol, func(s network.Stream) { <-release; s.Reset() })
	know(client, mute)
	ctx := context.Background()

	start := time.Now()
	_, err := QueryNarInfo(ctx, client, mute.ID(), randomHash(t))
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("mute narinfo peer: %v after %v", err, time.Since(start))
	}
	start = time.Now()
	_, _, err = OpenNAR(ctx, client, mute.ID(), randomHash(t), validNarHashString(), 0, 0, false)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("mute NAR peer: %v after %v", err, time.Since(start))
	}

	// A body that stops flowing fails after BodyTimeout.
	oldBody := BodyTimeout
	BodyTimeout = 1500 * time.Millisecond
	t.Cleanup(func() { BodyTimeout = oldBody })
	server, st := newTestHost(t), newMemStore()
	srv := Serve(server, st, 0, testLog(t))
	t.Cleanup(func() { srv.Close() })
	know(client, server)
	hash := randomHash(t)
	e := st.add(hash, []byte("some bytes"))
	e.hang = true
	_, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, err = io.ReadAll(body)
	body.Close()
	if err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("stalled body: %v after %v", err, time.Since(start))
	}
}

// A peer that asks for NARs and never reads holds a transfer slot (and on
// a real store an open file) only until BodyTimeout without progress;
// beyond the server's transfers, requests are answered busy at once.
func TestServerSlowReaders(t *testing.T) {
	oldBody := BodyTimeout
	BodyTimeout = time.Second
	t.Cleanup(func() { BodyTimeout = oldBody })
	server, client := newTestHost(t), newTestHost(t)
	st := newMemStore()
	srv := Serve(server, st, 1, testLog(t))
	t.Cleanup(func() { srv.Close() })
	know(client, server)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hash := randomHash(t)
	e := st.addGenerated(hash, 64<<20, 7) // beyond any stream window

	// The slow reader: never reads its body.
	_, stalled, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	// The one slot is taken: busy, at once.
	start := time.Now()
	_, _, err = OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 0, 0, false)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "busy") || time.Since(start) > time.Second {
		t.Fatalf("a request beyond the transfers: %v after %v, want busy at once", err, time.Since(start))
	}
	// The stalled transfer is cut once it made no progress for
	// BodyTimeout; the slot serves the next asker.
	var size int64
	var body io.ReadCloser
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		size, body, err = OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 64<<20-10, 0, false)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot of a reader that never reads was not freed: %v", err)
		}
	}
	t.Logf("slot freed %v after the stalled transfer began", time.Since(start).Round(100*time.Millisecond))
	b, err := io.ReadAll(body)
	body.Close()
	if err != nil || size != 64<<20 || len(b) != 10 {
		t.Errorf("after the cut: %d bytes of %d, %v", len(b), size, err)
	}
	if _, err := io.ReadAll(stalled); err == nil {
		t.Error("the stalled transfer ended cleanly; it must have been cut")
	}
}

// /peerix/nar/1.1.0: byte ranges, and the block format when the asker
// takes it (the first block is always tried compressed; later ones only on
// a link slower than compressing, which loopback is not); an asker of a
// server that speaks only 1.0.0 gets the same bytes.
func TestOpenNARRangesAndBlocks(t *testing.T) {
	server, client, st := servedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	text := bytes.Repeat([]byte("a NAR of text compresses well enough\n"), 40000)
	random := make([]byte, 1<<20)
	rand.Read(random)
	for name, data := range map[string][]byte{"text": text, "random": random} {
		hash := randomHash(t)
		e := st.add(hash, data)
		for _, tc := range []struct{ off, length int64 }{{0, 0}, {0, 300 << 10}, {12345, 500 << 10}, {int64(len(data)) - 10, 10}} {
			for _, blocks := range []bool{false, true} {
				size, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), tc.off, tc.length, blocks)
				if err != nil {
					t.Fatalf("%s %+v blocks %v: %v", name, tc, blocks, err)
				}
				got, err := io.ReadAll(body)
				wire := body.(interface{ WireBytes() int64 }).WireBytes()
				body.Close()
				want := data[tc.off:]
				if tc.length > 0 {
					want = data[tc.off : tc.off+tc.length]
				}
				if err != nil || size != int64(len(data)) || !bytes.Equal(got, want) {
					t.Fatalf("%s %+v blocks %v: %d bytes (want %d), %v", name, tc, blocks, len(got), len(want), err)
				}
				compressed := wire < int64(len(want))
				if wantCompressed := blocks && name == "text" && len(want) > 64<<10; compressed != wantCompressed {
					t.Errorf("%s %+v blocks %v: %d wire bytes for %d", name, tc, blocks, wire, len(want))
				}
			}
		}
	}

	// A server of 1.0.0 only: ranges are cut by the reader.
	server.RemoveStreamHandler(NARProtocol11)
	client.Peerstore().RemoveProtocols(server.ID(), NARProtocol11) // as if it never spoke it
	hash := randomHash(t)
	e := st.add(hash, text)
	_, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 100, 1000, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, text[100:1100]) {
		t.Fatalf("range from a 1.0.0 server: %d bytes, %v", len(got), err)
	}
}

// Where both transports reach the peer, both connections come up (the dial
// ranker dials TCP beside QUIC) and NAR streams take the TCP one; where
// only QUIC does, they go on QUIC.
func TestNARStreamPrefersTCP(t *testing.T) {
	for _, onlyQUIC := range []bool{false, true} {
		t.Run(fmt.Sprintf("only QUIC %v", onlyQUIC), func(t *testing.T) {
			server, client := newTestHost(t), newTestHost(t)
			st := newMemStore()
			srv := Serve(server, st, 0, testLog(t))
			t.Cleanup(func() { srv.Close() })
			ai := loopbackInfo(server)
			if onlyQUIC {
				ai.Addrs = slices.DeleteFunc(ai.Addrs, isTCP)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := client.Connect(ctx, ai); err != nil {
				t.Fatal(err)
			}
			if !onlyQUIC {
				for directTCPConn(client, server.ID()) == nil {
					if ctx.Err() != nil {
						t.Fatalf("no TCP connection beside QUIC: %v", client.Network().ConnsToPeer(server.ID()))
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			data := bytes.Repeat([]byte("peerix"), 50<<10)
			hash := randomHash(t)
			e := st.add(hash, data)
			_, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 0, 0, false)
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			got, err := io.ReadAll(body)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("NAR: %d bytes, %v", len(got), err)
			}
			if tcp := isTCP(body.(*narBody).st.Conn().RemoteMultiaddr()); tcp == onlyQUIC {
				t.Errorf("NAR stream on %s", body.(*narBody).st.Conn().RemoteMultiaddr())
			}
		})
	}
}

// Hole punching tries TCP alone first, then every transport, with peers
// that do the same; a peer with no TCP address is punched with what it
// has, an older peer with every transport.
func TestHolePunchTriesTCPFirst(t *testing.T) {
	tcp := ma.StringCast("/ip4/11.0.0.1/tcp/12306")
	quic := ma.StringCast("/ip4/11.0.0.1/udp/12306/quic-v1")
	h := newTestHost(t)
	f := &tcpFirst{tries: map[peer.ID]punchTries{}}
	f.setHost(h)
	for _, p := range []peer.ID{"a", "b"} {
		h.Peerstore().AddProtocols(p, TCPFirstProtocol)
	}
	if got := f.FilterRemote("old", []ma.Multiaddr{quic, tcp}); len(got) != 2 {
		t.Errorf("a peer that does not punch TCP first: %v, want both", got)
	}
	if got := f.FilterRemote("a", []ma.Multiaddr{quic, tcp}); len(got) != 1 || !got[0].Equal(tcp) {
		t.Errorf("first attempt: %v, want TCP alone", got)
	}
	if got := f.FilterRemote("a", []ma.Multiaddr{quic, tcp}); len(got) != 2 {
		t.Errorf("second attempt: %v, want both", got)
	}
	if got := f.FilterRemote("b", []ma.Multiaddr{quic}); len(got) != 1 || !got[0].Equal(quic) {
		t.Errorf("no TCP address: %v, want QUIC", got)
	}
	if got := f.FilterLocal("a", []ma.Multiaddr{quic, tcp}); len(got) != 2 {
		t.Errorf("own addresses: %v, want all", got)
	}
}
