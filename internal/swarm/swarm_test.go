package swarm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
)

const testHash = "0123456789abcdfghijklmnpqrsvwxyz"

// content is a NAR and its narinfo.
type content struct {
	nar []byte
	ni  *narinfo.NarInfo
}

func newContent(size int, seed uint64) content {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	sum := sha256.Sum256(b)
	return content{nar: b, ni: &narinfo.NarInfo{
		StorePath:   "/nix/store/" + testHash + "-fixture",
		URL:         "nar/" + testHash + ".nar",
		Compression: "none",
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true),
		NarSize:     uint64(size),
	}}
}

func (c content) narHash() string { return c.ni.NarHash.Format(nixhash.NixBase32, false) }

// holder is a fake peer with scripted behaviour.
type holder struct {
	id      string
	c       content
	absent  bool
	delay   time.Duration // before the narinfo answer
	corrupt int64         // -1: none; else the offset of a flipped byte in its NAR
	flipAll bool          // every byte it sends is wrong
	stallAt int64         // -1: none; else it stops sending at this offset, forever
	breakAt int64         // 0: never; else its streams break after this many bytes
	drip    time.Duration // if set, one byte per drip
	pace    time.Duration // if set, 64 KiB per pace
	opens   atomic.Int32
	sent    atomic.Int64 // NAR bytes it sent
}

func honest(id string, c content) *holder {
	return &holder{id: id, c: c, corrupt: -1, stallAt: -1}
}

func (h *holder) ID() string { return h.id }

func (h *holder) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if h.delay > 0 {
		select {
		case <-time.After(h.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if h.absent {
		return nil, fmt.Errorf("%s: %w", h.id, store.ErrNotFound)
	}
	ni := *h.c.ni
	return &ni, nil
}

func (h *holder) OpenNAR(ctx context.Context, nar swarm.NAR, offset, end int64) (io.ReadCloser, error) {
	h.opens.Add(1)
	if h.absent || nar.NarHash != h.c.narHash() {
		return nil, store.ErrNotFound
	}
	b := bytes.Clone(h.c.nar)
	if h.corrupt >= 0 {
		b[h.corrupt] ^= 0xff
	}
	if h.flipAll {
		for i := range b {
			b[i] ^= 0x5a
		}
	}
	return &stream{ctx: ctx, h: h, b: b, pos: offset, start: offset, done: make(chan struct{})}, nil
}

type stream struct {
	ctx    context.Context
	h      *holder
	b      []byte
	pos    int64
	start  int64
	done   chan struct{}
	closed atomic.Bool
}

func (s *stream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, errors.New("closed")
	}
	if s.pos >= int64(len(s.b)) {
		return 0, io.EOF
	}
	if s.h.stallAt >= 0 && s.pos >= s.h.stallAt {
		select {
		case <-s.done:
			return 0, errors.New("closed")
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		}
	}
	if s.h.drip > 0 {
		select {
		case <-time.After(s.h.drip):
		case <-s.done:
			return 0, errors.New("closed")
		}
		p = p[:1]
	}
	if s.h.pace > 0 {
		select {
		case <-time.After(s.h.pace):
		case <-s.done:
			return 0, errors.New("closed")
		}
		p = p[:min(len(p), 64<<10)]
	}
	end := int64(len(s.b))
	if s.h.stallAt >= 0 {
		end = min(end, s.h.stallAt)
	}
	if s.h.breakAt > 0 {
		if s.pos >= s.start+s.h.breakAt {
			return 0, errors.New("connection reset")
		}
		end = min(end, s.start+s.h.breakAt)
	}
	n := copy(p, s.b[s.pos:end])
	s.pos += int64(n)
	s.h.sent.Add(int64(n))
	return n, nil
}

func (s *stream) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		close(s.done)
	}
	return nil
}

func holders(hs ...*holder) <-chan swarm.Holder {
	ch := make(chan swarm.Holder, len(hs))
	for _, h := range hs {
		ch <- h
	}
	close(ch)
	return ch
}

