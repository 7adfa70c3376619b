package e2e

// The REAL original peerix (Python, github:cid-chan/peerix) beside peerix
// daemons on a simulated LAN. Opt-in: it runs only when PEERIX_ORIGINAL
// names a checkout of the original (see doc.go for how to run it); CI has
// none and skips it.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

const (
	// originalEnv names a checkout of the original peerix (the directory
	// holding its peerix/ package).
	originalEnv = "PEERIX_ORIGINAL"
	// originalPythonEnv, if set, is the Python interpreter to run it with;
	// otherwise the first of python3 on PATH and /usr/bin/python3 that has
	// its dependencies.
	originalPythonEnv = "PEERIX_ORIGINAL_PYTHON"
)

// originalModules are the Python modules the original imports (Debian:
// python3-aiohttp python3-psutil python3-starlette python3-hypercorn
// python3-uvloop).
var originalModules = []string{"aiohttp", "psutil", "starlette", "hypercorn", "uvloop"}

// originalKit is what running the original needs.
type originalKit struct {
	dir    string // the checkout
	python string // an interpreter with originalModules
}

// requireOriginal skips the test unless PEERIX_ORIGINAL is set, also under
// CI=true (CI has no original). When it is set but the original cannot run
// here, the test skips with the reason, or under CI=true fails: whoever set
// it there wants the test to run.
func requireOriginal(t *testing.T) originalKit {
	t.Helper()
	dir := os.Getenv(originalEnv)
	if dir == "" {
		t.Skipf("%s is not set: this test runs the real original peerix from a checkout of github:cid-chan/peerix", originalEnv)
	}
	kit, reason := findOriginal(dir)
	if reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s=%s but %s", originalEnv, dir, reason)
		}
		t.Skipf("%s=%s but %s", originalEnv, dir, reason)
	}
	return kit
}

func findOriginal(dir string) (originalKit, string) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return originalKit{}, err.Error()
	}
	if _, err := os.Stat(filepath.Join(abs, "peerix", "__main__.py")); err != nil {
		return originalKit{}, "it holds no peerix/__main__.py: not a checkout of the original peerix"
	}
	for _, tool := range []string{"nix-serve", "unshare", "mount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			why := "the original starts it for its own store"
			if tool != "nix-serve" {
				why = "the original runs in a mount namespace of its own"
			}
			return originalKit{}, fmt.Sprintf("%s is not on PATH (%s)", tool, why)
		}
	}
	candidates := []string{os.Getenv(originalPythonEnv)}
	if candidates[0] == "" {
		candidates = []string{"python3", "/usr/bin/python3"}
	}
	var tried []string
	for _, c := range candidates {
		py, err := exec.LookPath(c)
		if err != nil {
			tried = append(tried, c+": not found")
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, py, "-c", "import "+strings.Join(originalModules, ", ")).CombinedOutput()
		cancel()
		if err == nil {
			return originalKit{dir: abs, python: py}, ""
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		tried = append(tried, py+": "+lines[len(lines)-1])
	}
	return originalKit{}, fmt.Sprintf("no Python 3 with the original's modules (%s) was found (%s)",
		strings.Join(originalModules, " "), strings.Join(tried, "; "))
}

// originalProc is one original peerix process on a simulated host.
type originalProc struct {
	host   *nsHost
	cmd    *exec.Cmd
	log    *lockedBuffer
	exited chan struct{}
	err    error
	// client makes requests from its host: to 127.0.0.1, as its own Nix.
	client *http.Client
	url    string // http://127.0.0.1:12304, as its host sees it
}

