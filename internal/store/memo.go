package store

import (
	"sync"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

// NarInfoMemo remembers, per path, one value derived from a narinfo: a
// filter's verdict, a signed copy, the rendered text. A value is handed
// out only for the very *narinfo.NarInfo it was derived from.
//
// That is enough to be never stale: narinfos are never modified once a
// Store has returned them, and the local store returns the same pointer
// for a path exactly as long as it holds the path unchanged (nixstore's
// path cache: same database record, same file on disk, at most a few
// seconds old). Anything else it returns is a new pointer, which misses
// here. Stores that build a new narinfo per call (peers) merely miss.
//
// It holds at most max entries (one per path); when full, an arbitrary
// eighth makes room. Its methods are safe for concurrent use.
type NarInfoMemo[V any] struct {
	mu      sync.RWMutex
	entries map[string]memoEntry[V]
	max     int
}

type memoEntry[V any] struct {
	ni *narinfo.NarInfo
	v  V
}

// NewNarInfoMemo makes a memo of at most size entries (at least 1).
func NewNarInfoMemo[V any](size int) *NarInfoMemo[V] {
	return &NarInfoMemo[V]{entries: make(map[string]memoEntry[V]), max: max(1, size)}
}

// Get returns the value remembered for the path whose hash part is hash, if
// it was derived from ni.
func (m *NarInfoMemo[V]) Get(hash string, ni *narinfo.NarInfo) (V, bool) {
	m.mu.RLock()
	e, ok := m.entries[hash]
	m.mu.RUnlock()
	if !ok || e.ni != ni || ni == nil {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put remembers v, derived from ni, for the path whose hash part is hash,
// replacing what was remembered for it.
func (m *NarInfoMemo[V]) Put(hash string, ni *narinfo.NarInfo, v V) {
	if ni == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.entries[hash]; !ok && len(m.entries) >= m.max {
		n := max(1, m.max/8)
		for k := range m.entries {
			if n == 0 {
				break
			}
			delete(m.entries, k)
			n--
		}
	}
	m.entries[hash] = memoEntry[V]{ni: ni, v: v}
}

// Len is the number of paths remembered.
func (m *NarInfoMemo[V]) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.entries)
}
