package nixtest

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixturesNix is the Nix file the fixtures are built from.
//
//go:embed fixtures.nix
var fixturesNix []byte

// namePrefix starts the name of every fixture path.
const namePrefix = "peerix-fixture-"

// closureNames are the fixtures in the closure of "all", "all" included.
var closureNames = []string{"leaf", "shapes", "deep", "big", "many", "refs", "single-file",
	"single-exec", "empty-file", "symlink-out", "dangling-out", "empty-dir", "all"}

// Fixtures are the store paths of fixtures.nix, built with a fresh salt in
// the machine's store, and a signing key made by Nix.
type Fixtures struct {
	Salt string

	// All is the fixture whose closure is every fixture but GC, Outputs
	// and the trust fixtures.
	All string
	// Paths is the closure of All, sorted.
	Paths []string

	// Some fixtures of the closure of All, by role.
	Leaf    string   // a directory with one file and no references
	Refs    string   // refers to Leaf, Shapes and itself
	Shapes  string   // every kind of NAR entry, odd names, a 350 kB file
	GC      string   // a lone file outside the closure, for garbage collection
	Outputs []string // 24 small outputs of one derivation, outside the closure
	// Wide is the root of a closure of 202 small paths (itself and 201
	// parts), outside the closure of All: the shape of what Nix substitutes.
	Wide string

	// Key was made by `nix-store --generate-binary-cache-key`; nothing is
	// signed with it yet.
	Key Key

	byName map[string]string
}

// Path returns the fixture named name: "leaf", "single-file", "all", "gc",
// "outputs-o3", "trust-secret", ... (its store path's name without the
// "peerix-fixture-" prefix). It panics if there is no such fixture.
func (f *Fixtures) Path(name string) string {
	p, ok := f.byName[name]
	if !ok {
		panic("nixtest: no fixture named " + strconv.Quote(name))
	}
	return p
}

// Build builds the fixtures with a fresh salt, keeping its files (the
// Nix file, GC roots for the paths, the key) in dir.
func Build(ctx context.Context, dir string) (*Fixtures, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	expr := filepath.Join(dir, "fixtures.nix")
	if err := os.WriteFile(expr, fixturesNix, 0o644); err != nil {
		return nil, err
	}
	salt := make([]byte, 8)
	rand.Read(salt)
	f := &Fixtures{Salt: hex.EncodeToString(salt), byName: map[string]string{}}

	out, err := Output(ctx, "nix-build", expr, "--argstr", "salt", f.Salt,
		"--out-link", filepath.Join(dir, "result"),
		"-A", "all", "-A", "gc", "-A", "outputs", "-A", "trust", "-A", "wide")
	if err != nil {
		return nil, err
	}
	built := strings.Fields(string(out))
	if err := f.name(built); err != nil {
		return nil, err
	}
	if f.All = f.byName["all"]; f.All == "" {
		return nil, fmt.Errorf("nix-build %s -A all built no peerix-fixture-all: %q", expr, built)
	}
	if out, err = Output(ctx, "nix-store", "-qR", f.All); err != nil {
		return nil, err
	}
	f.Paths = slices.Sorted(slices.Values(strings.Fields(string(out))))
	if err := f.name(f.Paths); err != nil {
		return nil, err
	}
	for _, name := range append(slices.Clone(closureNames), "gc", "trust-public", "trust-private",
		"trust-denyme", "trust-secret", "trust-tampered") {
		if f.byName[name] == "" {
			return nil, fmt.Errorf("no fixture %q among the paths built from %s", name, expr)
		}
	}
	f.Leaf, f.Refs, f.Shapes, f.GC = f.byName["leaf"], f.byName["refs"], f.byName["shapes"], f.byName["gc"]
	if f.Wide = f.byName["wide-root"]; f.Wide == "" {
		return nil, fmt.Errorf("no fixture wide-root among the paths built from %s", expr)
	}
	for i := 0; ; i++ {
		p, ok := f.byName["outputs-o"+strconv.Itoa(i)]
		if !ok {
			break
		}
		f.Outputs = append(f.Outputs, p)
	}
	if len(f.Outputs) != 24 {
		return nil, fmt.Errorf("%d outputs of peerix-fixture-outputs, want 24", len(f.Outputs))
	}

	if f.Key, err = GenerateKey(ctx, filepath.Join(dir, "key"), "peerix-nixtest-1"); err != nil {
		return nil, err
	}
	return f, nil
}