// acceptNarHash accepts narinfos with the trusted NarHash and calls others lies.
func acceptNarHash(want string) swarm.Accept {
	return func(_ context.Context, _ string, ni *narinfo.NarInfo) (*narinfo.NarInfo, error) {
		if ni.NarHash.Format(nixhash.NixBase32, false) != want {
			return nil, fmt.Errorf("%w: NarHash differs from the upstream's", swarm.ErrLie)
		}
		return ni, nil
	}
}

func find(t *testing.T, f *swarm.Finder, hs ...*holder) *swarm.Found {
	t.Helper()
	x := f.NewFound(testHash)
	f.Run(t.Context(), x, holders(hs...))
	return x
}

func readAll(t *testing.T, x *swarm.Found, narHash string, offset int64) ([]byte, error) {
	t.Helper()
	n, err := x.OpenNAR(t.Context(), narHash, offset)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return io.ReadAll(n)
}

func TestLyingNarInfoDoesNotWin(t *testing.T) {
	good := newContent(1000, 1)
	bad := newContent(1000, 2)
	liar := honest("liar", bad) // answers at once with a well-formed narinfo of other content
	slow := honest("honest", good)
	slow.delay = 20 * time.Millisecond
	rep := swarm.NewReputation()
	f := swarm.NewFinder(swarm.Options{Accept: acceptNarHash(good.narHash()), Rep: rep})
	x := find(t, f, liar, slow)
	ni, err := x.NarInfo(t.Context())
	if err != nil {
		t.Fatalf("NarInfo: %v (the honest holder's answer must be taken)", err)
	}
	if got := ni.NarHash.Format(nixhash.NixBase32, false); got != good.narHash() {
		t.Fatalf("accepted NarHash %s, want the honest %s", got, good.narHash())
	}
	if r, _ := rep.Get("liar"); r.Lies != 1 || rep.Available("liar") {
		t.Errorf("liar's record: %+v, available %v; want one lie and a backoff", r, rep.Available("liar"))
	}
	got, err := readAll(t, x, good.narHash(), 0)
	if err != nil || !bytes.Equal(got, good.nar) {
		t.Fatalf("NAR: %d bytes, err %v", len(got), err)
	}
}

// A liar that answers after an honest holder's narinfo was accepted is
// caught all the same: lying second must not keep a clean record (nor earn
// a success).
func TestLyingSpareIsCaught(t *testing.T) {
	good := newContent(1000, 1)
	bad := newContent(1000, 2)
	liar := honest("liar", bad)
	liar.delay = 20 * time.Millisecond
	other := honest("other", newContent(1000, 3)) // another NarHash, vouched for: honest
	other.delay = 20 * time.Millisecond
	first := honest("honest", good)
	rep := swarm.NewReputation()
	accept := func(ctx context.Context, hash string, ni *narinfo.NarInfo) (*narinfo.NarInfo, error) {
		if ni.NarHash.Format(nixhash.NixBase32, false) == other.c.narHash() {
			return ni, nil // say, signed by a trusted key: a build that is not reproducible
		}
		return acceptNarHash(good.narHash())(ctx, hash, ni)
	}
	f := swarm.NewFinder(swarm.Options{Accept: accept, Rep: rep})
	x := find(t, f, first, liar, other)
	ni, err := x.NarInfo(t.Context())
	if err != nil || ni.NarHash.Format(nixhash.NixBase32, false) != good.narHash() {
		t.Fatalf("NarInfo: %v, %v; want the first honest answer", ni, err)
	}
	if r, _ := rep.Get("liar"); r.Lies != 1 || r.Successes != 0 || rep.Available("liar") {
		t.Errorf("the record of a liar that answered second: %+v, available %v; want one lie, no success, a backoff", r, rep.Available("liar"))
	}
	if r, _ := rep.Get("other"); r.Lies != 0 || r.Successes != 1 || !rep.Available("other") {
		t.Errorf("the record of an honest holder of another build: %+v, available %v; want a success and no lie", r, rep.Available("other"))
	}
}

func TestMissWhenNobodyHasIt(t *testing.T) {
	f := swarm.NewFinder(swarm.Options{})
	x := find(t, f, &holder{id: "a", absent: true}, &holder{id: "b", absent: true})
	if _, err := x.NarInfo(t.Context()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("err %v, want ErrNotFound", err)
	}
	if !x.Fresh(time.Now()) || x.Fresh(time.Now().Add(swarm.DefaultMissTTL)) {
		t.Error("a miss must stay fresh for MissTTL and no longer")
	}
}

