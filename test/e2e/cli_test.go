package e2e

// The command line as scripts and operators meet it: help, version, and
// ports that clash.

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runPeerix runs the peerix binary to its end (bounded) and returns its
// stdout, stderr and exit code.
func runPeerix(t *testing.T, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	return runPeerixOn(t, nil, timeout, args...)
}

// runPeerixOn is runPeerix on host h (nil: this machine).
func runPeerixOn(t *testing.T, h *nsHost, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerixBin, args...)
	if h != nil {
		cmd = h.command(ctx, peerixBin, args...)
	}
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("peerix %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("peerix %s did not end within %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), timeout, out.String(), errOut.String())
	}
	return out.String(), errOut.String(), code
}

// TestHelpAndVersion: every subcommand's --help exits 0 and prints its
// usage to stdout; -v and --version name the commit.
func TestHelpAndVersion(t *testing.T) {
	requireEnv(t)
	t.Parallel()
	for _, cmd := range []string{"serve", "tracker", "status", "doctor", "keygen", "version", "completion"} {
		for _, help := range []string{"--help", "-h"} {
			out, errOut, code := runPeerix(t, 30*time.Second, cmd, help)
			if code != 0 || !strings.HasPrefix(out, "usage: peerix "+cmd) || errOut != "" {
				t.Errorf("peerix %s %s: exit %d, stdout %.200q, stderr %q; want exit 0 and the usage on stdout", cmd, help, code, out, errOut)
			}
		}
	}
	for _, args := range [][]string{{"version"}, {"-v"}, {"--version"}} {
		out, _, code := runPeerix(t, 30*time.Second, args...)
		if code != 0 || !strings.HasPrefix(out, "peerix ") || !strings.Contains(out, "(commit ") {
			t.Errorf("peerix %s: exit %d, %q; want the version and commit", args[0], code, out)
		}
	}
	if _, errOut, code := runPeerix(t, 30*time.Second, "status", "--bogus"); code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 ||
		!strings.Contains(errOut, "unknown flag --bogus") {
		t.Errorf("peerix status --bogus: exit %d, %q; want one line naming the flag", code, errOut)
	}
}

// TestPortClash: on one host, beside a daemon on the default ports (LAN
// mode: UDP 12304) and a P2P daemon on the default p2p port 12306, a
// second P2P daemon on 12306, a tracker whose relay is on 12306, and a
// second daemon on the LAN port each exit at once, non-zero, with one line
// naming the flag and the port; the running daemons go on. A tracker on
// its default relay port (12307) starts beside them.
func TestPortClash(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	A := newLAN(t, "A").host("A")
	store := initStore(t, "clash-store")
	first := startPeerix(t, lanDaemon(t, A, store, "--filter", "none"))
	p2p := startPeerix(t, peerixOptions{
		label: "p2p", host: A, listen: "127.0.0.1:12400",
		args: []string{"serve", "--mode", "p2p", "--lan=false", "--filter", "none",
			"--store-root", store, "--state-dir", filepath.Join(t.TempDir(), "p2p")},
		readyPath: "/api/status",
	})
	tracker := startPeerix(t, peerixOptions{
		label: "tracker (default relay port)", host: A, listen: "127.0.0.1:12305",
		args:      []string{"tracker", "--db", filepath.Join(t.TempDir(), "tracker", "tracker.db")},
		readyPath: "/v1/info",
	})
	port := strconv.Itoa(libp2pPort)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"second daemon on the p2p port", []string{"serve", "--mode", "p2p", "--lan=false", "--filter", "none",
			"--listen", "127.0.0.1:12401", "--store-root", store, "--state-dir", filepath.Join(t.TempDir(), "again")},
			[]string{"--p2p-port " + port + ":", ":" + port + " is taken"}},
		{"tracker relay on the daemon's p2p port", []string{"tracker", "--relay-port", port, "--listen", "127.0.0.1:12402",
			"--db", filepath.Join(t.TempDir(), "tracker2", "tracker.db")},
			[]string{"--relay-port " + port + ":", ":" + port + " is taken"}},
		{"second daemon on the LAN port", []string{"serve", "--mode", "lan", "--filter", "none",
			"--listen", "127.0.0.1:12403", "--store-root", store, "--state-dir", filepath.Join(t.TempDir(), "lan-again")},
			[]string{"--lan-port " + strconv.Itoa(lanPort) + ":", "is taken"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, errOut, code := runPeerixOn(t, A, 30*time.Second, c.args...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			last := lines[len(lines)-1]
			if code == 0 {
				t.Fatalf("peerix %s exited 0; want a failed start\n%s", strings.Join(c.args, " "), errOut)
			}
			for _, w := range c.want {
				if !strings.Contains(last, w) || !strings.HasPrefix(last, "peerix: ") {
					t.Errorf("last line %q lacks %q\nstderr:\n%s", last, w, errOut)
				}
			}
			t.Logf("exit %d after %v: %s", code, time.Since(start).Round(time.Millisecond), last)
		})
	}
	first.alive(t)
	p2p.alive(t)
	tracker.alive(t)
}
