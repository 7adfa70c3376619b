package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds how long a daemon may take to answer its first request.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop before the daemon is killed.
	stopTimeout = 5 * time.Second
)

// daemon is a running `peerix serve` under test.
type daemon struct {
	addr   string // 127.0.0.1:port
	base   string // http://127.0.0.1:port
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{} // closed when the process is gone
	err    error         // the process's exit status, once exited is closed
}

type daemonOptions struct {
	storeRoot      string
	signingKeyFile string
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePort asks the kernel for a free loopback port. Another process may take
// it before the daemon binds it; startDaemon retries when that happens.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDaemon runs `peerix serve --mode local` on opts.storeRoot and waits
// until it answers /local/nix-cache-info. The daemon is stopped at the end of
// the test; if it died on its own before that, the test fails.
func startDaemon(t *testing.T, opts daemonOptions) *daemon {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		d, err := tryStartDaemon(t, opts)
		if err == nil {
			return d
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("starting peerix: %v", lastErr)
	return nil
}

func tryStartDaemon(t *testing.T, opts daemonOptions) (*daemon, error) {
	t.Helper()
	port := freePort(t)
	d := &daemon{
		addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		stderr: &lockedBuffer{},
		exited: make(chan struct{}),
	}
	d.base = "http://" + d.addr
	args := []string{"serve", "--mode", "local",
		"--store-root", opts.storeRoot,
		"--listen", d.addr,
		"--state-dir", filepath.Join(t.TempDir(), "state"),
	}
	if opts.signingKeyFile != "" {
		args = append(args, "--signing-key-file", opts.signingKeyFile)
	}
	d.cmd = exec.Command(peerixBin, args...)
	d.cmd.Stdout = d.stderr
	d.cmd.Stderr = d.stderr
	// No signing key may leak in from the environment of whoever runs the tests.
	d.cmd.Env = append(os.Environ(), "NIX_SECRET_KEY_FILE=")
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", peerixBin, strings.Join(args, " "), err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()

	stopping := false
	t.Cleanup(func() {
		select {
		case <-d.exited:
			if !stopping {
				t.Errorf("peerix exited during the test: %v\nstderr:\n%s", d.err, d.stderr)
			}
			return
		default:
		}
		stopping = true
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(stopTimeout):
			t.Errorf("peerix did not stop within %v of SIGTERM; killing it", stopTimeout)
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("peerix %s stderr:\n%s", strings.Join(args, " "), d.stderr)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/local/nix-cache-info", nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, nil
			}
			err = fmt.Errorf("GET /local/nix-cache-info: %s", resp.Status)
		}
		select {
		case <-d.exited:
			stopping = true // reported here, not again by the cleanup
			return nil, fmt.Errorf("peerix exited before serving: %v\nstderr:\n%s", d.err, d.stderr)
		case <-ctx.Done():
			return nil, fmt.Errorf("peerix not ready within %v (last: %v)\nstderr:\n%s", startTimeout, err, d.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive fails the test if the daemon has exited.
func (d *daemon) alive(t *testing.T) {
	t.Helper()
	select {
	case <-d.exited:
		t.Fatalf("peerix has exited: %v\nstderr:\n%s", d.err, d.stderr)
	default:
	}
}

// keyPair is a Nix signing key pair made by `peerix keygen`.
type keyPair struct {
	secretFile string
	public     string // name:base64, as trusted-public-keys takes it
}

// keygen makes a key pair with `peerix keygen NAME --out DIR`.
func keygen(t *testing.T, name string) keyPair {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerixBin, "keygen", name, "--out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peerix keygen %s --out %s: %v\n%s", name, dir, err, out)
	}
	kp := keyPair{secretFile: filepath.Join(dir, name+".sec")}
	sec, err := os.ReadFile(kp.secretFile)
	if err != nil {
		t.Fatalf("peerix keygen wrote no secret key: %v", err)
	}
	pub, err := os.ReadFile(filepath.Join(dir, name+".pub"))
	if err != nil {
		t.Fatalf("peerix keygen wrote no public key: %v", err)
	}
	kp.public = strings.TrimSpace(string(pub))
	if !strings.HasPrefix(kp.public, name+":") || !strings.HasPrefix(strings.TrimSpace(string(sec)), name+":") {
		t.Fatalf("peerix keygen %s: keys not in Nix's name:base64 form:\npublic %q", name, kp.public)
	}
	if fi, err := os.Stat(kp.secretFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("secret key %s has mode %v; want no access for group and others", kp.secretFile, fi.Mode().Perm())
	}
	return kp
}
