package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// Set by TestMain and read-only afterwards.
var (
	// workDir holds what lives for the whole run: the binary and the fixtures.
	workDir string
	// peerixBin is the peerix binary under test.
	peerixBin string
	// skipReason is non-empty when the environment cannot run these tests.
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := nixtest.Available(); err != nil {
		skipReason = err.Error()
	}
	if skipReason != "" {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "e2e: CI=true but %s\n", skipReason)
			return 1
		}
		// Run anyway so every test reports SKIP with the reason.
		return m.Run()
	}

	var err error
	workDir, err = os.MkdirTemp("", "peerix-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer nixtest.RemoveAll(workDir)
	defer nixtest.Cleanup()

	if p := os.Getenv("PEERIX_E2E_BINARY"); p != "" {
		peerixBin, err = filepath.Abs(p)
	} else {
		peerixBin, err = buildPeerix(filepath.Join(workDir, "bin"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	return m.Run()
}

// buildPeerix builds the peerix binary once for the whole run.
func buildPeerix(dir string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "peerix")
	args := []string{"build", "-o", out}
	if os.Getenv("BENCH_PPROF_DIR") != "" {
		args = append(args, "-tags", "pprof") // benchmarks take CPU profiles (bench_test.go)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "github.com/peerix/peerix/cmd/peerix")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the Makefile and the Nix package build it
	cmd.WaitDelay = 10 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build github.com/peerix/peerix/cmd/peerix: %w\n%s", err, b)
	}
	return out, nil
}

// requireEnv skips the test when Nix is missing (TestMain already failed the
// run for that under CI=true).
func requireEnv(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
