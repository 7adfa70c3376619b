package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/peerix/peerix/internal/nixtest"
)

// fixtureSet is the closure of nixtest's fixtures (nixtest.Shared: built
// once per run, with fresh paths) copied into a chroot "source" store that
// the daemons under test serve.
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
	narDigest string // hex SHA-256 of the NAR
	narSize   int64
	narHash   string // as `nix-store -q --hash` prints it: sha256:<nix32>
	refs      []string
}

var (
	fixturesOnce sync.Once
	fixturesVal  *fixtureSet
	fixturesErr  error
)

// fixtures returns the shared fixture set, building it on first use.
func fixtures(t *testing.T) *fixtureSet {
	t.Helper()
	requireEnv(t)
	nfx := nixtest.Shared(t)
	fixturesOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*nixTimeout)
		defer cancel()
		fixturesVal, fixturesErr = newFixtureSet(ctx, nfx)
	})
	if fixturesErr != nil {
		t.Fatalf("building fixtures: %v", fixturesErr)
	}
	return fixturesVal
}

func newFixtureSet(ctx context.Context, nfx *nixtest.Fixtures) (*fixtureSet, error) {
	fx := &fixtureSet{
		src:    filepath.Join(workDir, "fixtures", "src"),
		root:   nfx.All,
		paths:  nfx.Paths,
		byName: map[string]string{},
		facts:  map[string]pathFacts{},
	}
	if err := nixtest.Copy(ctx, fx.src, fx.paths...); err != nil {
		return nil, err
	}
	for _, p := range fx.paths {
		fx.byName[nixtest.Name(p)] = p
		var f pathFacts
		var err error
		if f.narDigest, f.narSize, err = nixtest.DumpDigest(ctx, fx.src, p); err != nil {
			return nil, err
		}
		info, err := nixtest.Info(ctx, fx.src, p)
		if err != nil {
			return nil, err
		}
		if int64(info.NarSize) != f.narSize {
			return nil, fmt.Errorf("%s: NarSize %d in the source store, but its NAR has %d bytes", p, info.NarSize, f.narSize)
		}
		f.narHash, f.refs = info.NarHash, info.References
		fx.facts[p] = f
	}
	return fx, nil
}

// hashPart returns the 32-character hash part of a store path.
func hashPart(path string) string {
	return nixtest.HashPart(path)
}
