package nixstore_test

// A throw-away chroot Nix store shared by the tests of this package, built
// once per run (sync.Once) from testdata/fixtures.nix with a random salt, so
// no earlier run's paths or caches can hide a bug. The derivations are built
// in the machine's store (NIX_REMOTE=local, sandbox off) and copied into the
// chroot store with `nix copy`; the tests read the chroot store only.
//
// Tests that need Nix skip without it, unless CI=true, where that fails.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixture is the shared chroot store.
type fixture struct {
	root string // the chroot store: --store root, nix/var/nix/db/db.sqlite

	leaf, refs, shapes, gc string // store paths copied into root
	ca                     string // a content-addressed path added to root
	many                   []string

	keyName string // the key refs was signed with
	pubKey  string
	keyFile string

	// home is a scratch directory for Nix's per-user state.
	home string
}

var (
	fixtureOnce sync.Once
	fixtureVal  *fixture
	fixtureErr  error
	// tempDirs are removed by TestMain.
	tempDirs []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		removeAll(d)
	}
	os.Exit(code)
}

// requireNix skips the test when Nix is missing, or fails it under CI=true.
func requireNix(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not on PATH (required when CI=true)", tool)
			}
			t.Skipf("%s not on PATH", tool)
		}
	}
}

// getFixture returns the shared store, building it on first use.
func getFixture(t testing.TB) *fixture {
	t.Helper()
	requireNix(t)
	fixtureOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		fixtureVal, fixtureErr = buildFixture(ctx)
	})
	if fixtureErr != nil {
		t.Fatalf("building the fixture store: %v", fixtureErr)
	}
	return fixtureVal
}

func mkTemp(pattern string) (string, error) {
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	tempDirs = append(tempDirs, d)
	return d, nil
}

func buildFixture(ctx context.Context) (*fixture, error) {
	dir, err := mkTemp("peerix-nixstore-test-")
	if err != nil {
		return nil, err
	}
	// World-readable, so an unprivileged process can read the store too.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	f := &fixture{root: filepath.Join(dir, "store"), home: filepath.Join(dir, "home")}
	if err := os.MkdirAll(f.home, 0o700); err != nil {
		return nil, err
	}
	expr, err := filepath.Abs(filepath.Join("testdata", "fixtures.nix"))
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 8)
	rand.Read(salt)

	out, err := f.nix(ctx, nil, "nix-build", expr, "--no-out-link", "--argstr", "salt", hex.EncodeToString(salt),
		"-A", "leaf", "-A", "refs", "-A", "shapes", "-A", "gc", "-A", "many")
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(out)
	if len(paths) != 4+24 {
		return nil, fmt.Errorf("nix-build printed %d paths, want 28: %q", len(paths), out)
	}
	f.leaf, f.refs, f.shapes, f.gc, f.many = paths[0], paths[1], paths[2], paths[3], paths[4:]

	if _, err := f.nix(ctx, nil, "nix", "copy", "--no-check-sigs", "--to", f.root, f.leaf, f.refs, f.shapes, f.gc); err != nil {
		return nil, err
	}

	// A content-addressed path, made by adding a file to the store.
	caFile := filepath.Join(dir, "peerix-nixstore-ca-"+hex.EncodeToString(salt))
	if err := os.WriteFile(caFile, []byte("content-addressed "+hex.EncodeToString(salt)+"\n"), 0o644); err != nil {
		return nil, err
	}
	if out, err = f.nix(ctx, nil, "nix-store", "--store", f.root, "--add", caFile); err != nil {
		return nil, err
	}
	f.ca = strings.TrimSpace(out)

	// Sign refs (and only refs) with a key made by Nix. This happens before
	// any test reads the store: see TestSignaturesAddedLater.
	f.keyName = "peerix-nixstore-test-1"
	f.keyFile = filepath.Join(dir, "key.sec")
	pubFile := filepath.Join(dir, "key.pub")
	if _, err := f.nix(ctx, nil, "nix-store", "--generate-binary-cache-key", f.keyName, f.keyFile, pubFile); err != nil {
		return nil, err
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return nil, err
	}
	f.pubKey = strings.TrimSpace(string(pub))
	if _, err := f.nix(ctx, nil, "nix", "store", "sign", "--store", f.root, "--key-file", f.keyFile, f.refs); err != nil {
		return nil, err
	}
	return f, nil
}

// nix runs a Nix tool with the environment the tests need and returns its
// standard output.
func (f *fixture) nix(ctx context.Context, stdin []byte, name string, args ...string) (string, error) {
	if name == "nix" {
		args = append([]string{"--extra-experimental-features", "nix-command"}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(),
		"NIX_REMOTE=local",
		"HOME="+f.home,
		"XDG_CACHE_HOME="+filepath.Join(f.home, ".cache"),
		// No substituters: nothing is fetched, and no time is lost trying.
		"NIX_CONFIG=substituters =\nrequire-sigs = false\n",
	)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// mustNix is nix for tests.
func (f *fixture) mustNix(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := f.nix(context.Background(), nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hashPart is the 32-character hash part of a store path.
func hashPart(storePath string) string {
	return path.Base(storePath)[:32]
}

// nixFacts is what Nix itself says about a path in the fixture store.
type nixFacts struct {
	narHash    string   // sha256:<nix base-32>, as nix-store -q --hash prints it
	narSize    uint64   // nix-store -q --size
	references []string // full paths, sorted
	deriver    string   // full path, or ""
	signatures []string
	ca         string
}

func (f *fixture) facts(t testing.TB, storePath string) nixFacts {
	t.Helper()
	var nf nixFacts
	nf.narHash = strings.TrimSpace(f.mustNix(t, "nix-store", "--store", f.root, "-q", "--hash", storePath))
	size := strings.TrimSpace(f.mustNix(t, "nix-store", "--store", f.root, "-q", "--size", storePath))
	if _, err := fmt.Sscan(size, &nf.narSize); err != nil {
		t.Fatalf("nix-store -q --size: %q", size)
	}
	nf.references = strings.Fields(f.mustNix(t, "nix-store", "--store", f.root, "-q", "--references", storePath))
	sort.Strings(nf.references)

	var infos []struct {
		Path       string   `json:"path"`
		Deriver    string   `json:"deriver"`
		Signatures []string `json:"signatures"`
		CA         string   `json:"ca"`
	}
	out := f.mustNix(t, "nix", "path-info", "--store", f.root, "--json", storePath)
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 || infos[0].Path != storePath {
		t.Fatalf("nix path-info --json %s: %q (%v)", storePath, out, err)
	}
	nf.deriver, nf.signatures, nf.ca = infos[0].Deriver, infos[0].Signatures, infos[0].CA
	return nf
}

// dump is the path's NAR as Nix writes it (`nix store dump-path`, which,
// unlike `nix-store --store DIR --dump`, reads the chroot store).
func (f *fixture) dump(t testing.TB, storePath string) []byte {
	t.Helper()
	return []byte(f.mustNix(t, "nix", "store", "dump-path", "--store", f.root, storePath))
}

// removeAll deletes a tree that may hold read-only store directories.
func removeAll(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
	_ = os.RemoveAll(dir)
}
