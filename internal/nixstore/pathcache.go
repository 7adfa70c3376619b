package nixstore

import (
	"os"
	"sync"
	"syscall"
	"time"
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
type pathCache struct {
	mu      sync.RWMutex
	entries map[string]cachedPath
	max     int
}

type cachedPath struct {
	info    *PathInfo
	id      fileID
	expires time.Time
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

func statID(file string) (fileID, bool) {
	fi, err := os.Lstat(file)
	if err != nil {
		return fileID{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino, ctimeSec: st.Ctim.Sec, ctimeNsec: st.Ctim.Nsec}, true
}

// get returns the cached info for hash if the path on disk is still the one
// it was cached for.
func (c *pathCache) get(hash string, filePath func(string) string) *PathInfo {
	c.mu.RLock()
	e, ok := c.entries[hash]
	c.mu.RUnlock()
	if !ok {
		return nil
	}
	if time.Now().After(e.expires) {
		c.mu.Lock()
		delete(c.entries, hash)
		c.mu.Unlock()
		return nil
	}
	if id, ok := statID(filePath(e.info.StorePath)); !ok || id != e.id {
		c.mu.Lock()
		delete(c.entries, hash)
		c.mu.Unlock()
		return nil
	}
	return e.info
}

// put caches info if its path exists on disk.
func (c *pathCache) put(hash string, info *PathInfo, filePath func(string) string) {
	id, ok := statID(filePath(info.StorePath))
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
	c.entries[hash] = cachedPath{info: info, id: id, expires: time.Now().Add(pathCacheTTL)}
}
