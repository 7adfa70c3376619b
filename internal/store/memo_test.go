package store_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/store"
)

// TestNarInfoMemo: a value comes back only for the very narinfo it was
// derived from; another narinfo of the same path (the store's answer after
// the path changed) misses, and replaces the entry.
func TestNarInfoMemo(t *testing.T) {
	m := store.NewNarInfoMemo[string](8)
	const h = "0123456789abcdfghijklmnpqrsvwxyz"
	old := &narinfo.NarInfo{StorePath: "/nix/store/" + h + "-a"}
	same := *old // equal contents, another pointer
	if _, ok := m.Get(h, old); ok {
		t.Fatal("hit in an empty memo")
	}
	m.Put(h, old, "old")
	if v, ok := m.Get(h, old); !ok || v != "old" {
		t.Fatalf("Get(old) = %q, %v; want old, true", v, ok)
	}
	if _, ok := m.Get(h, &same); ok {
		t.Fatal("hit for another narinfo with equal contents")
	}
	if _, ok := m.Get("1123456789abcdfghijklmnpqrsvwxyz", old); ok {
		t.Fatal("hit for another hash")
	}
	if _, ok := m.Get(h, nil); ok {
		t.Fatal("hit for a nil narinfo")
	}
	m.Put(h, nil, "nil")
	if m.Len() != 1 {
		t.Fatalf("Put with a nil narinfo stored something: %d entries", m.Len())
	}
	m.Put(h, &same, "new")
	if _, ok := m.Get(h, old); ok {
		t.Fatal("the replaced narinfo still hits")
	}
	if v, ok := m.Get(h, &same); !ok || v != "new" {
		t.Fatalf("Get(new) = %q, %v", v, ok)
	}
	if m.Len() != 1 {
		t.Fatalf("%d entries for one path", m.Len())
	}
}

// TestNarInfoMemoBound: the memo never holds more than its size, and keeps
// working when full.
func TestNarInfoMemoBound(t *testing.T) {
	const size = 64
	m := store.NewNarInfoMemo[int](size)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				h := fmt.Sprintf("%032d", g*1000+i)
				ni := &narinfo.NarInfo{}
				m.Put(h, ni, i)
				m.Get(h, ni) // may miss: another goroutine's Put can make room
				if n := m.Len(); n > size {
					t.Errorf("%d entries, bound %d", n, size)
					return
				}
			}
		})
	}
	wg.Wait()
	// Alone, a Put is there right after, however full the memo is.
	for i := range 1000 {
		h, ni := fmt.Sprintf("%032d", 9000+i), &narinfo.NarInfo{}
		m.Put(h, ni, i)
		if v, ok := m.Get(h, ni); !ok || v != i {
			t.Fatalf("Get right after Put: %d, %v", v, ok)
		}
	}
}
