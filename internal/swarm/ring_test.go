package swarm_test

import (
	"bytes"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerix/peerix/internal/swarm"
)

// proven returns a Reputation in which ids are proven holders.
func proven(ids ...string) *swarm.Reputation {
	rep := swarm.NewReputation()
	for _, id := range ids {
		for range 4 {
			rep.Delivered(id, 8<<20)
		}
	}
	return rep
}

// A proven holder's large NAR streams through memory (the ring) to a
// reader that reads as it arrives, whole and right.
func TestRingStreams(t *testing.T) {
	for _, offset := range []int64{0, 5<<20 + 3} {
		c := newContent(swarm.CutThroughMin*3+5, 30)
		a := honest("a", c)
		f := swarm.NewFinder(swarm.Options{Rep: proven("a"), SpoolDir: t.TempDir()})
		x := find(t, f, a)
		got, err := readAll(t, x, c.narHash(), offset)
		if err != nil || !bytes.Equal(got, c.nar[offset:]) {
			t.Fatalf("from %d: %d bytes, %v", offset, len(got), err)
		}
		if n := a.opens.Load(); n != 1 {
			t.Errorf("holder opened %d times", n)
		}
	}
}

// A reader that keeps the ring's holder waiting is not the holder's
// fault: the holder is not dropped as stalled; after StallTimeout of
// waiting the transfer goes on into a file, and the reader, back, gets
// the whole NAR.
func TestRingSlowReaderFallsBackToFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(swarm.CutThroughMin*2, 31)
		a := honest("a", c)
		rep := proven("a")
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(),
			StallTimeout: 2 * time.Second, RateWindow: 4 * time.Second, MinRate: 64 << 10})
		x := find(t, f, a)
		n, err := x.OpenNAR(t.Context(), c.narHash(), 0)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		first := make([]byte, 1<<20)
		if _, err := io.ReadFull(n, first); err != nil {
			t.Fatal(err)
		}
		// The ring fills; the holder waits, then the rest goes to a file.
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := a.sent.Load(); got != int64(len(c.nar)) {
			t.Errorf("the holder sent %d of %d bytes while the reader was away", got, len(c.nar))
		}
		rest, err := io.ReadAll(n)
		if err != nil || !bytes.Equal(append(first, rest...), c.nar) {
			t.Fatalf("NAR: %d bytes, %v", len(first)+len(rest), err)
		}
		if got := a.opens.Load(); got != 1 {
			t.Errorf("the holder was opened %d times: dropped for waiting for the reader", got)
		}
		if r, _ := rep.Get("a"); r.Failures != 0 || r.Lies != 0 {
			t.Errorf("the holder's record: %+v", r)
		}
	})
}

// A proven holder that lies streams through the ring; its NAR fails its
// hash and it is blamed, and the reader never gets the whole wrong NAR
// (the last byte waits for the hash), only an error.
func TestRingProvenLiar(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(swarm.CutThroughMin*2+7, 32)
		liar := honest("liar", c)
		liar.corrupt = int64(len(c.nar)) - 100
		good := honest("good", c)
		good.delay = time.Second // too late to join
		rep := proven("liar")
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(), Spares: 3})
		x := f.NewFound(testHash)
		go f.Run(t.Context(), x, holders(liar, good))
		<-x.Decided()
		got, err := readAll(t, x, c.narHash(), 0)
		if err == nil {
			t.Fatalf("read %d bytes (right: %v) without an error", len(got), bytes.Equal(got, c.nar))
		}
		if len(got) >= len(c.nar) {
			t.Errorf("the reader got %d bytes of a NAR of %d that failed its hash", len(got), len(c.nar))
		}
		if r, _ := rep.Get("liar"); r.Lies == 0 {
			t.Errorf("the liar's record: %+v", r)
		}
		if r, _ := rep.Get("good"); r.Lies != 0 {
			t.Errorf("the honest holder's record: %+v", r)
		}
	})
}

// A holder that joins a ring's transfer makes it a file; when the joiner
// lies, the bytes the ring let through are judged by their hash: the
// ring's holder is not blamed, the joiner is, and the reader gets the
// whole NAR.
func TestRingJoinerLies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(24<<20, 33)
		a, liar := honest("a", c), honest("liar", c)
		a.pace = 10 * time.Millisecond // 6.5 MB/s
		liar.pace = 10 * time.Millisecond
		liar.flipAll = true
		liar.delay = 500 * time.Millisecond // joins with 3 MiB through the ring
		rep := proven("a")
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(), Spares: 5})
		x := f.NewFound(testHash)
		go f.Run(t.Context(), x, holders(a, liar))
		<-x.Decided()
		got, err := readAll(t, x, c.narHash(), 0)
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Fatalf("NAR: %d bytes (equal %v), %v", len(got), bytes.Equal(got, c.nar), err)
		}
		if liar.sent.Load() == 0 {
			t.Fatal("the liar never joined")
		}
		if r, _ := rep.Get("liar"); r.Lies == 0 {
			t.Errorf("the joiner that lied: %+v", r)
		}
		if r, _ := rep.Get("a"); r.Lies != 0 {
			t.Errorf("the ring's honest holder: %+v", r)
		}
	})
}

