package p2p

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/swarm"
)

// A large NAR that three P2P holders have comes from all three at once,
// over /peerix/nar/1.1.0 byte ranges; one of them sends a wrong byte in
// its part: the reader still gets the NAR byte-exact, and the one whose
// bytes broke the hash is blamed, the others not.
func TestStoreFromSeveralHolders(t *testing.T) {
	hs, sts := holders(t, 3)
	client := newTestHost(t)
	finder := newFakeFinder()
	rep := swarm.NewReputation()
	s := NewStore(client, finder, swarm.Options{Rep: rep}, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	data := testData(8<<20, 5)
	hash := randomHash(t)
	// 16 KiB a millisecond at most from each: long enough for all three
	// to take part.
	honest := sts[0].add(hash, data)
	honest.throttle = time.Millisecond
	sts[1].put(hash, *honest)
	bad := *honest
	bad.data = bytes.Clone(data)
	for i := range bad.data {
		bad.data[i] ^= 0x5a // every byte it sends is wrong
	}
	sts[2].put(hash, bad)
	finder.set(hash, hs...)
	before := successes(s, hs...)

	ni, err := s.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, s, before, hs...)
	nar, err := s.NAR(ctx, ni.URL, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes (the NAR: %v), %v", len(got), bytes.Equal(got, data), err)
	}
	for i, st := range sts {
		if st.nars() == 0 {
			t.Errorf("holder %d was never asked for a part", i)
		}
	}
	liar := hs[2].ID().String()
	if r, _ := rep.Get(liar); r.Lies != 1 || rep.Available(liar) {
		t.Errorf("the holder that sent wrong bytes: %+v, want one lie and backed off", r)
	}
	for _, h := range hs[:2] {
		if r, _ := rep.Get(h.ID().String()); r.Lies != 0 {
			t.Errorf("honest holder %s blamed: %+v", h.ID(), r)
		}
	}
}