// One holder at a time (the NAR is too small for several at once): the
// first breaks or lies, the second finishes; a liar is blamed.
func TestNARFromOneHolderAtATime(t *testing.T) {
	c := newContent(3<<20, 3)
	tests := []struct {
		name    string
		first   func(*holder)
		offset  int64
		blamed  bool
		maxOpen int32
	}{
		{name: "honest", first: func(*holder) {}},
		{name: "resume at offset", first: func(*holder) {}, offset: 12345},
		{name: "wrong byte then clean end", first: func(h *holder) { h.corrupt = 7 }, blamed: true},
		{name: "wrong byte late", first: func(h *holder) { h.corrupt = int64(len(c.nar)) - 1 }, blamed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := honest("a", c), honest("b", c)
			tt.first(a)
			b.delay = 5 * time.Millisecond // a is first
			rep := swarm.NewReputation()
			f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir()})
			x := find(t, f, a, b)
			got, err := readAll(t, x, c.narHash(), tt.offset)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.nar[tt.offset:]) {
				t.Fatalf("got %d bytes, not the NAR from %d", len(got), tt.offset)
			}
			if r, _ := rep.Get("a"); (r.Lies > 0) != tt.blamed {
				t.Errorf("a's lies: %d, want blamed %v", r.Lies, tt.blamed)
			}
			if r, _ := rep.Get("b"); r.Lies > 0 {
				t.Errorf("honest b blamed: %+v", r)
			}
		})
	}
}

// A holder that sends one wrong byte and then stalls: the transfer resumes
// from the honest holder at the byte reached, fails the hash, fetches the
// NAR again from the honest holder, and Nix gets the right NAR; the liar
// is found by comparing its part with the verified NAR.
func TestWrongByteThenStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(200_000, 4)
		liar, good := honest("liar", c), honest("good", c)
		liar.corrupt, liar.stallAt = 0, 1000
		good.delay = 400 * time.Millisecond // ranks the other holder first
		rep := swarm.NewReputation()
		f := swarm.NewFinder(swarm.Options{Rep: rep, StallTimeout: 2 * time.Second})
		x := find(t, f, liar, good)
		start := time.Now()
		got, err := readAll(t, x, c.narHash(), 0)
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Fatalf("got %d bytes (equal %v), err %v", len(got), bytes.Equal(got, c.nar), err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v, want about one StallTimeout", d)
		}
		if r, _ := rep.Get("liar"); r.Lies != 1 {
			t.Errorf("liar's record %+v, want a lie", r)
		}
		if r, _ := rep.Get("good"); r.Lies != 0 || r.NARs != 1 {
			t.Errorf("good's record %+v, want one verified NAR and no lie", r)
		}
	})
}

// A holder that drips a byte now and then is dropped for its rate.
func TestDripIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(100_000, 5)
		drip, good := honest("drip", c), honest("good", c)
		drip.drip = 500 * time.Millisecond
		good.delay = 400 * time.Millisecond // ranks the other holder first
		f := swarm.NewFinder(swarm.Options{StallTimeout: 5 * time.Second, RateWindow: 4 * time.Second})
		x := find(t, f, drip, good)
		start := time.Now()
		got, err := readAll(t, x, c.narHash(), 0)
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Fatalf("got %d bytes, err %v", len(got), err)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("took %v: the dripping holder was not dropped at its rate", d)
		}
		if r, _ := f.Reputation().Get("drip"); r.LastFailure != swarm.FailSlow.String() {
			t.Errorf("drip's record %+v, want a slow failure", r)
		}
	})
}

func TestAllHoldersBadIsAnErrorBeforeAnyByte(t *testing.T) {
	c := newContent(5000, 6)
	a, b := honest("a", c), honest("b", c)
	a.corrupt, b.corrupt = 10, 20
	f := swarm.NewFinder(swarm.Options{})
	x := find(t, f, a, b)
	n, err := x.OpenNAR(t.Context(), c.narHash(), 0)
	if err == nil {
		n.Close()
		t.Fatal("OpenNAR succeeded with only lying holders")
	}
	if !strings.Contains(err.Error(), "NarHash") && !errors.Is(err, store.ErrNotFound) {
		t.Errorf("err %v", err)
	}
}

