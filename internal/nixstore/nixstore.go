// Package nixstore reads the machine's own Nix store: path info straight from
// the Nix database (opened read-only, never locked against Nix's writers) and
// NARs serialised in-process from the store directory. It implements
// store.Store for the local side of peerix.
package nixstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/peerix/peerix/internal/nar"
	"github.com/peerix/peerix/internal/store"
)

// StoreDir is the logical store directory. Chroot stores (nix --store DIR)
// keep it: their database names /nix/store paths, their files live under
// DIR/nix/store.
const StoreDir = "/nix/store"

// DBPath is where a store root keeps its database.
func DBPath(root string) string {
	return filepath.Join(root, "nix/var/nix/db/db.sqlite")
}

// PathInfo is what the Nix database records about one valid store path.
type PathInfo struct {
	ID         int64
	StorePath  string // full path, /nix/store/<hash>-<name>
	NarHash    *nixhash.Hash
	NarSize    uint64
	References []string // full store paths, sorted
	Deriver    string   // full path of the .drv, or ""
	Signatures []string // as Nix stores them: "name:base64"
	CA         string
}

// Local is the local Nix store rooted at Root.
type Local struct {
	root     string
	db       *sql.DB
	byHash   *sql.Stmt
	allPaths *sql.Stmt
	since    *sql.Stmt
	cache    *pathCache
	nars     *narCache
}

// queryByHash finds the one valid path with the given hash part, and its
// references in the same round trip. Paths are unique and start with the
// hash part, so the first path >= "/nix/store/<hash>" is it if any is.
const queryByHash = `
SELECT p.id, p.path, p.hash, p.deriver, p.narSize, p.sigs, p.ca,
       (SELECT group_concat(r.path, ' ') FROM Refs f JOIN ValidPaths r ON r.id = f.reference
         WHERE f.referrer = p.id)
FROM ValidPaths p WHERE p.path >= ? ORDER BY p.path LIMIT 1`

// missingDB says that the store has no database; it is fs.ErrNotExist.
type missingDB string

func (e missingDB) Error() string      { return string(e) }
func (missingDB) Is(target error) bool { return target == fs.ErrNotExist }

// Open opens the store at root ("/" for the machine's own) read-only. A
// missing or unreadable database is an error naming its path.
func Open(root string) (*Local, error) {
	path := DBPath(root)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		init := "nix-store --init"
		if root != "" && root != "/" {
			init = "nix-store --store " + root + " --init"
		}
		return nil, missingDB("no Nix database at " + path + ": is Nix installed? (a new store gets one from `" + init + "`)")
	} else if err != nil {
		return nil, fmt.Errorf("nix database: %w", err)
	}
	// mode=ro: we never write. busy_timeout: a Nix writer holding a lock
	// makes us wait briefly instead of failing. query_only is a second guard.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?mode=ro&_pragma=busy_timeout(5000)&_pragma=query_only(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("nix database %s: %w", path, err)
	}
	// Reads run in parallel on separate connections; SQLite allows that.
	conns := 2 * runtime.GOMAXPROCS(0)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	l := &Local{root: root, db: db, cache: newPathCache(pathCacheSize), nars: newNARCache(narCacheBytes, narCacheMaxNAR)}
	if l.byHash, err = db.Prepare(queryByHash); err != nil {
		db.Close()
		if strings.Contains(err.Error(), "readonly database") {
			// WAL mode: with no Nix process holding the database, a reader
			// must create db.sqlite-shm, which needs write access to the
			// directory even though peerix never writes the database.
			return nil, fmt.Errorf("nix database %s: %w (peerix needs to create db.sqlite-shm in %s: run it as root or give it write access to that directory)",
				path, err, filepath.Dir(path))
		}
		return nil, fmt.Errorf("nix database %s: %w", path, err)
	}
	// ValidPaths.id grows with every registration, so "what is new" is
	// one range scan of the primary key.
	if l.since, err = db.Prepare(`SELECT id, path FROM ValidPaths WHERE id > ? ORDER BY id`); err != nil {
		db.Close()
		return nil, fmt.Errorf("nix database %s: %w", DBPath(root), err)
	}
	if l.allPaths, err = db.Prepare(`SELECT path FROM ValidPaths`); err != nil {
		db.Close()
		return nil, fmt.Errorf("nix database %s: %w", path, err)
	}
	return l, nil
}

