// Package nixtest is what peerix's tests need to run the real Nix, in the
// spirit of net/http/httptest: a Nix configuration of their own, fixture
// store paths built from one Nix file, and throw-away chroot stores.
//
// Only tests import it. Every Nix process a test starts goes through
// Command (or Env, or Setenv for code under test that runs Nix itself), so
// tests behave the same whatever the machine's /etc/nix/nix.conf says or
// lacks: Debian's nix-bin installed without recommends has no nix.conf and
// no nixbld group, and every build there fails with "the group 'nixbld'
// specified in 'build-users-group' does not exist" under the default
// configuration. The configuration tests get instead (NixConf) builds as the
// calling user without a sandbox and never asks a network substituter.
//
// Nix runs on the store directly (NIX_REMOTE=local, so as root, without a
// daemon), and every process gets a fresh XDG_CACHE_HOME: Nix remembers
// narinfo answers per cache URL there, and an answer remembered from an
// earlier invocation must never stand in for a real one.
//
// Nix's files for the tests live in one temporary directory per test
// binary, made on first use; a package that uses the kit removes it after
// its tests, with Main as its TestMain (or Cleanup in its own):
//
//	func TestMain(m *testing.M) { nixtest.Main(m) }
package nixtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// NixConf is the nix.conf every Nix process under test reads instead of the
// machine's.
const NixConf = `# Written by peerix's internal/nixtest for Nix processes under test.
# Build as the calling user: no nixbld group is needed.
build-users-group =
# The fixtures' builders use programs outside the store (/bin/sh).
sandbox = false
# Nothing is fetched from the network unless a test asks for it.
substituters =
experimental-features = nix-command
`

// tools are the Nix programs the tests run: Require checks for them.
var tools = []string{"nix", "nix-build", "nix-store", "nix-instantiate"}

// Timeout bounds each Nix invocation of Must.
const Timeout = 5 * time.Minute

// Available says why the tests cannot run Nix here, or nil if they can.
func Available() error {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found on PATH: these tests need Nix", tool)
		}
	}
	return nil
}

// Require skips the test when Nix is not installed, or fails it when the
// environment says CI=true, where the tests must not pass by skipping.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (required when CI=true)", err)
		}
		t.Skip(err)
	}
}

// run is this test binary's directory for Nix's configuration, caches,
// fixtures and sample store.
var run struct {
	once   sync.Once
	dir    string
	err    error
	caches atomic.Int64
}

func runDir() (string, error) {
	run.once.Do(func() {
		run.dir, run.err = os.MkdirTemp("", "peerix-nixtest-")
		if run.err == nil {
			run.err = writeConf(filepath.Join(run.dir, "conf"))
		}
	})
	return run.dir, run.err
}

// Cleanup removes the files the kit made for this test binary, the
// fixtures' chroot stores among them. Fixture paths built in the machine's
// store stay there (until Nix collects garbage). Call it from TestMain,
// after m.Run.
func Cleanup() {
	if run.dir != "" {
		RemoveAll(run.dir)
	}
}

// Main is a TestMain for a package that uses the kit: it runs the tests,
// calls Cleanup and exits with the tests' status.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

func writeConf(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "nix.conf"), []byte(NixConf), 0o644)
}

// Env returns the environment of a Nix process under test: the test's own,
// with Nix's configuration read from NixConf alone (NIX_CONF_DIR, no user
// nix.conf files, no NIX_CONFIG), NIX_REMOTE=local, NIX_PAGER=cat and a
// fresh XDG_CACHE_HOME. To change a setting for one process, give it
// `--option NAME VALUE` or append NIX_CONFIG=... to the result.
func Env() ([]string, error) {
	dir, err := runDir()
	if err != nil {
		return nil, err
	}
	cache := filepath.Join(dir, "cache", strconv.FormatInt(run.caches.Add(1), 10))
	vars := nixVars(filepath.Join(dir, "conf"), cache)
	var env []string
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(vars, func(v string) bool { return sameName(kv, v) }) {
			env = append(env, kv)
		}
	}
	return append(env, vars...), nil
}

// nixVars are the variables that set up a Nix process under test, as
// NAME=value.
func nixVars(confDir, cacheDir string) []string {
	return []string{
		"NIX_CONF_DIR=" + confDir,
		"NIX_USER_CONF_FILES=",
		"NIX_CONFIG=",
		"NIX_REMOTE=local",
		"XDG_CACHE_HOME=" + cacheDir,
		"NIX_PAGER=cat",
	}
}

func sameName(kv1, kv2 string) bool {
	n1, _, _ := strings.Cut(kv1, "=")
	n2, _, _ := strings.Cut(kv2, "=")
	return n1 == n2
}

// Setenv gives the test's own process the Nix settings of Env, for the
// duration of t, for code under test that runs Nix itself. Like t.Setenv,
// it cannot be used in parallel tests.
func Setenv(t testing.TB) {
	t.Helper()
	conf := t.TempDir()
	if err := writeConf(conf); err != nil {
		t.Fatal(err)
	}
	for _, kv := range nixVars(conf, t.TempDir()) {
		name, value, _ := strings.Cut(kv, "=")
		t.Setenv(name, value)
	}
}

// Command returns the command that runs a Nix tool ("nix", "nix-build",
// "nix-store", ...) with Env's environment, or a program that starts one
// in that environment (`ip netns exec NS nix-store ...`). An error making
// the environment is returned by the command's Start.
func Command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.WaitDelay = 10 * time.Second
	env, err := Env()
	if err != nil && cmd.Err == nil {
		cmd.Err = err
	}
	cmd.Env = env
	return cmd
}

// Output runs a Nix tool (see Command) and returns its standard output.
// Its error, if it fails, includes the command and its standard error.
func Output(ctx context.Context, tool string, args ...string) ([]byte, error) {
	return output(Command(ctx, tool, args...), nil)
}

// output runs cmd with stdin and returns its standard output, or an error
// that says what ran and what it printed on its standard error.
func output(cmd *exec.Cmd, stdin []byte) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// Must runs a Nix tool (see Command) within Timeout and returns its
// standard output; if the tool fails, so does the test.
func Must(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	return MustInput(t, nil, tool, args...)
}

// MustInput is Must with stdin as the tool's standard input.
func MustInput(t testing.TB, stdin []byte, tool string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	out, err := output(Command(ctx, tool, args...), stdin)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RemoveAll deletes a tree that may hold read-only store directories.
func RemoveAll(dir string) error {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// TempStore returns the path of a directory for a chroot store, not yet
// made, that is removed when t ends even though Nix leaves its contents
// read-only.
func TempStore(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	t.Cleanup(func() {
		if err := RemoveAll(dir); err != nil {
			t.Errorf("removing the store %s: %v", dir, err)
		}
	})
	return dir
}
