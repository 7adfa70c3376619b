package nixstore

import (
	"bytes"
	"fmt"
	"testing"
)

func testInfo(i int, size uint64) *PathInfo {
	return &PathInfo{StorePath: fmt.Sprintf("%s/%032d-p", StoreDir, i), NarSize: size}
}

// TestNARCacheBounds: the cache counts every entry with its overhead and
// never holds more than its budget, nor a NAR above its per-NAR bound.
func TestNARCacheBounds(t *testing.T) {
	const budget, perNAR = 64 << 10, 4 << 10
	c := newNARCache(budget, perNAR)
	if n, _ := c.size(); n != 0 {
		t.Fatalf("%d entries in a new cache", n)
	}
	big := testInfo(0, perNAR+1)
	c.put(big, make([]byte, perNAR+1))
	if c.get(big) != nil {
		t.Fatal("a NAR above the per-NAR bound was kept")
	}
	for i := range 1000 {
		pi := testInfo(i+1, 3000)
		b := bytes.Repeat([]byte{byte(i)}, 3000)
		c.put(pi, b)
		if got := c.get(pi); !bytes.Equal(got, b) {
			t.Fatalf("entry %d: not there right after put", i)
		}
		n, used := c.size()
		if used > budget {
			t.Fatalf("after %d puts: %d bytes held, budget %d", i+1, used, budget)
		}
		if want := int64(n) * (3000 + narEntryOverhead); used != want {
			t.Fatalf("after %d puts: %d entries counted as %d bytes, want %d", i+1, n, used, want)
		}
	}
	if n, _ := c.size(); n < budget/(3000+narEntryOverhead)-1 {
		t.Errorf("only %d entries kept of a budget for %d", n, budget/(3000+narEntryOverhead))
	}
}

// TestNARCacheStale: an entry serves only the *PathInfo it was made for;
// the path's next info (after it changed on disk or in the database) misses
// and, once dumped, replaces it.
func TestNARCacheStale(t *testing.T) {
	c := newNARCache(1<<20, 1<<10)
	old := testInfo(1, 3)
	c.put(old, []byte("old"))
	fresh := testInfo(1, 3) // the same path, looked up again
	if c.get(fresh) != nil {
		t.Fatal("the NAR of the old info is served for the new one")
	}
	c.put(fresh, []byte("new"))
	if got := c.get(fresh); string(got) != "new" {
		t.Fatalf("got %q", got)
	}
	if c.get(old) != nil {
		t.Fatal("the old info still hits")
	}
	if n, used := c.size(); n != 1 || used != 3+narEntryOverhead {
		t.Fatalf("%d entries, %d bytes for one path", n, used)
	}
}
