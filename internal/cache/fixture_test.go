package cache_test

// A throw-away chroot Nix store for the tests that serve a real
// nixstore.Local, built once per run (sync.Once) from testdata/fixtures.nix
// with a random salt. Derivations are built in the machine's store
// (NIX_REMOTE=local, sandbox off) and copied into the chroot store.
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

	"github.com/nix-community/go-nix/pkg/nixhash"
)

type fixture struct {
	root                   string // the chroot store
	leaf, refs, shapes, ca string
	keyFile, pubKey        string // the key Nix signed refs with
	home                   string
}

var (
	fixtureOnce sync.Once
	fixtureVal  *fixture
	fixtureErr  error
	tempDirs    []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		removeAll(d)
	}
	os.Exit(code)
}

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

func buildFixture(ctx context.Context) (*fixture, error) {
	dir, err := os.MkdirTemp("", "peerix-cache-test-")
	if err != nil {
		return nil, err
	}
	tempDirs = append(tempDirs, dir)
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
	out, err := f.nix(ctx, "nix-build", expr, "--no-out-link", "--argstr", "salt", hex.EncodeToString(salt),
		"-A", "leaf", "-A", "refs", "-A", "shapes")
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(out)
	if len(paths) != 3 {
		return nil, fmt.Errorf("nix-build printed %q", out)
	}
	f.leaf, f.refs, f.shapes = paths[0], paths[1], paths[2]
	if _, err := f.nix(ctx, "nix", "copy", "--no-check-sigs", "--to", f.root, f.leaf, f.refs, f.shapes); err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "peerix-cache-ca-"+hex.EncodeToString(salt))
	if err := os.WriteFile(caFile, []byte("content-addressed "+hex.EncodeToString(salt)+"\n"), 0o644); err != nil {
		return nil, err
	}
	if out, err = f.nix(ctx, "nix-store", "--store", f.root, "--add", caFile); err != nil {
		return nil, err
	}
	f.ca = strings.TrimSpace(out)

	f.keyFile = filepath.Join(dir, "key.sec")
	pubFile := filepath.Join(dir, "key.pub")
	if _, err := f.nix(ctx, "nix-store", "--generate-binary-cache-key", "peerix-cache-test-1", f.keyFile, pubFile); err != nil {
		return nil, err
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return nil, err
	}
	f.pubKey = strings.TrimSpace(string(pub))
	if _, err := f.nix(ctx, "nix", "store", "sign", "--store", f.root, "--key-file", f.keyFile, f.refs); err != nil {
		return nil, err
	}
	return f, nil
}

// nix runs a Nix tool and returns its standard output. extraConfig is
// appended to the configuration through NIX_CONFIG.
func (f *fixture) nixConfig(ctx context.Context, extraConfig, name string, args ...string) (string, error) {
	if name == "nix" {
		args = append([]string{"--extra-experimental-features", "nix-command"}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(),
		"NIX_REMOTE=local",
		"HOME="+f.home,
		"XDG_CACHE_HOME="+filepath.Join(f.home, ".cache"),
		"NIX_CONFIG=substituters =\nrequire-sigs = false\n"+extraConfig,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func (f *fixture) nix(ctx context.Context, name string, args ...string) (string, error) {
	return f.nixConfig(ctx, "", name, args...)
}

func (f *fixture) mustNix(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := f.nix(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hashPart(storePath string) string { return path.Base(storePath)[:32] }

// nixFacts is what Nix says about a path of a store.
type nixFacts struct {
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	Signatures []string `json:"signatures"`
	CA         string   `json:"ca"`
}

func (f *fixture) facts(t testing.TB, storeURL, storePath string) nixFacts {
	t.Helper()
	out := f.mustNix(t, "nix", "path-info", "--store", storeURL, "--json", storePath)
	var infos []nixFacts
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("nix path-info --json %s: %q (%v)", storePath, out, err)
	}
	nf := infos[0]
	// Nix 2.8 writes SRI hashes here; narinfos carry sha256:<nix base-32>.
	h, err := nixhash.ParseAny(nf.NarHash, nil)
	if err != nil {
		t.Fatalf("narHash %q: %v", nf.NarHash, err)
	}
	nf.NarHash = h.Format(nixhash.NixBase32, true)
	sort.Strings(nf.References)
	sort.Strings(nf.Signatures)
	return nf
}

// dump is the path's NAR as Nix writes it.
func (f *fixture) dump(t testing.TB, storePath string) []byte {
	t.Helper()
	return []byte(f.mustNix(t, "nix", "store", "dump-path", "--store", f.root, storePath))
}

func removeAll(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
	_ = os.RemoveAll(dir)
}
