package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/ops"
	"github.com/peerix/peerix/internal/p2p"
	"github.com/peerix/peerix/internal/signing"
)

// cacheNixosOrgKey is the public key of cache.nixos.org; Nix trusts it by
// default, and peers hand out paths signed by it.
const cacheNixosOrgKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

// doctorEnv is what `peerix doctor` looks at; tests replace parts.
type doctorEnv struct {
	daemon    *http.Client                                // the local daemon
	remote    *http.Client                                // tracker and upstream
	nixConfig func(ctx context.Context) (*nixConf, error) // Nix's settings
	openStore func(ctx context.Context, root string) error
	writable  func(dir string) error
	// serveConfig is `peerix serve`'s configuration as the config file and
	// the environment give it here: where the signing key is.
	serveConfig func() (*config.Serve, error)
	// lstat and readDir look at key files and the state dir.
	lstat   func(name string) (fs.FileInfo, error)
	readDir func(name string) ([]fs.DirEntry, error)
}

func defaultDoctorEnv() doctorEnv {
	return doctorEnv{
		daemon:    daemonClient(),
		remote:    &http.Client{Timeout: 10 * time.Second},
		nixConfig: readNixConfig,
		openStore: func(ctx context.Context, root string) error {
			l, err := nixstore.Open(root)
			if err != nil {
				return err
			}
			defer l.Close()
			return l.Ping(ctx)
		},
		writable: ops.CheckWritable,
		serveConfig: func() (*config.Serve, error) {
			return config.ParseServe(nil, os.Getenv)
		},
		lstat:   os.Lstat,
		readDir: os.ReadDir,
	}
}

// doctorFailed is doctor's error when checks failed: main exits with
// ExitCode (1), after printing the message.
type doctorFailed struct{ n int }

func (e doctorFailed) Error() string {
	if e.n == 1 {
		return "doctor: 1 problem found"
	}
	return fmt.Sprintf("doctor: %d problems found", e.n)
}

// ExitCode is the process's exit status for this error.
func (doctorFailed) ExitCode() int { return 1 }

// doctor implements `peerix doctor [--url URL]`: it checks the setup and
// prints an OK, FAIL or SKIP line per check, and for each FAIL what to do.
// Any FAIL makes it return a doctorFailed (exit 1).
func doctor(args []string, stdout io.Writer) error {
	return runDoctor(context.Background(), args, stdout, defaultDoctorEnv())
}

// doctorReport prints the lines.
type doctorReport struct {
	w     io.Writer
	fails int
}

func (r *doctorReport) ok(format string, a ...any) {
	fmt.Fprintf(r.w, "OK    %s\n", fmt.Sprintf(format, a...))
}

func (r *doctorReport) skip(format string, a ...any) {
	fmt.Fprintf(r.w, "SKIP  %s\n", fmt.Sprintf(format, a...))
}

// fail prints a FAIL line and what to do about it.
func (r *doctorReport) fail(fix string, format string, a ...any) {
	r.fails++
	fmt.Fprintf(r.w, "FAIL  %s\n", fmt.Sprintf(format, a...))
	if fix != "" {
		fmt.Fprintf(r.w, "      fix: %s\n", fix)
	}
}

func doctorFlags() (*flag.FlagSet, *string) {
	fs := newFlagSet("doctor")
	return fs, fs.String("url", defaultDaemonURL, "the daemon's `URL`, as Nix's substituters name it")
}

const doctorAbout = `Checks the setup: the daemon and its health, Nix's substituters and
trusted-public-keys, the store database, the state dir, the tracker and the
upstream. Prints OK, FAIL or SKIP per check, and for each FAIL what to do;
exits 1 when something failed.`

