package nixstore

import (
	"bytes"
	"errors"
	"sync"

	"github.com/peerix/peerix/internal/nar"
)

// narCache keeps the serialised NARs of small paths in memory: a NAR of a
// few files costs a syscall or more per file to dump (lstat, open, read,
// close, a readdir per directory), far more than the request around it,
// and Nix fetches the many small paths of a closure again from each
// machine that needs them.
//
// An entry belongs to one *PathInfo, the one the path cache hands out
// while the path on disk keeps its identity (see pathCache); a deleted,
// recreated or re-registered path gets a new *PathInfo and so misses here,
// and is dumped from disk again. Store paths are immutable while valid, so
// the bytes of an entry are the bytes a dump would produce.
//
// The cache holds at most maxBytes, counting each entry as its NAR (at
// most maxNAR bytes) plus narEntryOverhead for the info it keeps alive; at
// most one entry a path. When full, arbitrary entries make room (map
// iteration order is random).
type narCache struct {
	maxBytes, maxNAR int64

	mu      sync.RWMutex
	entries map[string]narEntry // by hash part
	bytes   int64
}

type narEntry struct {
	pi  *PathInfo
	nar []byte
}

// narEntryOverhead is what an entry costs beside its NAR: the map slot, the
// *PathInfo and its rendered narinfo that the entry keeps alive.
const narEntryOverhead = 1 << 10

func (e narEntry) cost() int64 { return int64(len(e.nar)) + narEntryOverhead }

// The NAR cache's bounds: NARs up to 64 KiB (most paths of a closure that
// are not libraries: scripts, configuration, wrappers, man pages), 32 MiB
// in all.
const (
	narCacheBytes  = 32 << 20
	narCacheMaxNAR = 64 << 10
)

func newNARCache(maxBytes, maxNAR int64) *narCache {
	return &narCache{maxBytes: maxBytes, maxNAR: min(maxNAR, maxBytes-narEntryOverhead), entries: make(map[string]narEntry)}
}

// get returns the NAR of pi if the cache holds it for this very info.
func (c *narCache) get(pi *PathInfo) []byte {
	c.mu.RLock()
	e := c.entries[pi.hash()]
	c.mu.RUnlock()
	if e.pi != pi {
		return nil
	}
	return e.nar
}

// put keeps b as the NAR of pi, replacing what the cache held for its path.
func (c *narCache) put(pi *PathInfo, b []byte) {
	hash, e := pi.hash(), narEntry{pi: pi, nar: b}
	if int64(len(b)) > c.maxNAR {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[hash]; ok {
		c.bytes -= old.cost()
		delete(c.entries, hash)
	}
	for k, v := range c.entries {
		if c.bytes+e.cost() <= c.maxBytes {
			break
		}
		c.bytes -= v.cost()
		delete(c.entries, k)
	}
	c.entries[hash] = e
	c.bytes += e.cost()
}

// size is the number of entries and the bytes they count for.
func (c *narCache) size() (int, int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries), c.bytes
}

// smallNAR returns the NAR of pi from memory, dumping it there first, or
// nil if pi's NAR is not small or could not be dumped whole (the caller
// streams it from disk instead, which reports the error).
func (l *Local) smallNAR(pi *PathInfo) []byte {
	if pi.NarSize == 0 || pi.NarSize > uint64(l.nars.maxNAR) {
		return nil
	}
	if b := l.nars.get(pi); b != nil {
		return b
	}
	// Only an info the path cache holds can be hit again; any other (the
	// path is not on disk) would only fill the cache with garbage.
	e, ok := l.cache.peek(pi.hash())
	if !ok || e.info != pi {
		return nil
	}
	w := fixedWriter{b: make([]byte, 0, pi.NarSize)}
	n, err := nar.Dump(&w, e.file, 0)
	if err != nil || uint64(n) != pi.NarSize {
		return nil
	}
	l.nars.put(pi, w.b)
	return w.b
}

// fixedWriter collects at most cap(b) bytes; a NAR larger than the
// database says fails instead of growing.
type fixedWriter struct{ b []byte }

var errNARTooLarge = errors.New("NAR larger than its recorded size")

func (w *fixedWriter) Write(p []byte) (int, error) {
	if len(p) > cap(w.b)-len(w.b) {
		return 0, errNARTooLarge
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

// memNAR reads a NAR held in memory; its WriteTo hands the bytes to the
// socket in one write.
type memNAR struct{ *bytes.Reader }

func newMemNAR(b []byte) memNAR { return memNAR{bytes.NewReader(b)} }

func (memNAR) Close() error { return nil }
