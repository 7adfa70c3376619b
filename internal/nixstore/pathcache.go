package nixstore

import (
	"sync"
	"syscall"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// pathCache remembers path info of valid paths, so that Nix's bursts of
// narinfo lookups cost a map read and an lstat instead of a database query.
//
// Entries also expire after pathCacheTTL, so that changes only the database
// sees (signatures added later) show within seconds.
//
// A valid store path never changes; it can only be deleted (garbage
// collection) and perhaps registered again later with other contents. Each
// entry therefore records the identity of the path's top file system object
// (device, inode, change time) and is used only while lstat still reports the
// same identity: a deleted or recreated path misses and goes to the database.
//
// An entry also holds the narinfo rendered from the info, so a hit costs no
// allocation, and the same *narinfo.NarInfo is handed out for as long as the
// entry is valid: the layers above (signing, HTTP) memoise their work on
// that pointer and so see every change the cache sees (a new entry is a new
// pointer).
type pathCache struct {
	mu      sync.RWMutex
	entries map[string]cachedPath
	max     int
}

type cachedPath struct {
	info    *PathInfo
	ni      *narinfo.NarInfo
	narHash string // info.NarHash in Nix base-32, as NAR URLs carry it
	file    string // where the path is on disk
	id      fileID
	expires time.Time
}

// newCachedPath renders what a hit hands out; file is where the path is.
func newCachedPath(info *PathInfo, file string) cachedPath {
	return cachedPath{info: info, ni: info.NarInfo(), narHash: info.NarHash.Format(nixhash.NixBase32, false), file: file}
}

// pathCacheTTL bounds how long database-only changes (a signature added by
// `nix store sign`) can go unseen; a burst of lookups is far shorter.
const pathCacheTTL = 5 * time.Second

type fileID struct {
	dev, ino            uint64
	ctimeSec, ctimeNsec int64
}

func newPathCache(max int) *pathCache {
	return &pathCache{entries: make(map[string]cachedPath), max: max}
}

// statID is the identity of file's top object. syscall.Lstat, not
// os.Lstat: it runs on every lookup, and fills a Stat_t on the stack
// instead of allocating a FileInfo.
func statID(file string) (fileID, bool) {
	var st syscall.Stat_t
	for {
		err := syscall.Lstat(file, &st)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fileID{}, false
		}
		break
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino, ctimeSec: st.Ctim.Sec, ctimeNsec: st.Ctim.Nsec}, true
}

// get returns the cached entry for hash if the path on disk is still the one
// it was cached for.
func (c *pathCache) get(hash string) (cachedPath, bool) {
	c.mu.RLock()
	e, ok := c.entries[hash]
	c.mu.RUnlock()
	if !ok {
		return cachedPath{}, false
	}
	if time.Now().After(e.expires) {
		c.drop(hash, e.info)
		return cachedPath{}, false
	}
	if id, ok := statID(e.file); !ok || id != e.id {
		c.drop(hash, e.info)
		return cachedPath{}, false
	}
	return e, true
}

// drop removes the entry for hash if it is still the one for info (another
// request may have put a fresh one meanwhile).
func (c *pathCache) drop(hash string, info *PathInfo) {
	c.mu.Lock()
	if c.entries[hash].info == info {
		delete(c.entries, hash)
	}
	c.mu.Unlock()
}

// put caches e if its path exists on disk.
func (c *pathCache) put(hash string, e cachedPath) {
	id, ok := statID(e.file)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Drop an arbitrary tenth; map iteration order is random enough to
		// approximate random eviction without bookkeeping on the hot path.
		n := c.max / 10
		for k := range c.entries {
			if n <= 0 {
				break
			}
			delete(c.entries, k)
			n--
		}
	}
	e.id, e.expires = id, time.Now().Add(pathCacheTTL)
	c.entries[hash] = e
}

// peek returns the entry for hash as it is, without validating it.
func (c *pathCache) peek(hash string) (cachedPath, bool) {
	c.mu.RLock()
	e, ok := c.entries[hash]
	c.mu.RUnlock()
	return e, ok
}