// A proven holder's large NAR streams before it is complete.
func TestProvenHolderStreams(t *testing.T) {
	c := newContent(swarm.CutThroughMin+1, 7)
	rep := swarm.NewReputation()
	for range 4 {
		rep.Delivered("a", 8<<20)
	}
	a := honest("a", c)
	a.stallAt = 1 << 20 // stalls after 1 MiB: the first MiB must reach the reader anyway
	f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(), StallTimeout: time.Hour})
	x := find(t, f, a)
	n, err := x.OpenNAR(t.Context(), c.narHash(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(n, buf); err != nil || !bytes.Equal(buf, c.nar[:1<<20]) {
		t.Fatalf("first MiB of a proven holder's NAR: %v", err)
	}
}

// A holder that never answers costs the first lookup its QueryTimeout; it
// is backed off, and later misses wait for it only two hedges.
func TestSilentHolderCostsLittle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(100, 8)
		silent := honest("silent", c)
		silent.delay = time.Hour
		f := swarm.NewFinder(swarm.Options{QueryTimeout: time.Second, Hedge: 100 * time.Millisecond})
		for i, want := range []time.Duration{time.Second, 200 * time.Millisecond} {
			start := time.Now()
			x := find(t, f, silent)
			if _, err := x.NarInfo(t.Context()); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("lookup %d: %v, want a miss", i, err)
			}
			if took := time.Since(start); took > want {
				t.Errorf("lookup %d took %v, want at most %v", i, took, want)
			}
		}
	})
}

// A large NAR from four holders at once: every one sends a share, a holder
// that lies in every byte it sends is found and blamed and the NAR still
// arrives whole, a holder that breaks leaves its pieces to the others.
func TestNARFromSeveralAtOnce(t *testing.T) {
	c := newContent(24<<20, 9) // a file spool, pieces of 1 MiB
	tests := []struct {
		name   string
		third  func(*holder)
		blamed bool
	}{
		{name: "all honest", third: func(*holder) {}},
		{name: "one lies in every byte", third: func(h *holder) { h.flipAll = true }, blamed: true},
		{name: "one breaks after 3 MiB", third: func(h *holder) { h.breakAt = 3 << 20 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs := []*holder{honest("a", c), honest("b", c), honest("c", c), honest("d", c)}
			tt.third(hs[2])
			rep := swarm.NewReputation()
			f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir()})
			x := find(t, f, hs...)
			got, err := readAll(t, x, c.narHash(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.nar) {
				t.Fatal("the NAR from several holders differs from the original")
			}
			for _, h := range hs {
				r, _ := rep.Get(h.id)
				if h.opens.Load() == 0 {
					t.Errorf("%s was never asked for a piece", h.id)
				}
				if (r.Lies > 0) != (tt.blamed && h == hs[2]) {
					t.Errorf("%s: %d lies", h.id, r.Lies)
				}
			}
		})
	}
}

// Holders that answer the lookup after the transfer started join it, and
// a faster holder sends more than a slower one.
func TestHoldersJoinAndFastOnesSendMore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(32<<20, 10)
		fast, slow, late := honest("fast", c), honest("slow", c), honest("late", c)
		fast.pace = 10 * time.Millisecond // 6.5 MB/s
		slow.pace = 40 * time.Millisecond // 1.6 MB/s
		late.pace = 10 * time.Millisecond
		slow.delay = time.Millisecond
		late.delay = time.Second // answers once the transfer runs
		f := swarm.NewFinder(swarm.Options{SpoolDir: t.TempDir(), Spares: 5})
		x := f.NewFound(testHash)
		go f.Run(t.Context(), x, holders(fast, slow, late))
		<-x.Decided()
		time.Sleep(10 * time.Millisecond) // slow confirms too
		start := time.Now()
		got, err := readAll(t, x, c.narHash(), 0)
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Fatalf("got %d bytes (equal %v), err %v", len(got), bytes.Equal(got, c.nar), err)
		}
		took := time.Since(start)
		// fast and slow alone: 32 MiB at 8.1 MB/s, 4.1 s; late joins
		// after a second and adds 6.5 MB/s.
		if took > 3*time.Second { // ideal: 2.73 s
			t.Errorf("took %v: the late holder did not help", took)
		}
		if late.sent.Load() < 4<<20 {
			t.Errorf("the late holder sent %d bytes", late.sent.Load())
		}
		if fast.sent.Load() < 2*slow.sent.Load() {
			t.Errorf("fast sent %d bytes, slow %d: the fast one should send about four times as much", fast.sent.Load(), slow.sent.Load())
		}
		t.Logf("in %v: fast %d, slow %d, late %d bytes", took, fast.sent.Load(), slow.sent.Load(), late.sent.Load())
	})
}

