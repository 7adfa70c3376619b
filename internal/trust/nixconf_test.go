package trust

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/peerix/peerix/internal/nixtest"
)

func writeFile(t *testing.T, file, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestKeysFromNixConf(t *testing.T) {
	dir := t.TempDir()
	sys, user, xdg := filepath.Join(dir, "etc-nix"), filepath.Join(dir, "home", ".config"), filepath.Join(dir, "xdg")
	writeFile(t, filepath.Join(sys, "nix.conf"), `
# system
trusted-public-keys = sys-1:AAAA sys-2:BBBB   # comment
include extra.conf
!include missing.conf
`)
	writeFile(t, filepath.Join(sys, "extra.conf"), "extra-trusted-public-keys = inc-1:CCCC\n")
	writeFile(t, filepath.Join(xdg, "nix", "nix.conf"), "extra-trusted-public-keys = xdg-1:DDDD\n")
	writeFile(t, filepath.Join(user, "nix", "nix.conf"), "extra-trusted-public-keys = user-1:EEEE\nsubstituters = http://x\n")

	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"nothing configured: Nix's default", map[string]string{"NIX_CONF_DIR": filepath.Join(dir, "none")}, []string{DefaultUpstreamPublicKey}},
		{"system, include, XDG dirs, user", map[string]string{"NIX_CONF_DIR": sys, "HOME": filepath.Join(dir, "home"), "XDG_CONFIG_DIRS": xdg},
			[]string{"sys-1:AAAA", "sys-2:BBBB", "inc-1:CCCC", "xdg-1:DDDD", "user-1:EEEE"}},
		{"NIX_USER_CONF_FILES and NIX_CONFIG", map[string]string{"NIX_CONF_DIR": sys, "NIX_USER_CONF_FILES": filepath.Join(user, "nix", "nix.conf"),
			"NIX_CONFIG": "extra-trusted-public-keys = env-1:FFFF"},
			[]string{"sys-1:AAAA", "sys-2:BBBB", "inc-1:CCCC", "user-1:EEEE", "env-1:FFFF"}},
		{"NIX_CONFIG replaces", map[string]string{"NIX_CONF_DIR": sys, "NIX_CONFIG": "trusted-public-keys = only-1:GGGG"}, []string{"only-1:GGGG"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := keysFromNixConf(env(c.env))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("keys %q, want %q", got, c.want)
			}
		})
	}
}

func TestIncludeLoop(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nix.conf"), "include nix.conf\n")
	if _, err := keysFromNixConf(env(map[string]string{"NIX_CONF_DIR": dir})); err == nil {
		t.Error("include loop not detected")
	}
}

func TestParseNixConfigJSON(t *testing.T) {
	got, err := parseNixConfigJSON([]byte(`{"trusted-public-keys":{"value":["a-1:AAAA","b-1:BBBB c-1:CCCC"]},"x":{"value":1}}`))
	if err != nil || !slices.Equal(got, []string{"a-1:AAAA", "b-1:BBBB", "c-1:CCCC"}) {
		t.Errorf("%q, %v", got, err)
	}
	got, err = parseNixConfigJSON([]byte(`{"trusted-public-keys":{"value":"a-1:AAAA b-1:BBBB"}}`))
	if err != nil || !slices.Equal(got, []string{"a-1:AAAA", "b-1:BBBB"}) {
		t.Errorf("%q, %v", got, err)
	}
	for _, bad := range []string{`{}`, `[`, `{"trusted-public-keys":{"value":3}}`} {
		if _, err := parseNixConfigJSON([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestNixTrustedPublicKeysFallback(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nix.conf"), "trusted-public-keys = file-1:AAAA\n")
	keys, src, err := nixTrustedPublicKeys(context.Background(), filepath.Join(dir, "no-such-nix"), env(map[string]string{"NIX_CONF_DIR": dir}))
	if err != nil || src != "nix.conf files" || !slices.Equal(keys, []string{"file-1:AAAA"}) {
		t.Errorf("%q from %s, %v", keys, src, err)
	}
	// A fake nix that knows only the old subcommand.
	fake := filepath.Join(dir, "nix")
	writeFile(t, fake, "#!/bin/sh\nfor a; do [ \"$a\" = show-config ] && { echo '{\"trusted-public-keys\":{\"value\":[\"cmd-1:BBBB\"]}}'; exit 0; }; done\nexit 1\n")
	os.Chmod(fake, 0o755)
	keys, src, err = nixTrustedPublicKeys(context.Background(), fake, env(nil))
	if err != nil || src != "nix config" || !slices.Equal(keys, []string{"cmd-1:BBBB"}) {
		t.Errorf("%q from %s, %v", keys, src, err)
	}
}

func TestNixTrustedPublicKeysRealNix(t *testing.T) {
	nixtest.Require(t)
	// Nix reads the tests' nix.conf, not the machine's, which sets no
	// trusted-public-keys: Nix's default (cache.nixos.org's key) is the answer.
	nixtest.Setenv(t)
	keys, src, err := NixTrustedPublicKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d keys from %s: %q", len(keys), src, keys)
	if len(keys) == 0 {
		t.Error("no keys")
	}
}
