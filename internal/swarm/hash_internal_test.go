package swarm

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"testing"
)

// Whatever mix of bytes fed beside the copy (in order, out of order,
// skipped) and read back from the spool, the prefix hash is the NAR's.
func TestPrefixHash(t *testing.T) {
	nar := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range nar {
		nar[i] = byte(r.Uint32())
	}
	want := sha256.Sum256(nar)
	file, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	spools := map[string]spool{"memory": &memSpool{b: make([]byte, len(nar))}, "file": fileSpool{file}}
	for name, sp := range spools {
		t.Run(name, func(t *testing.T) {
			p := newPrefixHash()
			for off := 0; off < len(nar); {
				n := min(1+r.IntN(100<<10), len(nar)-off)
				sp.WriteAt(nar[off:off+n], int64(off))
				switch r.IntN(4) {
				case 0: // not fed: the transfer reads it back
				case 1: // fed at a wrong offset: ignored
					p.feed(int64(off+1), nar[off:off+n])
				default:
					p.feed(int64(off), nar[off:off+n])
				}
				off += n
				if r.IntN(3) == 0 {
					if err := p.catchUp(sp, int64(off)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := p.catchUp(sp, int64(len(nar))); err != nil {
				t.Fatal(err)
			}
			if got := p.sum(); !bytes.Equal(got, want[:]) {
				t.Fatal("prefix hash differs from the NAR's")
			}
		})
	}
}
