// Package nix_test checks the Nix packaging: flake.nix and the files in
// nix/ parse, the NixOS module has its options and hardening and passes
// only flags peerix knows, and the package's vendorHash matches go.mod.
// Nixpkgs is not available offline, so the module is evaluated against
// real nixpkgs only by the flake's checks (nix flake check).
package nix_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/nixtest"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// needTool finds a program or skips the test (fails it under CI=true).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s is not on PATH", name)
		}
		t.Skipf("%s not on PATH", name)
	}
	return p
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNixFilesParse(t *testing.T) {
	nixtest.Require(t)
	for _, f := range []string{"../flake.nix", "module.nix", "package.nix", "test.nix"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := nixtest.Command(ctx, "nix-instantiate", "--parse", f).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("nix-instantiate --parse %s: %v\n%s", f, err, out)
		}
	}
}

// optionBlock returns the text of `options.services.NAME = { ... };`.
func optionBlock(t *testing.T, module, name string) string {
	t.Helper()
	start := strings.Index(module, "options.services."+name+" = {")
	if start < 0 {
		t.Fatalf("module.nix has no options.services.%s", name)
	}
	rest := module[start:]
	end := strings.Index(rest, "\n  };\n")
	if end < 0 {
		t.Fatalf("options.services.%s does not end", name)
	}
	return rest[:end]
}

func TestModuleOptions(t *testing.T) {
	module := readFile(t, "module.nix")
	defined := func(block string) []string {
		var names []string
		for _, m := range regexp.MustCompile(`(?m)^    ([A-Za-z0-9]+) = mk(Option|EnableOption)\b`).FindAllStringSubmatch(block, -1) {
			names = append(names, m[1])
		}
		return names
	}
	for name, want := range map[string][]string{
		"peerix": {"enable", "package", "mode", "tracker", "lan", "filter", "upstream", "signingKeyFile", "priority",
			"openFirewall", "extraArgs", "settings", "port", "p2pPort", "lanPort"},
		"peerix-tracker": {"enable", "package", "listen", "db", "relayPort", "peerTtl", "openFirewall"},
	} {
		have := defined(optionBlock(t, module, name))
		for _, opt := range want {
			if !slices.Contains(have, opt) {
				t.Errorf("services.%s.%s is not defined in module.nix (defined: %v)", name, opt, have)
			}
		}
	}
}

func TestModuleHardening(t *testing.T) {
	module := readFile(t, "module.nix")
	for _, want := range []string{
		`DynamicUser = true;`,
		`StateDirectory = "peerix";`,
		`StateDirectory = "peerix-tracker";`,
		`ProtectSystem = "strict";`,
		`ReadOnlyPaths = [ "/nix" ];`,
		`NoNewPrivileges = true;`,
		`PrivateTmp = true;`,
		`ProtectHome = true;`,
		`"@system-service"`,
		`CapabilityBoundingSet = "";`,
		`Restart = "on-failure";`,
		`ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";`,
		`nix.settings.extra-substituters = [ substituterURL ];`,
		`substituterURL = "http://${hostPort loopbackHost cfg.port}";`,
	} {
		if !strings.Contains(module, want) {
			t.Errorf("module.nix lacks %s", want)
		}
	}
	m := regexp.MustCompile(`RestrictAddressFamilies = \[([^\]]*)\]`).FindStringSubmatch(module)
	if m == nil {
		t.Fatal("module.nix has no RestrictAddressFamilies")
	}
	if fams := strings.Fields(strings.ReplaceAll(m[1], `"`, "")); !slices.Equal(fams, []string{"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}) {
		t.Errorf("RestrictAddressFamilies = %v", fams)
	}
	// No global Nix setting but the substituter.
	for _, line := range strings.Split(module, "\n") {
		if strings.Contains(line, "nix.settings.") && !strings.Contains(line, "nix.settings.extra-substituters") && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			t.Errorf("module.nix changes another Nix setting: %s", strings.TrimSpace(line))
		}
	}
}

// TestModuleFlagsExist: every --flag the module passes is a flag of
// peerix serve or peerix tracker.
func TestModuleFlagsExist(t *testing.T) {
	module := readFile(t, "module.nix")
	known := func(usage func(w *bytes.Buffer)) []string {
		var b bytes.Buffer
		usage(&b)
		var names []string
		for _, m := range regexp.MustCompile(`(?m)^  --([a-z0-9-]+)`).FindAllStringSubmatch(b.String(), -1) {
			names = append(names, m[1])
		}
		return names
	}
	serve := known(func(b *bytes.Buffer) { config.ServeUsage(b) })
	tracker := known(func(b *bytes.Buffer) { config.TrackerUsage(b) })
	serve = append(serve, "config")
	if len(serve) < 10 || len(tracker) < 4 {
		t.Fatalf("could not read the flags from the usage: serve %v, tracker %v", serve, tracker)
	}
	// The tracker's flags are in trackerArgs, the rest are serve's.
	ts := strings.Index(module, "trackerArgs = [")
	te := strings.Index(module, "tcfg.extraArgs;")
	if ts < 0 || te < ts {
		t.Fatal("module.nix has no trackerArgs = [ ... tcfg.extraArgs;")
	}
	flagRE := regexp.MustCompile(`"--([a-z0-9-]+)`)
	check := func(text, cmd string, flags []string) {
		for _, m := range flagRE.FindAllStringSubmatch(text, -1) {
			if !slices.Contains(flags, m[1]) {
				t.Errorf("module.nix passes --%s to peerix %s, which does not know it", m[1], cmd)
			}
		}
	}
	check(module[ts:te], "tracker", tracker)
	check(module[:ts]+module[te:], "serve", serve)
	// The signing key goes through a systemd credential.
	if !strings.Contains(module, `--signing-key-file %d/signing-key`) || !slices.Contains(serve, "signing-key-file") {
		t.Errorf("%s", "the signing key is not passed as --signing-key-file %d/signing-key (a systemd credential)")
	}
}

// TestVendorHash: nix/package.nix's vendorHash must be the hash of `go mod
// vendor` of this tree, or `nix build` fails. nix/update-vendor-hash.sh
// --write fixes it.
func TestVendorHash(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: vendoring takes seconds")
	}
	nixtest.Require(t)
	needTool(t, "go")
	needTool(t, "git")
	m := regexp.MustCompile(`vendorHash = "([^"]*)";`).FindStringSubmatch(readFile(t, "package.nix"))
	if m == nil {
		t.Fatal("package.nix has no vendorHash")
	}
	script, _ := filepath.Abs("update-vendor-hash.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script)
	// The script runs `nix hash path`: with the tests' Nix configuration.
	env, err := nixtest.Env()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	if got := strings.TrimSpace(string(out)); got != m[1] {
		t.Errorf("nix/package.nix has vendorHash %q, but go.mod and go.sum vendor to %q: run nix/update-vendor-hash.sh --write", m[1], got)
	}
}
