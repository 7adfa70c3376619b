package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// The trust layer end to end: a simulated LAN with a stand-in for the
// upstream cache (nginx serving a static binary cache signed by its own
// key), a serving peer A whose filter asks that upstream, and a consumer B
// whose Nix trusts only the upstream's key and uses only B's peerix.

// upstreamPort is where the stand-in upstream's nginx listens.
const upstreamPort = 8080

// trustFixtures are the store paths TestTrustLAN builds, by role.
type trustFixtures struct {
	public, private, denyme, secret, tampered string
}

// trustFixturePaths returns the trust fixtures of nixtest's fixtures.nix:
// five small fresh paths in the host's store.
func trustFixturePaths(t *testing.T) trustFixtures {
	t.Helper()
	fx := nixtest.Shared(t)
	return trustFixtures{public: fx.Path("trust-public"), private: fx.Path("trust-private"),
		denyme: fx.Path("trust-denyme"), secret: fx.Path("trust-secret"), tampered: fx.Path("trust-tampered")}
}

// startUpstream runs nginx on h serving dir, logging every request to
// <tmp>/access.log, and waits (bounded) until it serves nix-cache-info.
// It returns the base URL and the access log's path.
func startUpstream(t testing.TB, h *nsHost, dir string) (string, string) {
	t.Helper()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
			if _, err := os.Stat(p); err == nil {
				nginx = p
				break
			}
		}
	}
	if nginx == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but nginx (the upstream stand-in) is not installed")
		}
		t.Skip("nginx (the upstream stand-in) is not installed")
	}
	tmp := t.TempDir()
	accessLog := filepath.Join(tmp, "access.log")
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
  access_log %[2]s;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
  default_type application/octet-stream;
  server {
    listen %[3]s:%[4]d;
    root %[5]s;
  }
}
`, tmp, accessLog, h.addr, upstreamPort, dir)
	confFile := filepath.Join(tmp, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cmd := h.command(context.Background(), nginx, "-p", tmp, "-e", filepath.Join(tmp, "error.log"), "-c", confFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx on host %s: %v", h.label, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-exited:
			case <-time.After(stopTimeout):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			elog, _ := os.ReadFile(filepath.Join(tmp, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", &out, elog)
		}
	})

	base := fmt.Sprintf("http://%s:%d", h.addr, upstreamPort)
	c := h.httpClient()
	deadline := time.Now().Add(startTimeout)
	for {
		resp, _, err := clientDo(c, http.MethodGet, base+"/nix-cache-info")
		if err == nil && resp.StatusCode == http.StatusOK {
			return base, accessLog
		}
		select {
		case <-exited:
			elog, _ := os.ReadFile(filepath.Join(tmp, "error.log"))
			t.Fatalf("nginx on host %s exited: %v\n%s\n%s", h.label, waitErr, &out, elog)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx on host %s not serving within %v (last: %v %v)", h.label, startTimeout, statusOf(resp), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// narRequests returns the NAR requests (URL path containing /nar/) in an
// nginx access log.
func narRequests(t *testing.T, accessLog string) []string {
	t.Helper()
	b, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatalf("reading the upstream's access log: %v", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "/nar/") {
			out = append(out, l)
		}
	}
	return out
}

// tamper rewrites the file at rel in path's directory of a chroot store with
// different bytes of the same length.
func tamper(t *testing.T, storeRoot, path, rel string) {
	t.Helper()
	dir := filepath.Join(storeRoot, path)
	file := filepath.Join(dir, rel)
	old, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := bytes.ToUpper(old)
	if bytes.Equal(bad, old) || len(bad) != len(old) {
		t.Fatalf("cannot tamper with %s: %q", file, old)
	}
	if err := os.WriteFile(file, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(file, 0o444)
	_ = os.Chmod(dir, 0o555)
}

// TestTrustLAN: U is the upstream (nginx, a static binary cache signed by
// the upstream's key), A a serving peer whose filter asks U, B a consumer
// whose Nix trusts only U's key and substitutes only through B's peerix.
// A public path flows from A without any NAR download from U; private and
// deny-listed paths never leave A; a path modified on A's disk never
// reaches B's Nix as a complete NAR and B's store stays clean.
func TestTrustLAN(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	start := time.Now()
	fx := trustFixturePaths(t)

	// The upstream's key and its static cache: public, both deny-listed
	// paths (so only the patterns keep them home) and the tampered one.
	keyDir := t.TempDir()
	upSec, upPub := filepath.Join(keyDir, "upstream.sec"), filepath.Join(keyDir, "upstream.pub")
	mustNix(t, "nix-store", "--generate-binary-cache-key", "upstream-test", upSec, upPub)
	pubKeyBytes, err := os.ReadFile(upPub)
	if err != nil {
		t.Fatal(err)
	}
	upKey := strings.TrimSpace(string(pubKeyBytes))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	// otherBuild is public, but A's build of it is not the upstream's (a
	// build that is not reproducible): another NarHash.
	otherBuild, err := nixtest.AddFile(t.Context(), "auto", "peerix-trust-other-build-"+randomNix32(8), []byte("built twice"))
	if err != nil {
		t.Fatal(err)
	}
	if r := nix3(t, "copy", "--to", "file://"+cacheDir+"?compression=none&secret-key="+upSec,
		fx.public, fx.denyme, fx.secret, fx.tampered, otherBuild); r.err != nil {
		t.Fatalf("filling the upstream cache:\n%v", r)
	}

	// A's store holds all six; B's is empty.
	aStore := initStore(t, "a-store")
	all := []string{fx.public, fx.private, fx.denyme, fx.secret, fx.tampered, otherBuild}
	if r := nix3(t, append([]string{"copy", "--no-check-sigs", "--to", aStore}, all...)...); r.err != nil {
		t.Fatalf("filling A's store:\n%v", r)
	}
	narHash := map[string]string{}
	for _, p := range all {
		narHash[p] = strings.TrimSpace(string(mustNix(t, "nix-store", "--store", aStore, "-q", "--hash", p)))
	}
	wantDigest, wantSize, err := dumpDigest(t.Context(), aStore, fx.public)
	if err != nil {
		t.Fatal(err)
	}
	tamper(t, aStore, fx.tampered, "data")
	lieInDB(t, aStore, otherBuild)
	narHash[otherBuild] = nixtest.MustInfo(t, aStore, otherBuild).NarHash
	bStore := initStore(t, "b-store")
	t.Logf("fixtures, upstream cache and stores ready after %v", time.Since(start).Round(time.Millisecond))

	lan := newLAN(t, "U", "A", "B")
	U, A, B := lan.host("U"), lan.host("A"), lan.host("B")
	upstream, accessLog := startUpstream(t, U, cacheDir)
	da := startPeerix(t, lanDaemon(t, A, aStore,
		"--filter", "upstream", "--upstream", upstream,
		"--trusted-public-key", upKey, "--filter-pattern", "*denyme*"))
	db := startPeerix(t, lanDaemon(t, B, bStore,
		"--upstream", upstream, "--trusted-public-key", upKey))
	bNix := func(t *testing.T, path string) nixResult {
		t.Helper()
		return B.nix(t, "nix-store", "--store", bStore, "-r", path,
			"--option", "substituters", db.url,
			"--option", "trusted-public-keys", upKey,
			"--option", "require-sigs", "true",
			"--option", "download-attempts", "1")
	}
	bc := B.httpClient()
	probe := B.listenUDP(t, 0)
	bcast := netip.AddrPortFrom(lan.broadcast, lanPort)

	t.Run("public flows from the peer", func(t *testing.T) {
		h := hashPart(fx.public)
		// A shares it: its /local narinfo, its LAN answer.
		resp, body := clientGet(t, bc, http.MethodGet, da.hostURL+"/local/"+h+".narinfo")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s/local/%s.narinfo from B: %s\n%s", da.hostURL, h, resp.Status, body)
		}
		if ni := parseNarInfo(t, body); ni["StorePath"] != fx.public || ni["NarHash"] != narHash[fx.public] {
			t.Errorf("A's narinfo for the public path:\n%s", body)
		}
		checkAnswers(t, "request from B for the public path", askLAN(t, probe, bcast, h, 600*time.Millisecond), h, A)

		t0 := time.Now()
		if r := bNix(t, fx.public); r.err != nil {
			t.Fatalf("Nix on B could not substitute the public path through B's peerix:\n%v", r)
		}
		t.Logf("nix-store -r of the public path on B: %v", time.Since(t0).Round(time.Millisecond))
		digest, size, err := dumpDigest(t.Context(), bStore, fx.public)
		if err != nil || digest != wantDigest || size != wantSize {
			t.Errorf("public path in B's store: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", size, digest, err, wantSize, wantDigest)
		}
		if nars := narRequests(t, accessLog); len(nars) != 0 {
			t.Errorf("NARs were downloaded from the upstream:\n%s", strings.Join(nars, "\n"))
		}
	})

	for _, c := range []struct{ what, path string }{
		{"private", fx.private},
		{"deny-listed by --filter-pattern", fx.denyme},
		{"deny-listed by default", fx.secret},
	} {
		t.Run(c.what+" never leaves A", func(t *testing.T) {
			h := hashPart(c.path)
			nh := strings.TrimPrefix(narHash[c.path], "sha256:")
			for _, u := range []string{
				da.hostURL + "/local/" + h + ".narinfo",
				da.hostURL + "/local/nar/" + h + "-" + nh + ".nar",
				da.hostURL + "/nar/" + h + "-" + nh + ".nar",
				da.hostURL + "/" + h + ".narinfo",
			} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					resp, body := clientGet(t, bc, method, u)
					if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusForbidden {
						t.Errorf("%s %s from B: %s, want 404 (or 403)\n%.300q", method, u, resp.Status, body)
					}
					if resp.StatusCode == http.StatusOK || bytes.Contains(body, []byte("nix-archive-1")) || bytes.Contains(body, []byte("StorePath:")) {
						t.Errorf("%s %s from B leaks data: %.300q", method, u, body)
					}
				}
			}
			// A's /local/ and /nar/ are open to peers: there the path must
			// look exactly like one A does not hold (status, headers, body).
			absent, absentNH := randomNix32(32), randomNix32(51)
			absentNH = "1" + absentNH
			for _, u := range [][2]string{
				{"/local/" + h + ".narinfo", "/local/" + absent + ".narinfo"},
				{"/local/nar/" + h + "-" + nh + ".nar", "/local/nar/" + absent + "-" + absentNH + ".nar"},
				{"/nar/" + h + "-" + nh + ".nar", "/nar/" + absent + "-" + absentNH + ".nar"},
			} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					r1, b1 := clientGet(t, bc, method, da.hostURL+u[0])
					r2, b2 := clientGet(t, bc, method, da.hostURL+u[1])
					h1, h2 := r1.Header.Clone(), r2.Header.Clone()
					h1.Del("Date")
					h2.Del("Date")
					if r1.StatusCode != http.StatusNotFound || r1.StatusCode != r2.StatusCode || !bytes.Equal(b1, b2) || fmt.Sprint(h1) != fmt.Sprint(h2) {
						t.Errorf("%s %s from B differs from an absent path's answer:\n%s %v %q\n%s %v %q", method, u[0], r1.Status, h1, b1, r2.Status, h2, b2)
					}
				}
			}
			if answers := askLAN(t, probe, bcast, h, 600*time.Millisecond); len(answers) != 0 {
				t.Errorf("LAN request for it was answered: %v", answers)
			}
			resp, body := clientGet(t, db.client, http.MethodGet, db.url+"/"+h+".narinfo")
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /%s.narinfo from B's peerix: %s, want 404\n%s", h, resp.Status, body)
			}
			if r := bNix(t, c.path); r.err == nil {
				t.Errorf("Nix on B substituted %s:\n%v", c.path, r)
			}
			if isValid(t, bStore, c.path) {
				t.Errorf("%s became valid in B's store", c.path)
			}
		})
	}

	t.Run("tampered never reaches B", func(t *testing.T) {
		h := hashPart(fx.tampered)
		// Through B's peerix by hand: never the whole wrong NAR.
		resp, body := clientGet(t, db.client, http.MethodGet, db.url+"/"+h+".narinfo")
		t.Logf("GET /%s.narinfo (tampered) from B's peerix: %s", h, resp.Status)
		if resp.StatusCode == http.StatusOK {
			ni := parseNarInfo(t, body)
			status, _, n, err := clientDigest(db.client, db.url+"/"+ni["URL"])
			t.Logf("GET /%s from B's peerix: status %d, %d bytes, err %v", ni["URL"], status, n, err)
			// The NAR is verified before its first byte leaves: no holder
			// has a good one, so it is a miss (Nix goes to the next
			// substituter), never a byte of the wrong NAR.
			if status != http.StatusNotFound {
				t.Errorf("B's peerix answered the tampered path's NAR with status %d (%d bytes); want 404", status, n)
			}
		}
		r := bNix(t, fx.tampered)
		if r.err == nil {
			t.Errorf("Nix on B substituted the tampered path %s:\n%v", fx.tampered, r)
		}
		if isValid(t, bStore, fx.tampered) {
			t.Errorf("the tampered path %s became valid in B's store", fx.tampered)
		}
		if _, err := os.Lstat(filepath.Join(bStore, fx.tampered)); err == nil {
			t.Errorf("the tampered path %s exists on B's disk", fx.tampered)
		}
		// What stopped it is B's verifier (not A giving up on its own).
		const aborted = "peer lied; it is shunned"
		for deadline := time.Now().Add(2 * time.Second); !strings.Contains(db.log.String(), aborted); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("B's peerix never logged %q", aborted)
				break
			}
		}
	})

	t.Run("another build of a public path stays home", func(t *testing.T) {
		// A shares only the upstream's own build: its narinfo would
		// contradict the upstream's, and B would take A for a liar.
		h := hashPart(otherBuild)
		if resp, body := clientGet(t, bc, http.MethodGet, da.hostURL+"/local/"+h+".narinfo"); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s/local/%s.narinfo from B: %s, want 404\n%s", da.hostURL, h, resp.Status, body)
		}
		if answers := askLAN(t, probe, bcast, h, 600*time.Millisecond); len(answers) != 0 {
			t.Errorf("LAN request for it was answered: %v", answers)
		}
		if resp, body := clientGet(t, db.client, http.MethodGet, db.url+"/"+h+".narinfo"); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /%s.narinfo from B's peerix: %s, want 404 (from the upstream, not from A)\n%s", h, resp.Status, body)
		}
		for _, l := range db.logLines(100, "peer lied") {
			if strings.Contains(l, h) {
				t.Errorf("B took A for a liar about its own build: %s", l)
			}
		}
	})

	if nars := narRequests(t, accessLog); len(nars) != 0 {
		t.Errorf("NARs were downloaded from the upstream:\n%s", strings.Join(nars, "\n"))
	}
	if b, err := os.ReadFile(accessLog); err == nil {
		lines := slices.DeleteFunc(strings.Split(strings.TrimSpace(string(b)), "\n"), func(s string) bool { return s == "" })
		t.Logf("upstream got %d requests, none for a NAR", len(lines))
	}
	da.alive(t)
	db.alive(t)
	t.Logf("TestTrustLAN took %v", time.Since(start).Round(time.Millisecond))
}
