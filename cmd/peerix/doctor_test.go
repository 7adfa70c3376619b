package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/ops"
	"github.com/peerix/peerix/internal/signing"
)

const testKey = "peer-a-1:Zm9vYmFyYmF6Zm9vYmFyYmF6Zm9vYmFyYmF6Zm9vYmFyYmE="

// testDoctorEnv answers from fixed Nix settings; it must not reach the
// machine's own store or state dir (the daemon's checks cover them, or the
// test sets them).
func testDoctorEnv(t *testing.T, conf string) doctorEnv {
	env := defaultDoctorEnv()
	env.nixConfig = func(context.Context) (*nixConf, error) {
		return &nixConf{source: "nix show-config", settings: parseNixConf([]byte(conf), nil)}, nil
	}
	env.openStore = func(context.Context, string) error {
		t.Error("doctor opened the store itself although the daemon reported on it")
		return nil
	}
	env.writable = func(string) error {
		t.Error("doctor checked the state dir itself although the daemon reported on it")
		return nil
	}
	// No config file, no $NIX_SECRET_KEY_FILE; the state dir as serve
	// makes it.
	env.serveConfig = func() (*config.Serve, error) { return &config.Serve{StateDir: config.DefaultStateDir}, nil }
	env.lstat, env.readDir = fakeStateDir(map[string]os.FileMode{
		config.DefaultStateDir:                     fs.ModeDir | 0o700,
		config.DefaultStateDir + "/identity.key":   0o600,
		config.DefaultStateDir + "/stats.json":     0o600,
		config.DefaultStateDir + "/filter-cache":   0o600,
		config.DefaultStateDir + "/spool":          fs.ModeDir | 0o700,
		config.DefaultStateDir + "/announced.json": 0o600,
	})
	return env
}

// fakeStateDir answers lstat and readDir from a table of paths and modes.
func fakeStateDir(files map[string]os.FileMode) (func(string) (fs.FileInfo, error), func(string) ([]fs.DirEntry, error)) {
	lstat := func(name string) (fs.FileInfo, error) {
		m, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "lstat", Path: name, Err: fs.ErrNotExist}
		}
		return fakeInfo{name: filepath.Base(name), mode: m}, nil
	}
	readDir := func(dir string) ([]fs.DirEntry, error) {
		var out []fs.DirEntry
		for p, m := range files {
			if filepath.Dir(p) == dir {
				out = append(out, fs.FileInfoToDirEntry(fakeInfo{name: filepath.Base(p), mode: m}))
			}
		}
		slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
		return out, nil
	}
	return lstat, readDir
}

type fakeInfo struct {
	name string
	mode fs.FileMode
}

func (i fakeInfo) Name() string       { return i.name }
func (i fakeInfo) Size() int64        { return 0 }
func (i fakeInfo) Mode() fs.FileMode  { return i.mode }
func (i fakeInfo) ModTime() time.Time { return time.Time{} }
func (i fakeInfo) IsDir() bool        { return i.mode.IsDir() }
func (i fakeInfo) Sys() any           { return nil }