// name records paths in byName by their fixture names.
func (f *Fixtures) name(paths []string) error {
	for _, p := range paths {
		name := Name(p)
		if name == "" {
			return fmt.Errorf("%s is not a fixture", p)
		}
		f.byName[name] = p
	}
	return nil
}

// Name returns the fixture name of a store path built from fixtures.nix
// (the name Path takes), or "" if it is not a fixture.
func Name(storePath string) string {
	base := filepath.Base(storePath)
	name, ok := strings.CutPrefix(base[min(33, len(base)):], namePrefix)
	if !ok {
		return ""
	}
	return name
}

// buildTimeout bounds building the shared fixtures or the sample store.
const buildTimeout = 5 * time.Minute

// lazy is a value made once per test binary, in the kit's directory.
type lazy[T any] struct {
	once sync.Once
	v    T
	err  error
}

// get returns the value, making it on first use; if that fails, so do the
// test and every later one that asks.
func (l *lazy[T]) get(t testing.TB, what string, build func(ctx context.Context, dir string) (T, error)) T {
	t.Helper()
	l.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		dir, err := runDir()
		if err != nil {
			l.err = err
			return
		}
		l.v, l.err = build(ctx, dir)
	})
	if l.err != nil {
		t.Fatalf("%s: %v", what, l.err)
	}
	return l.v
}

var shared lazy[*Fixtures]

// Shared returns the fixtures of this test binary, built on first use. It
// skips or fails the test as Require does where Nix is missing.
func Shared(t testing.TB) *Fixtures {
	t.Helper()
	Require(t)
	return shared.get(t, "building the Nix fixtures", func(ctx context.Context, dir string) (*Fixtures, error) {
		return Build(ctx, filepath.Join(dir, "fixtures"))
	})
}

// Sample is a chroot store holding some of the fixtures, for tests of code
// that reads a store: Leaf, Refs, Shapes and GC with their closures, and a
// content-addressed path CA, with Refs (and only Refs) signed with Key.
type Sample struct {
	*Fixtures
	Store string // the chroot store, as --store takes it
	CA    string // a path added with `nix-store --add`: content-addressed, no deriver
}

// NewSample makes a Sample store of fx in dir.
func NewSample(ctx context.Context, fx *Fixtures, dir string) (*Sample, error) {
	s := &Sample{Fixtures: fx, Store: dir}
	if err := Copy(ctx, s.Store, fx.Leaf, fx.Refs, fx.Shapes, fx.GC); err != nil {
		return nil, err
	}
	var err error
	name := "peerix-fixture-ca-" + fx.Salt
	if s.CA, err = AddFile(ctx, s.Store, name, []byte("content-addressed "+fx.Salt+"\n")); err != nil {
		return nil, err
	}
	if err := Sign(ctx, s.Store, fx.Key, fx.Refs); err != nil {
		return nil, err
	}
	return s, nil
}

var sample lazy[*Sample]

// SharedSample returns the Sample store of this test binary, made from the
// Shared fixtures on first use. The binary's tests share it: one that
// changes it must leave what the others read as it was.
func SharedSample(t testing.TB) *Sample {
	t.Helper()
	fx := Shared(t)
	return sample.get(t, "making the sample store", func(ctx context.Context, dir string) (*Sample, error) {
		return NewSample(ctx, fx, filepath.Join(dir, "sample"))
	})
}