func runDoctor(ctx context.Context, args []string, stdout io.Writer, env doctorEnv) error {
	fs, base := doctorFlags()
	if helped, err := parseFlags(fs, args, stdout, "doctor [--url URL]", doctorAbout); helped || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("doctor: unexpected argument %q (usage: peerix doctor [--url URL])", fs.Arg(0))
	}
	u, err := daemonURL(*base)
	if err != nil {
		return fmt.Errorf("doctor: --url: %v", err)
	}
	r := &doctorReport{w: stdout}

	// The daemon: its status says where its store, state, tracker and
	// upstream are; its health says how it sees them.
	var st *ops.Status
	var health *ops.Health
	{
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var s ops.Status
		err := getJSON(cctx, env.daemon, u+"/api/status", &s)
		cancel()
		if err != nil {
			r.fail("start the daemon (NixOS: services.peerix.enable = true; systemctl status peerix), or pass --url", "daemon: %v", err)
		} else {
			st = &s
			peer := ""
			if s.PeerID != "" {
				peer = ", peer " + s.PeerID
			}
			r.ok("daemon: peerix %s in %s mode answers at %s%s", s.Version, s.Mode, u, peer)
			health = fetchHealth(ctx, env.daemon, u, r)
		}
	}

	checkNixConfig(ctx, env, u, st, r)
	checkStore(ctx, env, st, health, r)
	checkStateDir(env, st, health, r)
	checkKeys(env, st, r)
	checkRemote(ctx, env, st, health, r)

	if r.fails > 0 {
		return doctorFailed{r.fails}
	}
	return nil
}

// fetchHealth reads /health (200 or 503 both carry the checks) and reports
// the overall status.
func fetchHealth(ctx context.Context, client *http.Client, u string, r *doctorReport) *ops.Health {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u+"/health", nil)
	resp, err := client.Do(req)
	if err != nil {
		r.fail("see the daemon's log (journalctl -u peerix)", "health: %s", netReason(err))
		return nil
	}
	defer resp.Body.Close()
	var h ops.Health
	if err := decodeJSON(resp.Body, &h); err != nil || h.Status == "" {
		r.fail("see the daemon's log (journalctl -u peerix)", "health: %s answered %s without a health report", u+"/health", resp.Status)
		return nil
	}
	if h.Status == ops.Healthy {
		r.ok("health: %s", h.Status)
		return &h
	}
	var bad, details []string
	for _, name := range sortedKeys(h.Checks) {
		c := h.Checks[name]
		if c.OK {
			continue
		}
		bad = append(bad, name)
		switch name {
		case "store", "state_dir", "tracker", "upstream":
			// Each gets its own line below.
		default:
			details = append(details, name+": "+c.Detail)
		}
	}
	r.fail("", "health: %s (failing: %s)", h.Status, strings.Join(bad, ", "))
	for _, d := range details {
		fmt.Fprintf(r.w, "      %s\n", d)
	}
	more := ""
	if len(details) < len(bad) {
		more = " and the lines below"
	}
	fmt.Fprintf(r.w, "      fix: see the daemon's log (journalctl -u peerix)%s\n", more)
	return &h
}

func decodeJSON(rd io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(rd, 1<<20))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// checkNixConfig: Nix must use the daemon as a substituter and trust the
// keys that sign what it hands out.
func checkNixConfig(ctx context.Context, env doctorEnv, u string, st *ops.Status, r *doctorReport) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	conf, err := env.nixConfig(cctx)
	cancel()
	if err != nil {
		r.fail("install Nix, or make `nix show-config` or /etc/nix/nix.conf readable", "nix: cannot read Nix's configuration: %v", err)
		return
	}
	subs := conf.list("substituters")
	if slices.ContainsFunc(subs, func(s string) bool { return sameURL(s, u) }) {
		r.ok("nix: substituters include %s (%s)", u, conf.source)
	} else {
		r.fail(fmt.Sprintf("add `extra-substituters = %s` to /etc/nix/nix.conf and restart nix-daemon (NixOS: services.peerix.enable does it)", u),
			"nix: substituters do not include %s (%s: %s)", u, conf.source, orNone(strings.Join(subs, " ")))
	}

	keys := conf.list("trusted-public-keys")
	want := []string{}
	if st == nil || st.Upstream == "" || sameURL(st.Upstream, config.DefaultUpstream) {
		want = append(want, cacheNixosOrgKey)
	}
	if st != nil {
		want = append(want, st.TrustedPublicKeys...)
	}
	var missing []string
	for _, k := range want {
		if !slices.Contains(keys, k) {
			missing = append(missing, k)
		}
	}
	switch {
	case len(keys) == 0:
		r.fail("add `trusted-public-keys = "+strings.Join(want, " ")+"` to /etc/nix/nix.conf (NixOS: nix.settings.trusted-public-keys)",
			"nix: trusted-public-keys is empty (%s): Nix will refuse every path peerix hands it", conf.source)
	case len(missing) > 0:
		r.fail("add `extra-trusted-public-keys = "+strings.Join(missing, " ")+"` to /etc/nix/nix.conf (NixOS: nix.settings.trusted-public-keys)",
			"nix: trusted-public-keys lack %s (%s)", strings.Join(keyNames(missing), ", "), conf.source)
	default:
		r.ok("nix: trusted-public-keys include %s", strings.Join(keyNames(want), ", "))
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func keyNames(keys []string) []string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i], _, _ = strings.Cut(k, ":")
	}
	return names
}

