package trust

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/store"
)

// The on-disk filter cache, <state dir>/filter-cache, is text:
//
//	peerix-filter-cache 2
//	<hash> p <NarHash> <expiry, unix seconds>   the upstream has the path, with this NarHash (Nix base-32 SHA-256)
//	<hash> n <expiry, unix seconds>             the upstream has it not
//
// one line per path, sorted by hash. Unknown answers are never written. A
// file that is not exactly of this form is ignored as a whole (with a
// warning) and overwritten at the next save: it is only a cache. A file of
// version 1 (which said only whether the upstream has a path, not which
// build) is ignored the same way, quietly. An entry's expiry is clamped on
// loading to now + its TTL, so lowering a TTL or a clock that went back
// cannot stretch an answer's life.
const (
	cacheHeader   = "peerix-filter-cache 2"
	cacheHeaderV1 = "peerix-filter-cache 1"
)

// errOldCache: the cache file is of an older version.
var errOldCache = errors.New("cache of an older version")

// maxCacheFile bounds what is read: 1 Mi entries of 100 bytes.
const maxCacheFile = 128 << 20

func (f *Filter) loadCache() {
	data, err := os.ReadFile(f.cacheFile)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		f.log.Warn("filter cache unreadable, starting empty", "file", f.cacheFile, "err", err)
		return
	}
	entries, err := parseCache(data, time.Now(), f.posTTL, f.negTTL)
	if errors.Is(err, errOldCache) {
		f.log.Info("filter cache of an older version ignored (it will be rewritten)", "file", f.cacheFile)
		f.answers.mu.Lock()
		f.answers.dirty = true // rewritten even if nothing is asked
		f.answers.mu.Unlock()
		return
	}
	if err != nil {
		f.log.Warn("filter cache corrupt, ignored (it will be rewritten)", "file", f.cacheFile, "err", err)
		return
	}
	for h, e := range entries {
		f.answers.put(h, e.v, e.exp)
	}
	f.answers.mu.Lock()
	f.answers.dirty = false // what was just read need not be written back
	f.answers.mu.Unlock()
	f.log.Debug("filter cache loaded", "file", f.cacheFile, "entries", len(entries))
}

// parseCache parses a cache file, dropping expired entries.
func parseCache(data []byte, now time.Time, posTTL, negTTL time.Duration) (map[string]memoEntry[upstreamAnswer], error) {
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("larger than %d bytes", maxCacheFile)
	}
	header, rest, ok := bytes.Cut(data, []byte("\n"))
	if ok && string(header) == cacheHeaderV1 {
		return nil, errOldCache
	}
	if !ok || string(header) != cacheHeader {
		return nil, errors.New("unknown header")
	}
	entries := make(map[string]memoEntry[upstreamAnswer])
	for n := 2; len(rest) > 0; n++ {
		var line []byte
		line, rest, ok = bytes.Cut(rest, []byte("\n"))
		if !ok {
			return nil, fmt.Errorf("line %d: unterminated", n)
		}
		fields := bytes.Fields(line)
		if len(fields) < 3 || !store.ValidHash(string(fields[0])) {
			return nil, fmt.Errorf("line %d: malformed", n)
		}
		var a upstreamAnswer
		var ttl time.Duration
		switch string(fields[1]) {
		case "p":
			if len(fields) != 4 {
				return nil, fmt.Errorf("line %d: malformed", n)
			}
			d, err := nixbase32.DecodeString(string(fields[2]))
			if err != nil || len(d) != sha256.Size || len(fields[2]) != nixbase32.EncodedLen(sha256.Size) {
				return nil, fmt.Errorf("line %d: bad NarHash", n)
			}
			a.kind, ttl = answerPublic, posTTL
			copy(a.narHash[:], d)
		case "n":
			if len(fields) != 3 {
				return nil, fmt.Errorf("line %d: malformed", n)
			}
			a.kind, ttl = answerPrivate, negTTL
		default:
			return nil, fmt.Errorf("line %d: unknown answer %q", n, fields[1])
		}
		sec, err := strconv.ParseInt(string(fields[len(fields)-1]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad expiry", n)
		}
		exp := time.Unix(sec, 0)
		if limit := now.Add(ttl); exp.After(limit) {
			exp = limit
		}
		if now.Before(exp) {
			entries[string(fields[0])] = memoEntry[upstreamAnswer]{v: a, exp: exp}
		}
	}
	return entries, nil
}

func (f *Filter) saveLoop(every time.Duration) {
	defer close(f.saveDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-f.saveStop:
			return
		case <-t.C:
			if err := f.saveCache(); err != nil {
				f.log.Warn("filter cache not saved", "file", f.cacheFile, "err", err)
			}
		}
	}
}

// saveCache writes the cache atomically (a temporary file renamed over the
// old one), if it changed since the last save.
func (f *Filter) saveCache() error {
	f.saveMu.Lock()
	defer f.saveMu.Unlock()
	entries, changed := f.answers.snapshot(func(a upstreamAnswer) bool { return a.kind != answerUnknown })
	if !changed {
		return nil
	}
	if err := writeCacheFile(f.cacheFile, entries); err != nil {
		f.answers.mu.Lock()
		f.answers.dirty = true // try again next time
		f.answers.mu.Unlock()
		return err
	}
	return nil
}

func writeCacheFile(file string, entries map[string]memoEntry[upstreamAnswer]) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	w := bufio.NewWriterSize(tmp, 64<<10)
	w.WriteString(cacheHeader + "\n")
	for _, h := range slices.Sorted(maps.Keys(entries)) {
		e := entries[h]
		if e.v.kind == answerPublic {
			fmt.Fprintf(w, "%s p %s %d\n", h, nixbase32.EncodeToString(e.v.narHash[:]), e.exp.Unix())
		} else {
			fmt.Fprintf(w, "%s n %d\n", h, e.exp.Unix())
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