// pathCacheSize bounds the path info cache: about 1 KiB an entry.
const pathCacheSize = 64 << 10

// Close releases the database.
func (l *Local) Close() error { return l.db.Close() }

// Root is the directory the store's /nix lives under.
func (l *Local) Root() string { return l.root }

// Ping checks that the database answers.
func (l *Local) Ping(ctx context.Context) error {
	var n int
	if err := l.db.QueryRowContext(ctx, `SELECT 1 FROM ValidPaths LIMIT 1`).Scan(&n); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("nix database %s: %w", DBPath(l.root), err)
	}
	return nil
}

// PathInfo returns the valid path whose hash part is hash. The result is
// shared and must not be modified.
func (l *Local) PathInfo(ctx context.Context, hash string) (*PathInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	e, err := l.path(ctx, hash)
	if err != nil {
		return nil, err
	}
	return e.info, nil
}

// path returns the cache entry of the valid path whose hash part is hash,
// from the database if the cache has none (or a stale one).
func (l *Local) path(ctx context.Context, hash string) (cachedPath, error) {
	if e, ok := l.cache.get(hash); ok {
		return e, nil
	}
	pi, err := l.queryPathInfo(ctx, hash)
	if err != nil {
		return cachedPath{}, err
	}
	e := newCachedPath(pi, l.FilePath(pi.StorePath))
	l.cache.put(hash, e)
	return e, nil
}

func (l *Local) queryPathInfo(ctx context.Context, hash string) (*PathInfo, error) {
	prefix := StoreDir + "/" + hash
	var (
		pi                      PathInfo
		narHash                 string
		deriver, sigs, ca, refs sql.NullString
		narSize                 sql.NullInt64
	)
	err := l.byHash.QueryRowContext(ctx, prefix).Scan(&pi.ID, &pi.StorePath, &narHash, &deriver, &narSize, &sigs, &ca, &refs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", hash, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("nix database %s: looking up %s: %w", DBPath(l.root), hash, err)
	}
	if !strings.HasPrefix(pi.StorePath, prefix+"-") {
		return nil, fmt.Errorf("%s: %w", hash, store.ErrNotFound)
	}
	h, err := nixhash.ParseAny(narHash, nil)
	if err != nil {
		return nil, fmt.Errorf("nix database: %s has a bad hash %q: %w", pi.StorePath, narHash, err)
	}
	pi.NarHash = &h.Hash
	if narSize.Valid && narSize.Int64 >= 0 {
		pi.NarSize = uint64(narSize.Int64)
	}
	pi.Deriver = deriver.String
	pi.CA = ca.String
	if sigs.String != "" {
		pi.Signatures = strings.Fields(sigs.String)
	}
	if refs.String != "" {
		pi.References = strings.Fields(refs.String)
		slices.Sort(pi.References)
	}
	return &pi, nil
}

// NarInfo renders the path's narinfo as this store serves it: uncompressed,
// with the NAR at its local URL (store.NarRef: nar/<hash>-<NarHash>.nar),
// carrying the signatures the database holds. The result is shared and must
// not be modified; while the path is unchanged (see pathCache) every call
// returns the same pointer, so callers may memoise on it.
func (l *Local) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	e, err := l.path(ctx, hash)
	if err != nil {
		return nil, err
	}
	return e.ni, nil
}

// NarInfo converts database path info to a narinfo served by a local store.
func (pi *PathInfo) NarInfo() *narinfo.NarInfo {
	narHash := nixhash.MustNewHashWithEncoding(pi.NarHash.Algo(), pi.NarHash.Digest(), nixhash.NixBase32, true)
	ni := &narinfo.NarInfo{
		StorePath:   pi.StorePath,
		URL:         store.NarRef{Hash: pi.hash(), NarHash: narHash.Format(nixhash.NixBase32, false)}.URL(),
		Compression: "none",
		FileHash:    narHash,
		FileSize:    pi.NarSize,
		NarHash:     narHash,
		NarSize:     pi.NarSize,
		CA:          pi.CA,
	}
	for _, r := range pi.References {
		ni.References = append(ni.References, strings.TrimPrefix(r, StoreDir+"/"))
	}
	if pi.Deriver != "" {
		ni.Deriver = strings.TrimPrefix(pi.Deriver, StoreDir+"/")
	}
	for _, s := range pi.Signatures {
		// A signature the database holds that go-nix cannot parse is
		// dropped rather than failing the whole path.
		if sig, err := signature.ParseSignature(s); err == nil {
			ni.Signatures = append(ni.Signatures, sig)
		}
	}
	return ni
}

