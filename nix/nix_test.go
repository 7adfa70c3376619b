// Package nix_test checks the Nix packaging: flake.nix and the files in
// nix/ parse, the NixOS module has its options and hardening and runs
// peerix with its config file only, and the package's vendorHash matches
// go.mod. TestModuleEval evaluates the module with nixpkgs' module system
// where nixpkgs' lib is at hand (NIXPKGS_LIB); the flake's checks evaluate
// it as part of a whole NixOS system (nix flake check).
package nix_test

import (
	"bytes"
	"context"
	"fmt"
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

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	nixtest.Cleanup()
	os.Exit(code)
}

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
	for _, f := range []string{"../flake.nix", "module.nix", "package.nix", "test.nix", "testdata/eval-module.nix"} {
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
	for _, tt := range []struct {
		service string
		options []string // declared at the top of the service
		keys    []string // declared inside its settings
	}{
		{"peerix", []string{"enable", "package", "settings", "signingKeyFile", "openFirewall"}, config.ServeKeys()},
		{"peerix-tracker", []string{"enable", "package", "settings", "openFirewall"}, config.TrackerKeys()},
	} {
		block := optionBlock(t, module, tt.service)
		var options, keys []string
		for _, m := range regexp.MustCompile(`(?m)^( +)([A-Za-z0-9-]+) = mk(Option|EnableOption|PackageOption)\b`).FindAllStringSubmatch(block, -1) {
			if len(m[1]) == 4 {
				options = append(options, m[2])
			} else {
				keys = append(keys, m[2])
			}
		}
		if !slices.Equal(options, tt.options) {
			t.Errorf("services.%s declares %v, want %v", tt.service, options, tt.options)
		}
		// The settings declare every key peerix knows, and no other: the
		// module's assertion takes the undeclared ones for unknown keys.
		slices.Sort(keys)
		if !slices.Equal(keys, tt.keys) {
			t.Errorf("services.%s.settings declares %v, peerix takes %v", tt.service, keys, tt.keys)
		}
	}
}

func TestModuleHardening(t *testing.T) {
	module := readFile(t, "module.nix")
	for _, want := range []string{
		`DynamicUser = true;`,
		`PrivateUsers = true;`,
		`ProcSubset = "pid";`,
		`DevicePolicy = "closed";`,
		`"~@resources"`,
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
		`meta.maintainers = [ ];`,
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

// TestModuleExecStart: the units run `peerix serve|tracker --config FILE`
// and pass no other flag, so nothing overrides the settings. (The
// evaluation test, TestModuleEval, runs the real commands.)
func TestModuleExecStart(t *testing.T) {
	module := readFile(t, "module.nix")
	for _, m := range regexp.MustCompile(`"--([a-z0-9-]+)`).FindAllStringSubmatch(module, -1) {
		if m[1] != "config" {
			t.Errorf("module.nix passes --%s: the units take everything from the config file", m[1])
		}
	}
	for _, cmd := range []string{"serve", "tracker"} {
		want := "(lib.getExe' %s \"peerix\")\n            \"" + cmd + "\"\n            \"--config\"\n"
		pkg := "cfg.package"
		if cmd == "tracker" {
			pkg = "tcfg.package"
		}
		if !strings.Contains(module, fmt.Sprintf(want, pkg)) {
			t.Errorf("module.nix does not run peerix %s --config FILE", cmd)
		}
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