// TestDoctorKeys: key files and the state dir on disk, as serve would
// find them.
func TestDoctorKeys(t *testing.T) {
	keyDir := t.TempDir()
	secFile, _, err := signing.WriteKeyPair("doctor-test-1", keyDir)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	os.Chmod(state, 0o700)
	if err := os.WriteFile(filepath.Join(state, "identity.key"), []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := sampleStatus()
	st.StateDir = state
	run := func(t *testing.T) string {
		t.Helper()
		env := defaultDoctorEnv()
		env.serveConfig = func() (*config.Serve, error) {
			return &config.Serve{StateDir: state, SigningKeyFile: secFile}, nil
		}
		var out bytes.Buffer
		checkKeys(env, &st, &doctorReport{w: &out})
		return strings.ReplaceAll(strings.ReplaceAll(out.String(), state, "STATE"), secFile, "KEY")
	}
	tests := []struct {
		name  string
		setup func(t *testing.T)
		want  []string
	}{
		{"all good", func(*testing.T) {}, []string{
			"OK    signing key: KEY (doctor-test-1) is readable by its owner only",
			"OK    identity key: STATE/identity.key is readable by its owner only",
		}},
		{"signing key readable by others", func(*testing.T) { os.Chmod(secFile, 0o644) }, []string{
			"FAIL  signing key: secret key file KEY: mode 0644: group or others may read it; it must be 0600 (chmod 600 KEY)",
			"      fix: chmod 600 KEY (owned by the daemon's user); peerix serve refuses it until then",
		}},
		{"signing key readable by the group", func(*testing.T) { os.Chmod(secFile, 0o640) }, []string{
			"FAIL  signing key: secret key file KEY: mode 0640: group or others may read it; it must be 0600 (chmod 600 KEY)",
		}},
		{"state dir and files wide open", func(t *testing.T) {
			os.Chmod(state, 0o755)
			os.Chmod(filepath.Join(state, "identity.key"), 0o644)
			os.WriteFile(filepath.Join(state, "announced.json"), nil, 0o600)
			os.Chmod(filepath.Join(state, "announced.json"), 0o644)
		}, []string{
			"FAIL  state dir: STATE is mode 0755: group or others may look into it",
			"FAIL  identity key: STATE/identity.key is mode 0644: group or others may read it, and serve refuses it",
			"      fix: chmod 600 STATE/identity.key",
			"FAIL  state dir: group or others may read announced.json (0644), identity.key (0644)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Chmod(secFile, 0o600)
			tt.setup(t)
			out := run(t)
			for _, w := range tt.want {
				if !strings.Contains(out, w+"\n") {
					t.Errorf("doctor's key checks lack %q:\n%s", w, out)
				}
			}
		})
	}
	t.Run("missing key file", func(t *testing.T) {
		os.Chmod(state, 0o700)
		env := defaultDoctorEnv()
		env.serveConfig = func() (*config.Serve, error) {
			return &config.Serve{StateDir: state, SigningKeyFile: filepath.Join(keyDir, "nope.sec")}, nil
		}
		var out bytes.Buffer
		r := &doctorReport{w: &out}
		checkKeys(env, &st, r)
		if r.fails == 0 || !strings.Contains(out.String(), "FAIL  signing key: "+filepath.Join(keyDir, "nope.sec")) {
			t.Errorf("a missing key file:\n%s", out.String())
		}
	})
}

// fakeRemote is a tracker or upstream answering path with code.
func fakeRemote(t *testing.T, path string, code int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// runDoctorTest runs doctor against daemon and returns its output with the
// test servers' URLs replaced by names.
func runDoctorTest(t *testing.T, env doctorEnv, daemonURL string, names map[string]string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := runDoctor(context.Background(), []string{"--url", daemonURL}, &out, env)
	s := out.String()
	for u, name := range names {
		s = strings.ReplaceAll(s, u, name)
	}
	return s, err
}

func TestDoctorAllGood(t *testing.T) {
	tracker := fakeRemote(t, "/v1/info", 200)
	upstream := fakeRemote(t, "/nix-cache-info", 200)
	st := sampleStatus()
	st.Tracker, st.Upstream = tracker.URL, upstream.URL
	st.TrustedPublicKeys = []string{testKey}
	daemon := fakeDaemon(t, st, nil, ops.Health{Status: ops.Healthy, Checks: map[string]ops.Check{
		"store": {OK: true}, "state_dir": {OK: true}, "tracker": {OK: true}, "upstream": {OK: true}, "peers": {OK: true},
	}})
	env := testDoctorEnv(t, `
substituters = https://cache.nixos.org/
extra-substituters = http://localhost:`+strings.Split(daemon.URL, ":")[2]+`/
trusted-public-keys = `+cacheNixosOrgKey+` `+testKey+`
`)
	out, err := runDoctorTest(t, env, daemon.URL, map[string]string{daemon.URL: "http://DAEMON", tracker.URL: "http://TRACKER", upstream.URL: "http://UPSTREAM"})
	if err != nil {
		t.Errorf("doctor failed: %v\n%s", err, out)
	}
	golden(t, "doctor_ok.golden", out)
}

func TestDoctorProblems(t *testing.T) {
	tracker := fakeRemote(t, "/v1/info", 200)
	upstream := fakeRemote(t, "/nix-cache-info", 500)
	st := sampleStatus()
	st.Tracker, st.Upstream = tracker.URL, upstream.URL
	st.TrustedPublicKeys = []string{testKey}
	daemon := fakeDaemon(t, st, nil, ops.Health{Status: ops.Degraded, Checks: map[string]ops.Check{
		"store":     {Detail: "nix database /nix/var/nix/db/db.sqlite: unable to open database file"},
		"state_dir": {OK: true},
		"tracker":   {Detail: "POST /v1/announce: 401 Unauthorized"},
		"upstream":  {Detail: "HEAD /nix-cache-info: 500"},
		"peers":     {Detail: "libp2p host not listening"},
		"lan":       {OK: true, Detail: ops.NotApplicable},
	}})
	env := testDoctorEnv(t, `
substituters = https://cache.nixos.org/
trusted-public-keys = `+cacheNixosOrgKey+`
`)
	out, err := runDoctorTest(t, env, daemon.URL, map[string]string{daemon.URL: "http://DAEMON", tracker.URL: "http://TRACKER", upstream.URL: "http://UPSTREAM"})
	var ec interface{ ExitCode() int }
	if !errors.As(err, &ec) || ec.ExitCode() != 1 {
		t.Errorf("doctor with problems returned %v; want an error with exit code 1", err)
	}
	if err.Error() != "doctor: 6 problems found" {
		t.Errorf("error %q", err)
	}
	golden(t, "doctor_fail.golden", out)
}

func TestDoctorDaemonDown(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	down := srv.URL
	srv.Close()
	env := testDoctorEnv(t, "substituters = https://cache.nixos.org/\ntrusted-public-keys =\n")
	var storeRoot, stateDir string
	env.openStore = func(_ context.Context, root string) error {
		storeRoot = root
		return errors.New("nix database /nix/var/nix/db/db.sqlite: permission denied")
	}
	env.writable = func(dir string) error { stateDir = dir; return nil }
	out, err := runDoctorTest(t, env, down, map[string]string{down: "http://DAEMON"})
	if err == nil || err.Error() != "doctor: 4 problems found" {
		t.Errorf("err = %v", err)
	}
	if storeRoot != "/" || stateDir != "/var/lib/peerix" {
		t.Errorf("with the daemon down, doctor checked store %q and state dir %q; want the defaults", storeRoot, stateDir)
	}
	golden(t, "doctor_down.golden", out)
}

func TestParseNixConf(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "extra.conf"), []byte("extra-substituters = http://c\ntrusted-public-keys = k2\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "nix.conf"), []byte(`
# comment
substituters = http://a   http://b # trailing comment
extra-trusted-public-keys = k3
trusted-public-keys = k1
include extra.conf
!include missing.conf
garbage line
`), 0o644)
	got, err := readNixConfFile(filepath.Join(dir, "nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	c := nixConf{settings: got}
	if s := strings.Join(c.list("substituters"), " "); s != "http://a http://b http://c" {
		t.Errorf("substituters %q", s)
	}
	// In order, as Nix applies them: extra- appended to the default, then
	// replaced, then replaced again by the included file.
	if s := strings.Join(c.list("trusted-public-keys"), " "); s != "k2" {
		t.Errorf("trusted-public-keys %q", s)
	}
	os.WriteFile(filepath.Join(dir, "only-extra.conf"), []byte("extra-substituters = http://127.0.0.1:12304\n"), 0o644)
	got, err = readNixConfFile(filepath.Join(dir, "only-extra.conf"))
	if err != nil {
		t.Fatal(err)
	}
	c = nixConf{settings: got}
	if s := strings.Join(c.list("substituters"), " "); s != "https://cache.nixos.org/ http://127.0.0.1:12304" {
		t.Errorf("extra-substituters alone: substituters %q", s)
	}
	if s := strings.Join(c.list("trusted-public-keys"), " "); s != "" {
		t.Errorf("unset trusted-public-keys: %q (defaults apply only through extra-)", s)
	}
	os.WriteFile(filepath.Join(dir, "bad.conf"), []byte("include nowhere.conf\n"), 0o644)
	if _, err := readNixConfFile(filepath.Join(dir, "bad.conf")); err == nil {
		t.Error("include of a missing file: no error")
	}
}

func TestSameURL(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"http://127.0.0.1:12304", "http://127.0.0.1:12304/", true},
		{"http://localhost:12304", "http://127.0.0.1:12304", true},
		{"http://127.0.0.1:12304", "http://127.0.0.1:12305", false},
		{"https://127.0.0.1:12304", "http://127.0.0.1:12304", false},
		{"http://127.0.0.1:12304/local", "http://127.0.0.1:12304", false},
	} {
		if got := sameURL(c.a, c.b); got != c.want {
			t.Errorf("sameURL(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// TestReadNixConfig runs against the machine's Nix when there is one.
func TestReadNixConfig(t *testing.T) {
	if _, err := os.Stat("/etc/nix/nix.conf"); err != nil {
		if _, err := os.Stat("/nix/var/nix"); err != nil {
			t.Skip("no Nix here")
		}
	}
	conf, err := readNixConfig(context.Background())
	if err != nil {
		t.Skipf("Nix's settings unreadable here: %v", err)
	}
	if _, ok := conf.settings["substituters"]; !ok {
		t.Errorf("%s: no substituters setting in %v", conf.source, conf.settings)
	}
}