// sameURL compares cache URLs as Nix would reach them: trailing slashes do
// not matter, nor localhost against 127.0.0.1.
func sameURL(a, b string) bool {
	norm := func(s string) string {
		u, err := url.Parse(strings.TrimRight(s, "/"))
		if err != nil {
			return s
		}
		host := u.Host
		if h, p, ok := strings.Cut(host, ":"); ok && (h == "localhost" || h == "[::1]") {
			host = "127.0.0.1:" + p
		} else if host == "localhost" {
			host = "127.0.0.1"
		}
		return u.Scheme + "://" + host + u.Path
	}
	return norm(a) == norm(b)
}

// checkStore: the Nix database must be readable, as the daemon sees it if it
// runs, else as this user sees it.
func checkStore(ctx context.Context, env doctorEnv, st *ops.Status, h *ops.Health, r *doctorReport) {
	root := "/"
	if st != nil && st.StoreRoot != "" {
		root = st.StoreRoot
	}
	db := nixstore.DBPath(root)
	if c, ok := daemonCheck(h, "store"); ok {
		if c.OK {
			r.ok("store: the daemon reads %s", db)
		} else {
			r.fail(dbFix(db), "store: the daemon cannot read %s: %s", db, c.Detail)
		}
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := env.openStore(cctx, root); err != nil {
		r.fail(dbFix(db), "store: %v", err)
		return
	}
	r.ok("store: %s is readable", db)
}

func dbFix(db string) string {
	return "the daemon's user needs read access to " + db + " and, in WAL mode, its -wal and -shm files (Nix keeps them root-owned 0644)"
}

// checkStateDir: the state dir must be writable by the daemon.
func checkStateDir(env doctorEnv, st *ops.Status, h *ops.Health, r *doctorReport) {
	dir := config.DefaultStateDir
	if st != nil && st.StateDir != "" {
		dir = st.StateDir
	}
	fix := "create " + dir + " owned by the daemon's user, or pass --state-dir (NixOS: StateDirectory=peerix does it)"
	if c, ok := daemonCheck(h, "state_dir"); ok {
		if c.OK {
			r.ok("state dir: %s is writable by the daemon", dir)
		} else {
			r.fail(fix, "state dir: %s", c.Detail)
		}
		return
	}
	if err := env.writable(dir); err != nil {
		r.fail(fix, "state dir: %v", err)
		return
	}
	r.ok("state dir: %s is writable", dir)
}

// checkKeys: the signing key, the peer identity and the state dir must be
// the daemon's alone. serve refuses a signing or identity key that group or
// others may read; this says so before a restart does.
func checkKeys(env doctorEnv, st *ops.Status, r *doctorReport) {
	cfg, cfgErr := env.serveConfig()
	switch {
	case cfgErr != nil:
		r.fail("fix the configuration (peerix serve --check-config shows what serve makes of it)", "signing key: cannot tell which: %v", cfgErr)
	case cfg.SigningKeyFile == "" && st != nil && st.PublicKey != "":
		r.skip("signing key: the daemon signs as %s with a key file named on its command line, not in a config file or $NIX_SECRET_KEY_FILE here", keyNames([]string{st.PublicKey})[0])
	case cfg.SigningKeyFile == "":
		r.ok("signing key: none configured (narinfos are served with the signatures they have)")
	default:
		checkSigningKey(env, cfg.SigningKeyFile, r)
	}

	dir := config.DefaultStateDir
	if st != nil && st.StateDir != "" {
		dir = st.StateDir
	} else if cfg != nil && cfg.StateDir != "" {
		dir = cfg.StateDir
	}
	fi, err := env.lstat(dir)
	if err != nil {
		// The state dir check above says what is wrong with it.
		return
	}
	if perm := fi.Mode().Perm(); fi.IsDir() && perm&0o077 != 0 {
		r.fail("chmod 700 "+dir+" (peerix serve narrows it when it starts)", "state dir: %s is mode %04o: group or others may look into it", dir, perm)
	}
	entries, err := env.readDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			r.skip("keys: %s is not readable by this user (run doctor as the daemon's user, or root, to check the files in it)", dir)
		}
		return
	}
	var wide []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := env.lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink != 0 {
			continue
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			wide = append(wide, fmt.Sprintf("%s (%04o)", e.Name(), perm))
		}
	}
	id := filepath.Join(dir, p2p.IdentityFile)
	switch fi, err := env.lstat(id); {
	case err != nil:
		r.ok("identity key: none yet in %s (serve creates it, 0600)", dir)
	case fi.Mode().Perm()&0o077 != 0:
		r.fail("chmod 600 "+id, "identity key: %s is mode %04o: group or others may read it, and serve refuses it", id, fi.Mode().Perm())
	default:
		r.ok("identity key: %s is readable by its owner only", id)
	}
	if len(wide) > 0 {
		r.fail("chmod go-rwx "+dir+"/* (peerix serve does it when it starts)", "state dir: group or others may read %s", strings.Join(wide, ", "))
	}
}