// observer records what a Finder tells its Observer.
type observer struct {
	mu        sync.Mutex
	path      string
	size      int64
	peers     []string
	added     int64
	done      bool
	err       error
	doneCalls int
}

func (o *observer) NARTransfer(storePath string, size int64) swarm.Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.path, o.size = storePath, size
	return o
}

func (o *observer) Add(holder string, nar, wire int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !slices.Contains(o.peers, holder) {
		o.peers = append(o.peers, holder)
	}
	o.added += nar
}

func (o *observer) Done(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done, o.err = true, err
	o.doneCalls++
}

// TestObserverSeesTheTransfer: the Observer learns the store path and
// size, each holder the bytes come from, every byte as it arrives, and
// the end.
func TestObserverSeesTheTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(200_000, 5)
		first, second := honest("first", c), honest("second", c)
		first.stallAt = 50_000
		second.delay = 400 * time.Millisecond // ranks first first
		obs := &observer{}
		f := swarm.NewFinder(swarm.Options{StallTimeout: 2 * time.Second, Observer: obs})
		x := find(t, f, first, second)
		got, err := readAll(t, x, c.narHash(), 0)
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Fatalf("NAR: %d bytes, %v", len(got), err)
		}
		synctest.Wait()
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if obs.path != c.ni.StorePath || obs.size != int64(len(c.nar)) {
			t.Errorf("observed %q of %d bytes; want %q of %d", obs.path, obs.size, c.ni.StorePath, len(c.nar))
		}
		if fmt.Sprint(obs.peers) != "[first second]" {
			t.Errorf("holders observed %v, want [first second]", obs.peers)
		}
		if obs.added != int64(len(c.nar)) || !obs.done || obs.err != nil || obs.doneCalls != 1 {
			t.Errorf("observed %d bytes, done %v (%d calls), err %v", obs.added, obs.done, obs.doneCalls, obs.err)
		}
	})
}

// TestObserverSeesAFailure: a transfer no holder can complete ends with
// its error.
func TestObserverSeesAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(100_000, 6)
		only := honest("only", c)
		only.stallAt = 10_000
		obs := &observer{}
		f := swarm.NewFinder(swarm.Options{StallTimeout: 2 * time.Second, Observer: obs})
		x := find(t, f, only)
		if _, err := readAll(t, x, c.narHash(), 0); err == nil {
			t.Fatal("a NAR no holder can send was read whole")
		}
		synctest.Wait()
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if !obs.done || obs.err == nil || obs.added != 10_000 {
			t.Errorf("observed %d bytes, done %v, err %v", obs.added, obs.done, obs.err)
		}
	})
}