// startOriginal runs the original peerix on host h, serving the chroot
// store storeRoot as its machine's store, its narinfos signed with the Nix
// secret key in keyFile. It gets a mount namespace of its own with the
// store bind-mounted over /nix, so that nix-serve and `nix dump-path`
// (which it runs) see that store as the machine's. It listens on port
// 12304, UDP and HTTP, as installed, with its default --timeout (50 ms:
// as a consumer it takes only answers that come that fast). Ready once its /nix-cache-info
// answers; stopped when the test ends.
func startOriginal(t *testing.T, kit originalKit, h *nsHost, storeRoot, keyFile string) *originalProc {
	t.Helper()
	o := &originalProc{
		host:   h,
		log:    &lockedBuffer{},
		exited: make(chan struct{}),
		client: h.httpClient(),
		url:    fmt.Sprintf("http://127.0.0.1:%d", lanPort),
	}
	env, err := nixtest.Env()
	if err != nil {
		t.Fatal(err)
	}
	env = append(env,
		// nixtest's nix.conf enables nix-command already; this is what an
		// installation of the original on Nix 2.8 needs for `nix dump-path`.
		"NIX_CONFIG=extra-experimental-features = nix-command",
		"PYTHONPATH="+kit.dir,
		"PYTHONDONTWRITEBYTECODE=1",
		"NIX_SECRET_KEY_FILE=", // set by --private-key alone
	)
	script := `mount --bind "$1/nix" /nix && shift && exec "$@"`
	o.cmd = h.command(context.Background(), "unshare", "-m", "--propagation", "private",
		"sh", "-c", script, "sh", storeRoot,
		kit.python, "-m", "peerix", "--verbose",
		"--port", strconv.Itoa(lanPort),
		"--private-key", keyFile)
	o.cmd.Env = env
	o.cmd.Dir = kit.dir
	o.cmd.Stdout, o.cmd.Stderr = o.log, o.log
	if err := o.cmd.Start(); err != nil {
		t.Fatalf("starting the original peerix on host %s: %v", h.label, err)
	}
	go func() {
		o.err = o.cmd.Wait()
		close(o.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-o.exited:
			t.Errorf("the original peerix on host %s exited during the test: %v\nlog:\n%s", h.label, o.err, tail(o.log.String(), logTail))
			return
		default:
		}
		_ = o.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-o.exited:
		case <-time.After(stopTimeout):
			_ = o.cmd.Process.Kill()
			<-o.exited
		}
		if t.Failed() {
			t.Logf("the original peerix on host %s, log:\n%s", h.label, tail(o.log.String(), logTail))
		}
	})

	var last string
	_, err = poll(startTimeout, 100*time.Millisecond, func() (bool, error) {
		select {
		case <-o.exited:
			return false, fmt.Errorf("exited before it was ready: %v", o.err)
		default:
		}
		resp, body, err := clientDo(o.client, http.MethodGet, o.url+"/nix-cache-info")
		switch {
		case err != nil:
			last = err.Error()
		case resp.StatusCode != http.StatusOK:
			last = fmt.Sprintf("GET /nix-cache-info: %s: %.200s", resp.Status, body)
		default:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		if errors.Is(err, errPollTimeout) {
			err = fmt.Errorf("not ready within %v (last: %s)", startTimeout, last)
		}
		t.Fatalf("the original peerix on host %s: %v\nlog:\n%s", h.label, err, tail(o.log.String(), logTail))
	}
	return o
}

// alive fails the test if the original has exited.
func (o *originalProc) alive(t *testing.T) {
	t.Helper()
	select {
	case <-o.exited:
		t.Fatalf("the original peerix on host %s has exited: %v\nlog:\n%s", o.host.label, o.err, tail(o.log.String(), logTail))
	default:
	}
}

// logged reports whether a line of the original's log contains all of words.
func (o *originalProc) logged(words ...string) bool {
	return slices.ContainsFunc(strings.Split(o.log.String(), "\n"), func(l string) bool {
		for _, w := range words {
			if !strings.Contains(l, w) {
				return false
			}
		}
		return true
	})
}

// waitNoticed waits (bounded) until daemon d logged that it heard a peer
// speaking only the original format from host h.
func waitNoticed(t *testing.T, d *peerixProc, h *nsHost) time.Duration {
	t.Helper()
	const noticed = "LAN peer speaks only the original format"
	return waitFor(t, d.label+" notices the original peerix on "+h.label, 10*time.Second, func() (bool, string) {
		for _, l := range strings.Split(d.log.String(), "\n") {
			if strings.Contains(l, noticed) && strings.Contains(l, h.addr.String()) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no log line %q naming %s", noticed, h.addr)
	})
}

// TestOriginalPeerixInterop runs the real original peerix (host O) beside
// peerix on a simulated LAN, in both directions, with a summary-speaking
// peerix peer S on the same LAN:
//
//   - O holds the closure of "refs" in its own store and signs it; the real
//     Nix on host P substitutes it through P's peerix (--mode lan),
//     byte-exact, once P's peerix has noticed O by a request O broadcast
//     (O's own Nix asking it for a path, as in real use);
//   - P holds "big" and "deep"; the real Nix on O, whose only substituter is
//     the original on 127.0.0.1:12304, substitutes them from P, byte-exact;
//   - S (peerix, beacons and summaries) holds "single-exec": P's Nix gets it
//     from S beside O, and S answers nothing of the rest.
func TestOriginalPeerixInterop(t *testing.T) {
	kit := requireOriginal(t)
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	lan := newLAN(t, "O", "P", "S")
	O, P, S := lan.host("O"), lan.host("P"), lan.host("S")

	// O's store: the closure of "refs", signed by the original with O's key.
	oKey := keygen(t, "original-peerix-o")
	oRoot := fx.byName["refs"]
	oPaths := closureOf(fx, oRoot)
	oStore := initStore(t, "o-store")
	copyPaths(t, fx.src, oStore, oRoot)
	// P's store: "big" and "deep", served by P's peerix signed with P's key.
	pKey := keygen(t, "peerix-original-p")
	pPaths := []string{fx.byName["big"], fx.byName["deep"]}
	pStore := initStore(t, "p-store")
	copyPaths(t, fx.src, pStore, pPaths...)
	// S speaks summaries and holds "single-exec", signed with S's key.
	sKey := keygen(t, "peerix-original-s")
	sPath := fx.byName["single-exec"]
	sStore := initStore(t, "s-store")
	copyPaths(t, fx.src, sStore, sPath)

	start := time.Now()
	orig := startOriginal(t, kit, O, oStore, oKey.secretFile)
	t.Logf("the original peerix on O ready in %v", time.Since(start).Round(time.Millisecond))
	ds := startPeerix(t, lanDaemon(t, S, sStore, "--filter", "none", "--signing-key-file", sKey.secretFile))
	dp := startPeerix(t, lanDaemon(t, P, pStore, "--filter", "none",
		"--signing-key-file", pKey.secretFile,
		"--trusted-public-key", oKey.public, "--trusted-public-key", sKey.public))

	// The original announces itself as in real use: its Nix asks it for a
	// path (here one nobody has), so it broadcasts a request, and 404s.
	absent := randomNix32(32)
	t0 := time.Now()
	resp, body := clientGet(t, orig.client, http.MethodGet, orig.url+"/"+absent+".narinfo")
	t.Logf("O's Nix asks the original for a path nobody has: %d in %v", resp.StatusCode, time.Since(t0).Round(time.Millisecond))
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET %s/%s.narinfo on O (nobody has it): %s, want 404\n%s", orig.url, absent, resp.Status, body)
	}
	t.Logf("P's peerix noticed the original within %v", waitNoticed(t, dp, O).Round(time.Millisecond))

	t.Run("original serves peerix", func(t *testing.T) {
		start := time.Now()
		r := P.nix(t, "nix-store", "--store", pStore, "-r", oRoot,
			"--option", "substituters", dp.url,
			"--option", "trusted-public-keys", oKey.public,
			"--option", "require-sigs", "true")
		if r.err != nil {
			t.Fatalf("Nix on P could not substitute from the original through P's peerix:\n%v", r)
		}
		t.Logf("nix-store -r on P of the %d-path closure the original holds: %v", len(oPaths), time.Since(start).Round(time.Millisecond))
		for _, p := range oPaths {
			want := fx.facts[p]
			digest, size, err := dumpDigest(t.Context(), pStore, p)
			if err != nil {
				t.Errorf("%s did not arrive in P's store: %v", p, err)
				continue
			}
			if digest != want.narDigest || size != want.narSize {
				t.Errorf("%s in P's store: %d bytes sha256 %s; the original has %d bytes sha256 %s",
					p, size, digest, want.narSize, want.narDigest)
			}
			if refs := references(t, pStore, p); !slices.Equal(refs, want.refs) {
				t.Errorf("%s in P's store references %q, want %q", p, refs, want.refs)
			}
			// The original answered P's request and served the NAR itself.
			if !orig.logged("Got request from "+P.addr.String(), hashPart(p)) {
				t.Errorf("the original never logged a request from P for %s", p)
			}
			if !orig.logged("Serving " + p) {
				t.Errorf("the original never logged serving %s", p)
			}
		}
	})

	t.Run("summary peer serves peerix beside the original", func(t *testing.T) {
		r := P.nix(t, "nix-store", "--store", pStore, "-r", sPath,
			"--option", "substituters", dp.url,
			"--option", "trusted-public-keys", sKey.public,
			"--option", "require-sigs", "true")
		if r.err != nil {
			t.Fatalf("Nix on P could not substitute %s from the summary peer S:\n%v", sPath, r)
		}
		if digest, _, err := dumpDigest(t.Context(), pStore, sPath); err != nil || digest != fx.facts[sPath].narDigest {
			t.Errorf("%s in P's store: sha256 %s, err %v; want %s", sPath, digest, err, fx.facts[sPath].narDigest)
		}
	})

	t.Run("peerix serves original", func(t *testing.T) {
		start := time.Now()
		args := []string{"--store", oStore, "-r"}
		args = append(args, pPaths...)
		r := O.nix(t, "nix-store", append(args,
			"--option", "substituters", orig.url,
			"--option", "trusted-public-keys", pKey.public,
			"--option", "require-sigs", "true")...)
		if r.err != nil {
			t.Fatalf("Nix on O could not substitute from P through the original:\n%v", r)
		}
		t.Logf("nix-store -r on O of %d paths P holds, through the original: %v", len(pPaths), time.Since(start).Round(time.Millisecond))
		for _, p := range pPaths {
			want := fx.facts[p]
			digest, size, err := dumpDigest(t.Context(), oStore, p)
			if err != nil {
				t.Errorf("%s did not arrive in O's store: %v", p, err)
				continue
			}
			if digest != want.narDigest || size != want.narSize {
				t.Errorf("%s in O's store: %d bytes sha256 %s; P has %d bytes sha256 %s",
					p, size, digest, want.narSize, want.narDigest)
			}
			// The original found it by broadcast, answered by P (not S).
			if !orig.logged(P.addr.String()+":", "responded for "+hashPart(p)) {
				t.Errorf("the original never logged P's answer for %s", p)
			}
			if orig.logged(S.addr.String()+":", "responded for "+hashPart(p)) {
				t.Errorf("S answered the original's request for %s, which it does not hold", p)
			}
		}
	})

	// Nothing on the LAN (S's beacons among it) made the original log an
	// error (asyncio logs an exception in a datagram handler as one). Its
	// log also holds nix-serve's stderr: the stand-in's tracebacks when the
	// original drops a connection are not the original's.
	for _, l := range strings.Split(orig.log.String(), "\n") {
		if strings.HasPrefix(l, "ERROR:") || strings.HasPrefix(l, "CRITICAL:") || strings.Contains(l, "[ERROR]") {
			t.Errorf("the original peerix logged an error: %s", l)
		}
	}
	orig.alive(t)
	dp.alive(t)
	ds.alive(t)
}