// checkSigningKey: the signing key file exists, is the owner's alone, and
// holds a secret key.
func checkSigningKey(env doctorEnv, file string, r *doctorReport) {
	fi, err := env.lstat(file)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		fi, err = os.Stat(file) // the mode that counts is the target's
	}
	if err != nil {
		r.fail("check --signing-key-file (or $NIX_SECRET_KEY_FILE); `peerix keygen NAME` makes a key pair", "signing key: %s: %v", file, err)
		return
	}
	if err := signing.CheckSecretKeyMode(file, fi); err != nil {
		r.fail("chmod 600 "+file+" (owned by the daemon's user); peerix serve refuses it until then", "signing key: %v", err)
		return
	}
	sk, err := signing.LoadSecretKeyFile(file)
	switch {
	case errors.Is(err, fs.ErrPermission):
		r.ok("signing key: %s is mode %04o (not readable by this user; the daemon's user must read it)", file, fi.Mode().Perm())
	case err != nil:
		r.fail("check --signing-key-file (or $NIX_SECRET_KEY_FILE); `peerix keygen NAME` makes a key pair", "signing key: %v", err)
	default:
		r.ok("signing key: %s (%s) is readable by its owner only", file, sk.ToPublicKey().Name)
	}
}

func daemonCheck(h *ops.Health, name string) (ops.Check, bool) {
	if h == nil {
		return ops.Check{}, false
	}
	c, ok := h.Checks[name]
	return c, ok && c.Detail != ops.NotApplicable
}

// checkRemote: the tracker and the upstream cache must answer, from here
// and (if the daemon checks them) from the daemon.
func checkRemote(ctx context.Context, env doctorEnv, st *ops.Status, h *ops.Health, r *doctorReport) {
	if st == nil {
		r.skip("tracker, upstream: the daemon is not reachable, so their URLs are unknown")
		return
	}
	for _, t := range []struct{ name, url, path, flag, none string }{
		{"tracker", st.Tracker, "/v1/info", "--tracker", noTracker(st.Mode)},
		{"upstream", st.Upstream, "/nix-cache-info", "--upstream", "not used"},
	} {
		if t.url == "" {
			r.skip("%s: %s", t.name, t.none)
			continue
		}
		fix := fmt.Sprintf("check that %s is up and reachable from this machine (DNS, firewall, proxy), or change %s", t.url, t.flag)
		if err := probe(ctx, env.remote, t.url+t.path); err != nil {
			r.fail(fix, "%s: %s: %v", t.name, t.url, err)
			continue
		}
		if c, ok := daemonCheck(h, t.name); ok && !c.OK {
			r.fail("see the daemon's log (journalctl -u peerix)", "%s: %s answers here, but the daemon's check fails: %s", t.name, t.url, c.Detail)
			continue
		}
		r.ok("%s: %s answers", t.name, t.url)
	}
}