// The NAR handed to a socket with WriteTo (as net/http does, which sends a
// file spool with sendfile) is the NAR, from a memory or a file spool, from
// the start or an offset, verified whole or streamed from a proven holder.
func TestWriteToSocket(t *testing.T) {
	tests := []struct {
		name   string
		size   int
		offset int64
		proven bool
	}{
		{name: "memory spool", size: 100 << 10},
		{name: "file spool", size: swarm.MemorySpoolMax + 12345},
		{name: "file spool at an offset", size: swarm.MemorySpoolMax + 12345, offset: 777},
		{name: "file spool, proven holder", size: swarm.CutThroughMin + 3, proven: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newContent(tt.size, uint64(20+i))
			rep := swarm.NewReputation()
			if tt.proven {
				for range 4 {
					rep.Delivered("a", 8<<20)
				}
			}
			f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir()})
			x := find(t, f, honest("a", c))
			n, err := x.OpenNAR(t.Context(), c.narHash(), tt.offset)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []byte, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer conn.Close()
				b, _ := io.ReadAll(conn)
				got <- b
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			sent, err := io.Copy(conn, n) // n's WriteTo
			conn.Close()
			if err != nil || sent != int64(tt.size)-tt.offset {
				t.Fatalf("WriteTo: %d bytes, %v; want %d", sent, err, int64(tt.size)-tt.offset)
			}
			if b := <-got; !bytes.Equal(b, c.nar[tt.offset:]) {
				t.Fatalf("the socket got %d bytes, not the NAR from %d", len(b), tt.offset)
			}
		})
	}
}

// A small NAR is fetched and verified as soon as its narinfo is accepted;
// Nix's request then costs the holder nothing, and is handed out once.
func TestSmallNARIsPrefetched(t *testing.T) {
	c := newContent(4000, 9)
	h := honest("a", c)
	f := swarm.NewFinder(swarm.Options{PrefetchMax: 64 << 10})
	x := find(t, f, h)
	time.Sleep(20 * time.Millisecond)
	if n := h.opens.Load(); n != 0 {
		t.Fatalf("the NAR was opened %d times before the narinfo was handed to Nix", n)
	}
	x.PrefetchNAR()
	deadline := time.Now().Add(5 * time.Second)
	for h.sent.Load() < int64(len(c.nar)) {
		if time.Now().After(deadline) {
			t.Fatalf("the NAR was not fetched ahead: %d of %d bytes sent", h.sent.Load(), len(c.nar))
		}
		time.Sleep(time.Millisecond)
	}
	got, err := readAll(t, x, c.narHash(), 100)
	if err != nil || !bytes.Equal(got, c.nar[100:]) {
		t.Fatalf("prefetched NAR from 100: %d bytes, %v", len(got), err)
	}
	if n := h.opens.Load(); n != 1 {
		t.Errorf("holder opened %d times for the prefetch and the request, want 1", n)
	}
	got, err = readAll(t, x, c.narHash(), 0)
	if err != nil || !bytes.Equal(got, c.nar) {
		t.Fatalf("NAR asked again: %d bytes, %v", len(got), err)
	}
	if n := h.opens.Load(); n != 2 {
		t.Errorf("holder opened %d times, want 2 (a prefetched NAR is handed out once)", n)
	}
}

// A NAR over PrefetchMax, or one the budget cannot hold, waits for Nix;
// a bad prefetched NAR is never handed out.
func TestPrefetchBoundsAndLies(t *testing.T) {
	big := newContent(8000, 10)
	hb := honest("a", big)
	f := swarm.NewFinder(swarm.Options{PrefetchMax: 4000})
	find(t, f, hb).PrefetchNAR()
	time.Sleep(50 * time.Millisecond)
	if n := hb.opens.Load(); n != 0 {
		t.Errorf("a NAR over PrefetchMax was opened %d times before anyone asked", n)
	}
	f = swarm.NewFinder(swarm.Options{PrefetchMax: 64 << 10, PrefetchBudget: 4000})
	find(t, f, hb).PrefetchNAR()
	time.Sleep(50 * time.Millisecond)
	if n := hb.opens.Load(); n != 0 {
		t.Errorf("a NAR over PrefetchBudget was opened %d times before anyone asked", n)
	}

	c := newContent(4000, 11)
	liar := honest("liar", c)
	liar.corrupt = 7
	good := honest("good", c)
	good.delay = 20 * time.Millisecond
	f = swarm.NewFinder(swarm.Options{PrefetchMax: 64 << 10})
	x := find(t, f, liar, good)
	x.PrefetchNAR()
	got, err := readAll(t, x, c.narHash(), 0)
	if err != nil || !bytes.Equal(got, c.nar) {
		t.Fatalf("NAR after a liar's prefetch: %d bytes, %v", len(got), err)
	}
}
