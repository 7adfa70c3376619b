package e2e

// Key files and the state dir: whoever reads the signing key signs as this
// machine, whoever reads the state dir learns its peer identity and what
// it shares. serve refuses a signing key that group or others may read,
// doctor says so, and the state dir and its files are the daemon's alone.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runPeerixEnv runs the peerix binary with args and extra environment
// (bounded to 30 s) and returns its exit code and output.
func runPeerixEnv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerixBin, args...)
	cmd.Env = append(os.Environ(), "NIX_SECRET_KEY_FILE=")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee) && ctx.Err() == nil:
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("peerix %s: %v\n%s", strings.Join(args, " "), err, out.String())
	return 0, ""
}

// TestSigningKeyMode: serve refuses a signing key that group or others may
// read, with one line naming the file and the fix, and exits non-zero;
// doctor reports it; with the key 0600 both are content.
func TestSigningKeyMode(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	key := keygen(t, "peerix-mode-test")
	if err := os.Chmod(key.secretFile, 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	serve := []string{"serve", "--mode", "local", "--store-root", fx.src,
		"--state-dir", filepath.Join(t.TempDir(), "state"), "--listen", listen, "--signing-key-file", key.secretFile}
	code, out := runPeerixEnv(t, nil, serve...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	t.Logf("serve with a 0644 signing key: exit %d:\n%s", code, out)
	if code == 0 {
		t.Errorf("serve with a signing key readable by others exited 0")
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, key.secretFile) || !strings.Contains(last, "chmod 600 "+key.secretFile) {
		t.Errorf("serve's last line %q does not name the file and the fix (chmod 600 %s)", last, key.secretFile)
	}
	// The same through $NIX_SECRET_KEY_FILE.
	envServe := append([]string(nil), serve[:len(serve)-2]...)
	if code, out := runPeerixEnv(t, []string{"NIX_SECRET_KEY_FILE=" + key.secretFile}, envServe...); code == 0 || !strings.Contains(out, "chmod 600 "+key.secretFile) {
		t.Errorf("serve with NIX_SECRET_KEY_FILE readable by others: exit %d\n%s", code, out)
	}

	// doctor, for a daemon that is not there (its key checks need none),
	// with the key named by $NIX_SECRET_KEY_FILE and no config file.
	home := t.TempDir()
	env := []string{"NIX_SECRET_KEY_FILE=" + key.secretFile, "HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config")}
	code, out = runPeerixEnv(t, env, "doctor", "--url", "http://"+listen)
	want := fmt.Sprintf("FAIL  signing key: secret key file %s: mode 0644", key.secretFile)
	if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "fix: chmod 600 "+key.secretFile) {
		t.Errorf("doctor with a 0644 signing key: exit %d, want 1 and %q with its fix:\n%s", code, want, out)
	}
	if err := os.Chmod(key.secretFile, 0o600); err != nil {
		t.Fatal(err)
	}
	_, out = runPeerixEnv(t, env, "doctor", "--url", "http://"+listen)
	if want := "OK    signing key: " + key.secretFile + " (peerix-mode-test) is readable by its owner only"; !strings.Contains(out, want) {
		t.Errorf("doctor with a 0600 signing key lacks %q:\n%s", want, out)
	}
	d := startPeerix(t, localDaemon(t, fx.src, "--signing-key-file", key.secretFile))
	d.alive(t)
}

// TestStateDirMode: a state dir an older peerix left 0755, with
// announced.json 0644 in it, is narrowed to 0700 and 0600 when the daemon
// starts; every file the daemon writes there (identity, announcements,
// stats) is 0600.
func TestStateDirMode(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755)
	old := filepath.Join(state, "announced.json")
	if err := os.WriteFile(old, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(old, 0o644)
	tr := startPeerix(t, trackerServer(t, nil, 30*time.Second))
	d := startPeerix(t, p2pDaemon(nil, tr.url, fx.src, state))
	waitHolder(t, tr, "the daemon", d.peerID, hashPart(fx.root))
	waitFor(t, "the daemon to save what it announced", 10*time.Second, func() (bool, string) {
		b, err := os.ReadFile(old)
		return err == nil && strings.Contains(string(b), d.peerID), fmt.Sprintf("%q, %v", b, err)
	})
	seen := checkStateDir(t, state)
	stopDaemon(t, d) // stats.json is written on the way out
	for f := range checkStateDir(t, state) {
		seen[f] = true
	}
	for _, f := range []string{".", "identity.key", "announced.json", "stats.json", "spool"} {
		if !seen[f] {
			t.Errorf("state dir had no %s", f)
		}
	}
}

// checkStateDir wants every file and directory in state (itself
// included) closed to group and others, and returns their names.
func checkStateDir(t *testing.T, state string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	filepath.WalkDir(state, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(state, p)
		seen[rel] = true
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s in the state dir has mode %04o: group or others may read it", rel, perm)
		}
		return nil
	})
	t.Logf("state dir holds %v", seen)
	return seen
}