func noTracker(mode string) string {
	if mode == "p2p" {
		return "none configured (p2p mode without --tracker finds no peers beyond those it already knows)"
	}
	return "not used in " + mode + " mode"
}

// probe GETs u and wants a 2xx.
func probe(ctx context.Context, client *http.Client, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return errors.New(netReason(err))
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", pathOf(u), resp.Status)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nixConf is Nix's effective settings, as name → value.
type nixConf struct {
	source   string // where they came from, for messages
	settings map[string]string
}

// list returns a whitespace-separated setting as a list.
func (c *nixConf) list(name string) []string {
	return strings.Fields(c.settings[name])
}

// readNixConfig asks Nix for its effective settings (`nix show-config`,
// `nix config show` in newer Nix), falling back to reading nix.conf.
func readNixConfig(ctx context.Context) (*nixConf, error) {
	for _, args := range [][]string{
		{"--extra-experimental-features", "nix-command", "show-config"},
		{"--extra-experimental-features", "nix-command", "config", "show"},
	} {
		cmd := exec.CommandContext(ctx, "nix", args...)
		cmd.WaitDelay = time.Second
		out, err := cmd.Output()
		if err == nil && len(out) > 0 {
			settings := parseNixConf(out, nil)
			return &nixConf{source: "nix " + strings.Join(args[2:], " "), settings: settings}, nil
		}
	}
	dir := os.Getenv("NIX_CONF_DIR")
	if dir == "" {
		dir = "/etc/nix"
	}
	file := filepath.Join(dir, "nix.conf")
	settings, err := readNixConfFile(file)
	if err != nil {
		return nil, err
	}
	return &nixConf{source: file, settings: settings}, nil
}

// readNixConfFile reads a nix.conf and the files it includes.
func readNixConfFile(file string) (map[string]string, error) {
	assigns, err := readNixAssigns(file, 0)
	if err != nil {
		return nil, err
	}
	return applyNixAssigns(assigns), nil
}

func readNixAssigns(file string, depth int) ([]nixAssign, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var incErr error
	assigns := parseNixAssigns(data, func(name string, must bool) []nixAssign {
		if depth > 8 {
			incErr = fmt.Errorf("%s: includes nested too deep", file)
			return nil
		}
		if !filepath.IsAbs(name) {
			name = filepath.Join(filepath.Dir(file), name)
		}
		as, err := readNixAssigns(name, depth+1)
		if err != nil && (must || !errors.Is(err, os.ErrNotExist)) && incErr == nil {
			incErr = err
		}
		return as
	})
	return assigns, incErr
}

// nixConfDefaults are the settings doctor looks at as Nix has them when
// nix.conf does not set them.
var nixConfDefaults = map[string]string{
	"substituters":        "https://cache.nixos.org/",
	"trusted-public-keys": cacheNixosOrgKey,
}

// parseNixConf parses nix.conf syntax: "name = value" lines, # comments,
// "include FILE" and "!include FILE" (include may be nil). Assignments apply
// in order, as Nix applies them: "NAME = v" replaces the value, "extra-NAME
// = v" appends to it (to Nix's default if NAME was not set).
func parseNixConf(data []byte, include func(name string, must bool) []nixAssign) map[string]string {
	return applyNixAssigns(parseNixAssigns(data, include))
}

func applyNixAssigns(assigns []nixAssign) map[string]string {
	settings := map[string]string{}
	for _, a := range assigns {
		if base, ok := strings.CutPrefix(a.name, "extra-"); ok {
			old, set := settings[base]
			if !set {
				old = nixConfDefaults[base]
			}
			settings[base] = strings.TrimSpace(old + " " + a.value)
			continue
		}
		settings[a.name] = a.value
	}
	return settings
}

// nixAssign is one "name = value" line.
type nixAssign struct{ name, value string }

func parseNixAssigns(data []byte, include func(name string, must bool) []nixAssign) []nixAssign {
	var out []nixAssign
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if fields := strings.Fields(line); len(fields) == 2 && (fields[0] == "include" || fields[0] == "!include") {
			if include != nil {
				out = append(out, include(fields[1], fields[0] == "include")...)
			}
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out = append(out, nixAssign{strings.TrimSpace(name), strings.Join(strings.Fields(value), " ")})
	}
	return out
}