// hash is the path's hash part.
func (pi *PathInfo) hash() string {
	return strings.TrimPrefix(pi.StorePath, StoreDir+"/")[:store.HashLen]
}

// NAR opens the NAR a local narinfo named, at offset.
func (l *Local) NAR(ctx context.Context, u string, offset int64) (*store.NAR, error) {
	ref, err := store.ParseNarURL(u)
	if err != nil {
		return nil, err
	}
	if ref.Source != "" {
		return nil, fmt.Errorf("NAR URL %q is not a local one: %w", u, store.ErrBadRequest)
	}
	e, err := l.path(ctx, ref.Hash)
	if err != nil {
		return nil, err
	}
	if e.narHash != ref.NarHash {
		return nil, fmt.Errorf("nar url %q: NarHash differs from the store's: %w", u, store.ErrNotFound)
	}
	return l.OpenNAR(e.info, offset)
}

// NAROf opens the NAR of url as NAR does, for a narinfo l.NarInfo has
// just returned: while ni is still the path cache's entry (whose lstat that
// NarInfo call checked), the path is not looked up and checked again.
func (l *Local) NAROf(ctx context.Context, ni *narinfo.NarInfo, u string, offset int64) (*store.NAR, error) {
	if ref, err := store.ParseNarURL(u); err == nil && ref.Source == "" {
		if e, ok := l.cache.peek(ref.Hash); ok && e.ni == ni && e.narHash == ref.NarHash {
			return l.OpenNAR(e.info, offset)
		}
	}
	return l.NAR(ctx, u, offset)
}

var _ store.NAROpener = (*Local)(nil)

// OpenNAR streams the NAR of a path from disk, starting at offset. A small
// NAR comes from memory (see narCache) while pi is the path's current info.
func (l *Local) OpenNAR(pi *PathInfo, offset int64) (*store.NAR, error) {
	if offset < 0 || uint64(offset) > pi.NarSize {
		return nil, fmt.Errorf("offset %d outside NAR of %d bytes: %w", offset, pi.NarSize, store.ErrOffset)
	}
	if b := l.smallNAR(pi); b != nil {
		return &store.NAR{Size: int64(len(b)), ReadCloser: newMemNAR(b[offset:])}, nil
	}
	return &store.NAR{Size: int64(pi.NarSize), ReadCloser: nar.Open(l.FilePath(pi.StorePath), offset)}, nil
}

// FilePath is where a store path's files are on this machine.
func (l *Local) FilePath(storePath string) string {
	return filepath.Join(l.root, storePath)
}

// StorePaths calls fn with every valid path in the store, in database order.
func (l *Local) StorePaths(ctx context.Context, fn func(storePath string) error) error {
	rows, err := l.allPaths.QueryContext(ctx)
	if err != nil {
		return fmt.Errorf("nix database %s: %w", DBPath(l.root), err)
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return fmt.Errorf("nix database %s: %w", DBPath(l.root), err)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	return rows.Err()
}

// PathsSince calls fn with every valid path registered after the one with
// database id after (0: all of them), in registration order, with its id.
func (l *Local) PathsSince(ctx context.Context, after int64, fn func(id int64, storePath string) error) error {
	rows, err := l.since.QueryContext(ctx, after)
	if err != nil {
		return fmt.Errorf("nix database %s: %w", DBPath(l.root), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var p string
		if err := rows.Scan(&id, &p); err != nil {
			return fmt.Errorf("nix database %s: %w", DBPath(l.root), err)
		}
		if err := fn(id, p); err != nil {
			return err
		}
	}
	return rows.Err()
}
