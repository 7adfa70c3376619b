package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fixtureSet is the fixture closure, built once per run and copied into a
// chroot "source" store that the daemons under test serve.
type fixtureSet struct {
	// src is the chroot store holding the closure.
	src string
	// root is the fixture whose closure is all the others.
	root string
	// paths is the whole closure, sorted.
	paths []string
	// byName maps a fixture's name ("big", "refs", ...) to its store path.
	byName map[string]string
	// facts holds what the source store says about each path.
	facts map[string]pathFacts
}

// pathFacts is the source store's truth about one path.
type pathFacts struct {
	narDigest string // hex SHA-256 of `nix-store --dump`
	narSize   int64
	narHash   string // as `nix-store -q --hash` prints it: sha256:<nix32>
	refs      []string
}

const fixturePrefix = "peerix-e2e-"

var (
	fixturesOnce sync.Once
	fixturesVal  *fixtureSet
	fixturesErr  error
)

// fixtures returns the shared fixture set, building it on first use.
func fixtures(t *testing.T) *fixtureSet {
	t.Helper()
	requireEnv(t)
	fixturesOnce.Do(func() { fixturesVal, fixturesErr = buildFixtures(context.Background()) })
	if fixturesErr != nil {
		t.Fatalf("building fixtures: %v", fixturesErr)
	}
	return fixturesVal
}

func buildFixtures(ctx context.Context) (*fixtureSet, error) {
	dir := filepath.Join(workDir, "fixtures")
	cache := filepath.Join(dir, "xdg-cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	expr, err := filepath.Abs(filepath.Join("testdata", "fixtures.nix"))
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 8)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}

	r := runNixIn(ctx, cache, "nix-build", expr, "-A", "all",
		"--argstr", "salt", hex.EncodeToString(salt),
		"-o", filepath.Join(dir, "result"))
	if r.err != nil {
		return nil, fmt.Errorf("%v", r)
	}
	fx := &fixtureSet{
		src:    filepath.Join(dir, "src"),
		root:   strings.TrimSpace(string(r.stdout)),
		byName: map[string]string{},
		facts:  map[string]pathFacts{},
	}

	r = runNixIn(ctx, cache, "nix-store", "-qR", fx.root)
	if r.err != nil {
		return nil, fmt.Errorf("%v", r)
	}
	fx.paths = sortedLines(r.stdout)
	for _, p := range fx.paths {
		base := filepath.Base(p)
		name, ok := strings.CutPrefix(base[33:], fixturePrefix)
		if !ok {
			return nil, fmt.Errorf("unexpected path %s in the fixture closure", p)
		}
		fx.byName[name] = p
	}
	for _, want := range []string{"leaf", "shapes", "deep", "big", "many", "refs", "single-file",
		"single-exec", "empty-file", "symlink-out", "dangling-out", "empty-dir", "all"} {
		if fx.byName[want] == "" {
			return nil, fmt.Errorf("fixture %q missing from the closure of %s", want, fx.root)
		}
	}

	args := append(slices.Clone(nixExperimental), "copy", "--no-check-sigs", "--to", fx.src)
	r = runNixIn(ctx, cache, "nix", append(args, fx.paths...)...)
	if r.err != nil {
		return nil, fmt.Errorf("%v", r)
	}

	for _, p := range fx.paths {
		var f pathFacts
		if f.narDigest, f.narSize, err = dumpDigest(ctx, cache, fx.src, p); err != nil {
			return nil, err
		}
		if r = runNixIn(ctx, cache, "nix-store", "--store", fx.src, "-q", "--hash", p); r.err != nil {
			return nil, fmt.Errorf("%v", r)
		}
		f.narHash = strings.TrimSpace(string(r.stdout))
		if r = runNixIn(ctx, cache, "nix-store", "--store", fx.src, "-q", "--references", p); r.err != nil {
			return nil, fmt.Errorf("%v", r)
		}
		f.refs = sortedLines(r.stdout)
		fx.facts[p] = f
	}
	return fx, nil
}

// hashPart returns the 32-character hash part of a store path.
func hashPart(path string) string {
	return filepath.Base(path)[:32]
}
