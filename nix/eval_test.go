package nix_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/nixtest"
)

// nixpkgsLib finds nixpkgs' lib: $NIXPKGS_LIB (the lib directory, or a
// checkout holding one, such as github:nix-community/nixpkgs.lib), else
// <nixpkgs/lib> on NIX_PATH. It skips the test, in one line, without one:
// no nixpkgs can be installed on the machines the tests run on, CI's
// included.
func nixpkgsLib(t *testing.T) string {
	t.Helper()
	nixtest.Require(t)
	if dir := os.Getenv("NIXPKGS_LIB"); dir != "" {
		for _, d := range []string{dir, filepath.Join(dir, "lib")} {
			if _, err := os.Stat(filepath.Join(d, "modules.nix")); err == nil {
				abs, err := filepath.Abs(d)
				if err != nil {
					t.Fatal(err)
				}
				return abs
			}
		}
		t.Fatalf("NIXPKGS_LIB=%s is not nixpkgs' lib (no modules.nix in it or in its lib/)", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := nixtest.Output(ctx, "nix-instantiate", "--find-file", "nixpkgs/lib"); err == nil {
		return strings.TrimSpace(string(out))
	}
	t.Skip("skipped: no nixpkgs lib to evaluate the module with (set NIXPKGS_LIB to a checkout of github:nix-community/nixpkgs.lib, or put nixpkgs on NIX_PATH)")
	return ""
}

// binDir holds the peerix built for the tests; TestMain removes it.
var binDir string

// peerixBinary builds cmd/peerix once for the tests of this package.
var peerixBinary = sync.OnceValues(func() (string, error) {
	var err error
	if binDir, err = os.MkdirTemp("", "peerix-nix-test-"); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "peerix")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/peerix").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ../cmd/peerix: %v\n%s", err, out)
	}
	return bin, nil
})

// evalResult is what nix/testdata/eval-module.nix returns.
type evalResult struct {
	FailedAssertions []string        `json:"failedAssertions"`
	Warnings         []string        `json:"warnings"`
	Units            map[string]unit `json:"units"`
	Firewall         struct {
		TCP []int `json:"tcp"`
		UDP []int `json:"udp"`
	} `json:"firewall"`
	Substituters []string `json:"substituters"`
	Packages     struct {
		Peerix      string   `json:"peerix"`
		Tracker     string   `json:"tracker"`
		License     *string  `json:"license"`
		Maintainers []string `json:"maintainers"`
		MainProgram string   `json:"mainProgram"`
	} `json:"packages"`
	ModuleMaintainers []string `json:"moduleMaintainers"`
	KnownKeys         struct {
		Serve   []string `json:"serve"`
		Tracker []string `json:"tracker"`
	} `json:"knownKeys"`
}

type unit struct {
	Description   string            `json:"description"`
	WantedBy      []string          `json:"wantedBy"`
	After         []string          `json:"after"`
	Environment   map[string]string `json:"environment"`
	ServiceConfig map[string]any    `json:"serviceConfig"`
}

// evalModule evaluates the module with configuration (a Nix expression).
func evalModule(t *testing.T, lib, configuration string, withPeerix bool) (*evalResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := nixtest.Output(ctx, "nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
		"testdata/eval-module.nix", "--argstr", "libDir", lib,
		"--arg", "configuration", configuration, "--arg", "withPeerix", strconv.FormatBool(withPeerix))
	if err != nil {
		return nil, err
	}
	var r evalResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("decoding the evaluation: %v\n%s", err, out)
	}
	return &r, nil
}

// splitExec splits an ExecStart line as systemd does for the quoting that
// utils.escapeSystemdExecArgs produces: JSON strings separated by spaces,
// with % and $ doubled.
func splitExec(line string) ([]string, error) {
	var args []string
	dec := json.NewDecoder(strings.NewReader(line))
	for dec.More() {
		var a string
		if err := dec.Decode(&a); err != nil {
			return nil, fmt.Errorf("ExecStart %q: %v", line, err)
		}
		args = append(args, strings.NewReplacer("%%", "%", "$$", "$").Replace(a))
	}
	return args, nil
}