// The ring's holder breaks and another proven holder takes over: the rest
// goes through a file, and the NAR arrives whole.
func TestRingHolderBreaks(t *testing.T) {
	c := newContent(swarm.CutThroughMin*2+11, 34)
	a, b := honest("a", c), honest("b", c)
	a.breakAt = 5 << 20
	b.delay = 20 * time.Millisecond
	f := swarm.NewFinder(swarm.Options{Rep: proven("a", "b"), SpoolDir: t.TempDir(), Spares: 3})
	x := find(t, f, a, b)
	got, err := readAll(t, x, c.narHash(), 0)
	if err != nil || !bytes.Equal(got, c.nar) {
		t.Fatalf("NAR: %d bytes, %v", len(got), err)
	}
	if b.sent.Load() == 0 {
		t.Error("the second holder sent nothing")
	}
}

// The ring's holder lies early and a holder that joins later is honest:
// the lie is in bytes gone from the ring, which their hash still tells:
// the ring's holder is blamed, the joiner is not, and the reader, which
// had the lie, gets an error, never the whole NAR.
func TestRingHolderLiesBeforeAJoin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(24<<20, 35)
		liar, b := honest("liar", c), honest("b", c)
		liar.corrupt = 1 << 20
		liar.pace = 10 * time.Millisecond
		b.pace = 10 * time.Millisecond
		b.delay = 500 * time.Millisecond
		rep := proven("liar", "b")
		// The liar ranks below b once both are known: the next attempt
		// is b's alone.
		rep.Success("liar", 10*time.Second)
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(), Spares: 5})
		x := f.NewFound(testHash)
		go f.Run(t.Context(), x, holders(liar, b))
		<-x.Decided()
		got, err := readAll(t, x, c.narHash(), 0)
		if err == nil || len(got) >= len(c.nar) {
			t.Fatalf("read %d of %d bytes, err %v; want an error before the end", len(got), len(c.nar), err)
		}
		if b.sent.Load() == 0 {
			t.Fatal("b never joined")
		}
		if r, _ := rep.Get("liar"); r.Lies == 0 {
			t.Errorf("the ring's holder that lied: %+v", r)
		}
		if r, _ := rep.Get("b"); r.Lies != 0 {
			t.Errorf("the honest joiner: %+v", r)
		}
	})
}

// A reader that pauses for less than StallTimeout keeps the ring's holder
// waiting that long: its rate over RateWindow does not count the wait.
func TestRingPauseIsNotTheHoldersFault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(swarm.CutThroughMin*3, 36)
		a := honest("a", c)
		rep := proven("a")
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(),
			StallTimeout: 10 * time.Second, RateWindow: 2 * time.Second, MinRate: 1 << 20})
		x := find(t, f, a)
		n, err := x.OpenNAR(t.Context(), c.narHash(), 0)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		got := make([]byte, 1<<20)
		if _, err := io.ReadFull(n, got); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // the ring is full: the holder waits
		rest, err := io.ReadAll(n)
		if err != nil || !bytes.Equal(append(got, rest...), c.nar) {
			t.Fatalf("NAR: %d bytes, %v", len(got)+len(rest), err)
		}
		if n := a.opens.Load(); n != 1 {
			t.Errorf("the holder was opened %d times: dropped while it waited for the reader", n)
		}
		if r, _ := rep.Get("a"); r.Failures != 0 {
			t.Errorf("the holder's record: %+v", r)
		}
	})
}

// gateWriter takes its first write at once and every later one only once
// gate is closed: Nix slow to take the NAR.
type gateWriter struct {
	gate   chan struct{}
	writes int
	buf    bytes.Buffer
}

func (w *gateWriter) Write(p []byte) (int, error) {
	if w.writes++; w.writes > 1 {
		<-w.gate
	}
	return w.buf.Write(p)
}

// A proven liar's NAR fails its hash while the ring's bytes are on their
// way to Nix through WriteTo (Nix's full GET): those bytes count as sent,
// so the reader gets an error, never a whole NAR that differs.
func TestRingWriteToLieInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newContent(swarm.CutThroughMin+512<<10, 41)
		liar, good := honest("liar", c), honest("good", c)
		liar.corrupt = 3 << 19
		rep := proven("liar")
		rep.Fail("good", swarm.FailSlow) // there after a minute, but not healthy: sends only after the liar
		time.Sleep(time.Minute)
		f := swarm.NewFinder(swarm.Options{Rep: rep, SpoolDir: t.TempDir(), Spares: 3})
		x := find(t, f, liar, good)
		n, err := x.OpenNAR(t.Context(), c.narHash(), 0)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		synctest.Wait() // the ring is full
		w := &gateWriter{gate: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			_, err := n.ReadCloser.(io.WriterTo).WriteTo(w)
			done <- err
		}()
		time.Sleep(time.Second)
		synctest.Wait()
		close(w.gate)
		if err := <-done; err == nil {
			t.Fatalf("WriteTo: no error, %d of %d bytes (right: %v)", w.buf.Len(), len(c.nar), bytes.Equal(w.buf.Bytes(), c.nar))
		}
		if r, _ := rep.Get("liar"); r.Lies == 0 {
			t.Errorf("the liar's record: %+v", r)
		}
	})
}
