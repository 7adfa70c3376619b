package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// Every Nix process of these tests runs through nixtest.Command: with the
// tests' own nix.conf (no nixbld group or /etc/nix/nix.conf needed), on the
// store directly (NIX_REMOTE=local) and with a fresh XDG_CACHE_HOME, so no
// narinfo that Nix remembered from another invocation can stand in for a
// real answer.

// nixTimeout bounds any single Nix invocation.
const nixTimeout = 5 * time.Minute

// nixResult is what a finished Nix invocation said.
type nixResult struct {
	stdout, stderr []byte
	err            error
	// cpu is the CPU time (user and system) the process used.
	cpu time.Duration
}

func (r nixResult) String() string {
	return fmt.Sprintf("err: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// runCmd runs cmd to completion; a failure is described as the Nix tool
// with its arguments.
func runCmd(cmd *exec.Cmd, what, tool string, args []string) nixResult {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s%s %s: %w", what, tool, strings.Join(args, " "), err)
	}
	var cpu time.Duration
	if ps := cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
	}
	return nixResult{stdout.Bytes(), stderr.Bytes(), err, cpu}
}

// runNix runs a Nix tool to completion within nixTimeout.
func runNix(t testing.TB, tool string, args ...string) nixResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nixTimeout)
	defer cancel()
	return runCmd(nixtest.Command(ctx, tool, args...), "", tool, args)
}

// mustNix runs a Nix tool and fails the test if it fails.
func mustNix(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	r := runNix(t, tool, args...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// nix3 runs the new `nix` CLI (nixtest's nix.conf enables nix-command).
func nix3(t testing.TB, args ...string) nixResult {
	t.Helper()
	return runNix(t, "nix", args...)
}

// storeDir returns a fresh directory for a chroot store that is removed at
// the end of the test even though Nix leaves its contents read-only.
func storeDir(t *testing.T, name string) string {
	t.Helper()
	return nixtest.TempStore(t, name)
}

// dumpDigest returns the hex SHA-256 and the size of path's NAR in store,
// without holding the NAR.
func dumpDigest(ctx context.Context, store, path string) (string, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, nixTimeout)
	defer cancel()
	return nixtest.DumpDigest(ctx, store, path)
}

// dumpBytes returns the whole NAR of a path (only for the small fixtures).
func dumpBytes(t *testing.T, store, path string) []byte {
	t.Helper()
	return nixtest.MustDump(t, store, path)
}

// references lists the references of path in store, sorted.
func references(t *testing.T, store, path string) []string {
	t.Helper()
	return nixtest.MustInfo(t, store, path).References
}

// isValid reports whether path is a valid path in store.
func isValid(t *testing.T, store, path string) bool {
	t.Helper()
	if _, err := os.Stat(filepath.Join(store, "nix", "var", "nix", "db", "db.sqlite")); err != nil {
		return false // no database: nothing can be valid there
	}
	return runNix(t, "nix-store", "--store", store, "--check-validity", path).err == nil
}