// checkConfig runs the real peerix with the unit's ExecStart arguments and
// --check-config, in the unit's environment (%d, the credentials
// directory, expanded as systemd does), and returns what it printed.
func checkConfig(t *testing.T, name string, u unit, pkg, subcommand string) (string, error) {
	t.Helper()
	line, _ := u.ServiceConfig["ExecStart"].(string)
	args, err := splitExec(line)
	if err != nil {
		t.Fatal(err)
	}
	// The unit runs the package's peerix with the generated file and
	// nothing else: no flag can override the settings.
	if len(args) != 4 || args[0] != pkg+"/bin/peerix" || args[1] != subcommand || args[2] != "--config" || !strings.HasPrefix(args[3], "/nix/store/") {
		t.Fatalf("%s ExecStart = %q, want %s/bin/peerix %s --config /nix/store/...", name, args, pkg, subcommand)
	}
	bin, err := peerixBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args[1:], "--check-config")...)
	home := t.TempDir()
	cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
	for k, v := range u.Environment {
		cmd.Env = append(cmd.Env, k+"="+strings.ReplaceAll(v, "%d", "/run/credentials/"+name+".service"))
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// hardened checks the sandbox of a unit.
func hardened(t *testing.T, name string, u unit) {
	t.Helper()
	sc := u.ServiceConfig
	for key, want := range map[string]any{
		"DynamicUser": true, "PrivateUsers": true, "ProcSubset": "pid", "DevicePolicy": "closed",
		"ProtectSystem": "strict", "ProtectHome": true, "PrivateTmp": true, "PrivateDevices": true,
		"NoNewPrivileges": true, "CapabilityBoundingSet": "", "ProtectProc": "invisible",
		"MemoryDenyWriteExecute": true, "RestrictNamespaces": true, "SystemCallArchitectures": "native",
	} {
		if sc[key] != want {
			t.Errorf("%s: %s = %v, want %v", name, key, sc[key], want)
		}
	}
	filters, _ := sc["SystemCallFilter"].([]any)
	for _, want := range []string{"@system-service", "~@privileged", "~@resources"} {
		if !slices.Contains(filters, any(want)) {
			t.Errorf("%s: SystemCallFilter %v lacks %s", name, filters, want)
		}
	}
	if ro, _ := sc["ReadOnlyPaths"].([]any); !slices.Contains(ro, any("/nix")) {
		t.Errorf("%s: ReadOnlyPaths = %v", name, ro)
	}
}

// TestModuleEval evaluates nix/module.nix with nixpkgs' module system in
// several configurations and checks the units it renders, down to running
// the real `peerix serve --check-config` on each generated config file.
func TestModuleEval(t *testing.T) {
	lib := nixpkgsLib(t)
	needTool(t, "go")

	const (
		daemon      = `services.peerix.enable = true;`
		tracker     = `services.peerix-tracker.enable = true;`
		withTracker = `services.peerix.settings.tracker = "https://tracker.example.org";`
	)
	tests := []struct {
		name       string
		nix        string   // the configuration, inside { }
		noPeerix   bool     // pkgs has no peerix
		evalError  string   // the evaluation fails with this
		assertions []string // failed assertions, each containing this
		warnings   []string // warnings, each containing this
		tcp, udp   []int    // the firewall
		serve      []string // lines of the daemon's effective configuration
		trackerOut []string // lines of the tracker's
		checkFails string   // peerix rejects the configuration with this
		check      func(t *testing.T, r *evalResult)
	}{
		{
			name:     "defaults",
			nix:      daemon,
			warnings: []string{`mode "p2p" without settings.tracker finds peers on the LAN only`},
			serve: []string{`mode = "p2p"`, `listen = "0.0.0.0:12304"`, "lan = true", "p2p-port = 12306", "priority = 30",
				`filter = "upstream"`, `state-dir = "/var/lib/peerix"`, `signing-key-file = ""`},
			check: func(t *testing.T, r *evalResult) {
				if !slices.Equal(r.Substituters, []string{"http://127.0.0.1:12304"}) {
					t.Errorf("substituters %v", r.Substituters)
				}
				if _, ok := r.Units["peerix-tracker"]; ok {
					t.Error("a tracker unit without services.peerix-tracker.enable")
				}
				if len(r.ModuleMaintainers) != 0 {
					t.Errorf("meta.maintainers = %v", r.ModuleMaintainers)
				}
			},
		},
		{
			name:  "settings win over the defaults",
			nix:   daemon + `services.peerix.settings = { mode = "lan"; priority = 10; listen = "[::]:8080"; filter-pattern = [ "*-secret*" ]; lan-timeout = "1s"; };`,
			serve: []string{`mode = "lan"`, "priority = 10", `listen = "[::]:8080"`, `filter-pattern = ["*-secret*"]`, `lan-timeout = "1s"`, "lan = true"},
			check: func(t *testing.T, r *evalResult) {
				if !slices.Equal(r.Substituters, []string{"http://127.0.0.1:8080"}) {
					t.Errorf("substituters %v", r.Substituters)
				}
			},
		},
		{
			name:  "mkForce and mkDefault work as everywhere",
			nix:   daemon + `imports = [ { services.peerix.settings.priority = 12; } ]; services.peerix.settings.mode = lib.mkForce "local"; services.peerix.settings.upstream = lib.mkDefault "https://cache.example.org";`,
			serve: []string{`mode = "local"`, "priority = 12", "lan = false", `listen = "127.0.0.1:12304"`, `upstream = "https://cache.example.org"`},
		},
		{
			name:  "p2p with a tracker opens libp2p, LAN discovery and HTTP",
			nix:   daemon + withTracker + `services.peerix.openFirewall = true;`,
			tcp:   []int{12304, 12306},
			udp:   []int{12306, 12304},
			serve: []string{`tracker = "https://tracker.example.org"`, `mode = "p2p"`},
		},
		{
			name:  "p2p without LAN listens on loopback and opens libp2p only",
			nix:   daemon + withTracker + `services.peerix.openFirewall = true; services.peerix.settings.lan = false;`,
			tcp:   []int{12306},
			udp:   []int{12306},
			serve: []string{"lan = false", `listen = "127.0.0.1:12304"`},
		},
		{
			name:     "p2p without LAN or tracker finds nobody",
			nix:      daemon + `services.peerix.settings.lan = false;`,
			warnings: []string{"finds no peers at all"},
			serve:    []string{"lan = false"},
		},
		{
			name:  "lan mode opens HTTP and LAN discovery",
			nix:   daemon + `services.peerix.openFirewall = true; services.peerix.settings = { mode = "lan"; lan-port = 4000; };`,
			tcp:   []int{12304},
			udp:   []int{4000},
			serve: []string{`mode = "lan"`, "lan-port = 4000"},
		},
		{
			name:  "local mode listens on loopback and opens nothing",
			nix:   daemon + `services.peerix.openFirewall = true; services.peerix.settings.mode = "local";`,
			serve: []string{`mode = "local"`, `listen = "127.0.0.1:12304"`, "lan = false"},
		},
		{
			name:  "local mode serving the network opens its port",
			nix:   daemon + `services.peerix.openFirewall = true; services.peerix.settings = { mode = "local"; listen = "0.0.0.0:5000"; };`,
			tcp:   []int{5000},
			serve: []string{`listen = "0.0.0.0:5000"`},
		},
		{
			name:     "loopback listen with LAN discovery",
			nix:      daemon + `services.peerix.settings = { mode = "lan"; listen = "127.0.0.1:12304"; };`,
			warnings: []string{"is loopback only, so LAN peers"},
			serve:    []string{`listen = "127.0.0.1:12304"`},
		},
		{
			name: "signing key as a credential",
			nix:  daemon + withTracker + `services.peerix.signingKeyFile = "/run/keys/peerix.sec";`,
			serve: []string{
				`signing-key-file = "/run/credentials/peerix.service/signing-key"`,
			},
			check: func(t *testing.T, r *evalResult) {
				if lc := r.Units["peerix"].ServiceConfig["LoadCredential"]; fmt.Sprint(lc) != "[signing-key:/run/keys/peerix.sec]" {
					t.Errorf("LoadCredential = %v", lc)
				}
			},
		},
		{
			name:       "unknown key",
			nix:        daemon + withTracker + `services.peerix.settings.lan_timeout = "1s";`,
			assertions: []string{`services.peerix.settings: unknown key "lan_timeout" (did you mean "lan-timeout"?); peerix knows: filter, filter-pattern,`},
			checkFails: `unknown key "lan_timeout" (did you mean "lan-timeout"?)`,
		},
		{
			name:       "unknown tracker key",
			nix:        tracker + `services.peerix-tracker.settings.mode = "lan";`,
			assertions: []string{`services.peerix-tracker.settings: unknown key "mode"; peerix knows: db, listen, peer-ttl, relay-port, verbose.`},
		},
		{
			name: "daemon and tracker side by side with the defaults",
			nix:  daemon + tracker + withTracker + `services.peerix.openFirewall = true; services.peerix-tracker.openFirewall = true;`,
			tcp:  []int{12304, 12306, 12305, 12307},
			udp:  []int{12306, 12304, 12307},
			serve: []string{
				"p2p-port = 12306",
			},
			trackerOut: []string{"relay-port = 12307", `listen = "0.0.0.0:12305"`, `peer-ttl = "2m0s"`},
		},
		{
			name: "p2p port equal to the relay port",
			nix:  daemon + tracker + withTracker + `services.peerix.settings.p2p-port = 12307;`,
			assertions: []string{
				"services.peerix.settings.p2p-port (libp2p (TCP)) and services.peerix-tracker.settings.relay-port (the relay (TCP)) are both TCP port 12307",
				"services.peerix.settings.p2p-port (libp2p (QUIC)) and services.peerix-tracker.settings.relay-port (the relay (QUIC)) are both UDP port 12307",
			},
		},
		{
			name:       "LAN discovery on the QUIC port",
			nix:        daemon + withTracker + `services.peerix.settings.lan-port = 12306;`,
			assertions: []string{"services.peerix.settings.p2p-port (libp2p (QUIC)) and services.peerix.settings.lan-port (LAN discovery) are both UDP port 12306"},
		},
		{
			name: "HTTP ports on different loopback addresses do not clash",
			nix:  daemon + tracker + withTracker + `services.peerix.settings.listen = "127.0.0.1:12305"; services.peerix.settings.lan = false; services.peerix-tracker.settings.listen = "127.0.0.2:12305";`,
			serve: []string{
				`listen = "127.0.0.1:12305"`,
			},
			trackerOut: []string{`listen = "127.0.0.2:12305"`},
		},
		{
			name: "bad values",
			nix: daemon + `services.peerix.openFirewall = true; services.peerix.settings = { listen = "192.168.1.5:12304"; lan-timeout = "soon"; upstream = "ftp://x"; ` +
				`p2p-port = 0; state-dir = "/srv/peerix"; trusted-public-key = [ "nokey" ]; filter-pattern = [ "" ]; }; services.peerix.signingKeyFile = "/nix/store/x-key";`,
			assertions: []string{
				"services.peerix.settings.listen must include loopback",
				"services.peerix.settings.lan-timeout must be a Go duration",
				"services.peerix.settings.upstream must be an http:// or https:// URL",
				"services.peerix.openFirewall needs a fixed settings.p2p-port",
				"services.peerix.settings.state-dir must be /var/lib/peerix",
				"services.peerix.settings.trusted-public-key takes keys as name:base64",
				"services.peerix.settings.filter-pattern must not contain an empty pattern",
				"The peerix signing key must not be in the Nix store",
			},
			warnings: []string{`without settings.tracker`},
			tcp:      []int{12304}, // not loopback
			udp:      []int{12304}, // not p2p-port 0
		},
		{
			name:       "LAN in local mode",
			nix:        daemon + `services.peerix.settings = { mode = "local"; lan = true; };`,
			assertions: []string{`services.peerix.settings.lan cannot be true in mode "local"`},
			checkFails: "cannot be used with mode local",
		},
		{
			name:       "no LAN in lan mode",
			nix:        daemon + `services.peerix.settings = { mode = "lan"; lan = false; };`,
			assertions: []string{`services.peerix.settings.lan cannot be false in mode "lan"`},
			checkFails: "cannot be false in mode lan",
		},
		{
			name:       "listen without a port",
			nix:        daemon + withTracker + `services.peerix.settings.listen = "0.0.0.0";`,
			assertions: []string{"services.peerix.settings.listen must be HOST:PORT"},
			checkFails: "want HOST:PORT",
		},
		{
			name:       "tracker bad values",
			nix:        tracker + `services.peerix-tracker.openFirewall = true; services.peerix-tracker.settings = { peer-ttl = "120"; relay-port = 0; listen = "nowhere"; };`,
			assertions: []string{"peer-ttl must be a Go duration", "needs a fixed settings.relay-port", "settings.listen must be HOST:PORT"},
		},
		{
			name:      "a bad mode is a type error",
			nix:       daemon + `services.peerix.settings.mode = "fast";`,
			evalError: "services.peerix.settings.mode",
		},
		{
			name:      "a port out of range is a type error",
			nix:       daemon + `services.peerix.settings.p2p-port = 70000;`,
			evalError: "services.peerix.settings.p2p-port",
		},
		{
			name:       "tracker settings win",
			nix:        tracker + `services.peerix-tracker.settings = { peer-ttl = "90s"; db = "postgres:///peerix?host=/run/postgresql"; verbose = true; };`,
			trackerOut: []string{`peer-ttl = "1m30s"`, `db = "postgres:///peerix?host=/run/postgresql"`, "verbose = true"},
			check: func(t *testing.T, r *evalResult) {
				if !slices.Contains(r.Units["peerix-tracker"].After, "postgresql.service") {
					t.Errorf("tracker after %v, want postgresql.service", r.Units["peerix-tracker"].After)
				}
			},
		},
		{
			name:     "the package from package.nix where pkgs has no peerix",
			nix:      daemon + withTracker,
			noPeerix: true,
			check: func(t *testing.T, r *evalResult) {
				p := r.Packages
				if p.License == nil || *p.License != "MIT" || p.Maintainers == nil || len(p.Maintainers) != 0 || p.MainProgram != "peerix" {
					t.Errorf("package meta: license %v, maintainers %v, mainProgram %q", p.License, p.Maintainers, p.MainProgram)
				}
				if !strings.HasSuffix(p.Peerix, "-peerix-0.1.0-dev") || p.Tracker != p.Peerix {
					t.Errorf("packages %q, %q", p.Peerix, p.Tracker)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := evalModule(t, lib, "{ lib, ... }: { "+tt.nix+" }", !tt.noPeerix)
			if tt.evalError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.evalError) {
					t.Fatalf("evaluation error %v, want one naming %q", err, tt.evalError)
				}
				t.Logf("evaluation fails: %s", firstErrorLine(err))
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			matchAll(t, "failed assertion", r.FailedAssertions, tt.assertions)
			matchAll(t, "warning", r.Warnings, tt.warnings)
			if !slices.Equal(r.Firewall.TCP, nonNil(tt.tcp)) || !slices.Equal(r.Firewall.UDP, nonNil(tt.udp)) {
				t.Errorf("firewall TCP %v UDP %v, want TCP %v UDP %v", r.Firewall.TCP, r.Firewall.UDP, nonNil(tt.tcp), nonNil(tt.udp))
			}
			for name, u := range r.Units {
				hardened(t, name, u)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
			if tt.noPeerix {
				return // the package is a stand-in; its ExecStart is checked elsewhere
			}
			for _, c := range []struct {
				unit, subcommand string
				want             []string
			}{
				{"peerix", "serve", tt.serve},
				{"peerix-tracker", "tracker", tt.trackerOut},
			} {
				u, ok := r.Units[c.unit]
				if !ok {
					if c.want != nil {
						t.Errorf("no unit %s", c.unit)
					}
					continue
				}
				out, err := checkConfig(t, c.unit, u, r.Packages.Peerix, c.subcommand)
				switch {
				case tt.checkFails != "" && c.unit == "peerix":
					if err == nil || !strings.Contains(err.Error(), tt.checkFails) {
						t.Errorf("peerix %s --check-config: %v, want an error with %q", c.subcommand, err, tt.checkFails)
					} else {
						t.Logf("peerix %s --check-config rejects it too: %s", c.subcommand, err.Error()[strings.LastIndex(err.Error(), "peerix: "):])
					}
					continue
				case len(tt.assertions) > 0:
					continue // a configuration NixOS refuses; peerix may accept it
				case err != nil:
					t.Errorf("peerix %s --check-config refuses the module's configuration: %v", c.subcommand, err)
					continue
				}
				lines := strings.Split(out, "\n")
				for _, want := range c.want {
					if !slices.Contains(lines, want) {
						t.Errorf("peerix %s --check-config has no line %q:\n%s", c.subcommand, want, out)
					}
				}
				t.Logf("%s: ExecStart %s; --check-config ok (%s)", c.unit, u.ServiceConfig["ExecStart"], strings.Join(c.want, ", "))
			}
			if len(r.Firewall.TCP)+len(r.Firewall.UDP) > 0 {
				t.Logf("firewall: TCP %v, UDP %v", r.Firewall.TCP, r.Firewall.UDP)
			}
			for _, a := range r.FailedAssertions {
				t.Logf("assertion: %s", a)
			}
			for _, w := range r.Warnings {
				t.Logf("warning: %s", w)
			}
		})
	}

	// The module knows exactly the keys peerix knows.
	t.Run("known keys", func(t *testing.T) {
		t.Parallel()
		r, err := evalModule(t, lib, "{ }", true)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(r.KnownKeys.Serve, config.ServeKeys()) {
			t.Errorf("services.peerix.settings declares %v, peerix serve takes %v", r.KnownKeys.Serve, config.ServeKeys())
		}
		if !slices.Equal(r.KnownKeys.Tracker, config.TrackerKeys()) {
			t.Errorf("services.peerix-tracker.settings declares %v, peerix tracker takes %v", r.KnownKeys.Tracker, config.TrackerKeys())
		}
		if len(r.Units) != 0 || len(r.Substituters) != 0 || len(r.FailedAssertions) != 0 {
			t.Errorf("a disabled module changes the system: %+v", r)
		}
	})
}

// matchAll checks that every item contains its own one of wants, and
// that there are as many of each.
func matchAll(t *testing.T, what string, items, wants []string) {
	t.Helper()
	if len(items) != len(wants) {
		t.Errorf("%d %ss, want %d:\n  %s", len(items), what, len(wants), strings.Join(items, "\n  "))
		return
	}
	for _, want := range wants {
		if !slices.ContainsFunc(items, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no %s with %q in:\n  %s", what, want, strings.Join(items, "\n  "))
		}
	}
}

func nonNil(l []int) []int {
	if l == nil {
		return []int{}
	}
	return l
}

func firstErrorLine(err error) string {
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "error:") {
			return strings.TrimSpace(line)
		}
	}
	return err.Error()
}
