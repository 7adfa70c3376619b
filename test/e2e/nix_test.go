package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// nixTimeout bounds any single Nix invocation.
const nixTimeout = 5 * time.Minute

// nixCmd prepares a Nix tool invocation that works on the store directly
// (NIX_REMOTE=local) and has a fresh XDG_CACHE_HOME, so no narinfo that Nix
// remembered from another invocation can stand in for a real answer.
func nixCmd(ctx context.Context, cacheDir, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, nixTools[tool], args...)
	cmd.Env = append(os.Environ(),
		"NIX_REMOTE=local",
		"XDG_CACHE_HOME="+cacheDir,
		"NIX_PAGER=cat",
	)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// nixResult is what a finished Nix invocation said.
type nixResult struct {
	stdout, stderr []byte
	err            error
}

func (r nixResult) String() string {
	return fmt.Sprintf("err: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// runNix runs a Nix tool to completion within nixTimeout.
func runNix(t *testing.T, tool string, args ...string) nixResult {
	t.Helper()
	cache, err := os.MkdirTemp(t.TempDir(), "xdg-cache-")
	if err != nil {
		t.Fatal(err)
	}
	return runNixIn(context.Background(), cache, tool, args...)
}

func runNixIn(ctx context.Context, cacheDir, tool string, args ...string) nixResult {
	ctx, cancel := context.WithTimeout(ctx, nixTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := nixCmd(ctx, cacheDir, tool, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", tool, strings.Join(args, " "), err)
	}
	return nixResult{stdout.Bytes(), stderr.Bytes(), err}
}

// mustNix runs a Nix tool and fails the test if it fails.
func mustNix(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	r := runNix(t, tool, args...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// nixExperimental is the flag every `nix` (new CLI) call needs on Nix 2.8.
var nixExperimental = []string{"--extra-experimental-features", "nix-command"}

// nix3 runs the new `nix` CLI.
func nix3(t *testing.T, args ...string) nixResult {
	t.Helper()
	return runNix(t, "nix", append(slices.Clone(nixExperimental), args...)...)
}

// storeDir returns a fresh directory for a chroot store that is removed at
// the end of the test even though Nix leaves its contents read-only.
func storeDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	t.Cleanup(func() { removeAll(dir) })
	return dir
}

// dumpDigest streams `nix-store --store store --dump path` through SHA-256
// and returns the hex digest and the NAR's size, without holding the NAR.
func dumpDigest(ctx context.Context, cacheDir, store, path string) (string, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, nixTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := nixCmd(ctx, cacheDir, "nix-store", "--store", store, "--dump", path)
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", 0, err
	}
	if err := cmd.Start(); err != nil {
		return "", 0, fmt.Errorf("nix-store --dump %s: %w", path, err)
	}
	h := sha256.New()
	n, copyErr := io.Copy(h, out)
	if err := cmd.Wait(); err != nil {
		return "", 0, fmt.Errorf("nix-store --store %s --dump %s: %w: %s", store, path, err, stderr.Bytes())
	}
	if copyErr != nil {
		return "", 0, fmt.Errorf("reading nix-store --dump %s: %w", path, copyErr)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// dumpBytes returns the whole NAR of a path (only for the small fixtures).
func dumpBytes(t *testing.T, store, path string) []byte {
	t.Helper()
	return mustNix(t, "nix-store", "--store", store, "--dump", path)
}

// references lists the references of path in store, sorted.
func references(t *testing.T, store, path string) []string {
	t.Helper()
	return sortedLines(mustNix(t, "nix-store", "--store", store, "-q", "--references", path))
}

// isValid reports whether path is a valid path in store.
func isValid(t *testing.T, store, path string) bool {
	t.Helper()
	if _, err := os.Stat(filepath.Join(store, "nix", "var", "nix", "db", "db.sqlite")); err != nil {
		return false // no database: nothing can be valid there
	}
	return runNix(t, "nix-store", "--store", store, "--check-validity", path).err == nil
}

func sortedLines(b []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}
