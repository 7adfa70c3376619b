package config_test

import (
	"bytes"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/peerix/peerix/internal/config"
)

// defaultsText is what `peerix serve --check-config` prints without a file
// or flags.
const defaultsText = `# peerix serve: effective configuration
# config file: none (defaults and command-line flags only)
filter = "upstream"
filter-pattern = []
lan = true
lan-port = 12304
lan-timeout = "500ms"
listen = "0.0.0.0:12304"
mode = "p2p"
no-verify = false
p2p-port = 12306
priority = 30
signing-key-file = ""
state-dir = "/var/lib/peerix"
store-root = "/"
tracker = ""
trusted-public-key = []
upstream = "https://cache.nixos.org"
verbose = false
`

func TestServeWriteConfig(t *testing.T) {
	dir := t.TempDir()
	lanFile := writeFile(t, dir, "lan.toml", "mode = \"lan\"\npriority = 10\nfilter-pattern = [\"*-secret*\"]\n")
	odd := writeFile(t, dir, "odd.toml", `upstream = "https://cache.example.org/a\"b\\c/"`+"\n"+`filter-pattern = ["tab\there", "ünï"]`+"\n")
	newline := writeFile(t, dir, "new\nline.toml", "verbose = true\n")

	tests := []struct {
		name  string
		args  []string
		env   env
		lines []string // lines the output must have
	}{
		{"defaults", []string{"--check-config"}, nil, strings.Split(strings.TrimSpace(defaultsText), "\n")},
		{"file read and named", []string{"--check-config", "--config", lanFile}, nil, []string{
			"# config file: " + lanFile, `mode = "lan"`, "priority = 10", `filter-pattern = ["*-secret*"]`, "lan = true", `filter = "upstream"`,
		}},
		{"flags win over the file", []string{"--config", lanFile, "--check-config", "--priority", "5", "--mode", "p2p", "--lan=false"}, nil, []string{
			"priority = 5", `mode = "p2p"`, "lan = false",
		}},
		{"local mode resolves lan and filter", []string{"--check-config", "--mode", "local"}, nil, []string{
			`mode = "local"`, "lan = false", `filter = "patterns"`,
		}},
		{"signing key from the environment", []string{"--check-config"}, env{"NIX_SECRET_KEY_FILE": "/run/keys/k.sec"}, []string{
			`signing-key-file = "/run/keys/k.sec"`,
		}},
		{"durations and lists", []string{"--check-config", "--lan-timeout", "1m30s", "--trusted-public-key", pubKey1, "--trusted-public-key", pubKey2}, nil, []string{
			`lan-timeout = "1m30s"`, `trusted-public-key = ["` + pubKey1 + `", "` + pubKey2 + `"]`,
		}},
		{"quoting", []string{"--check-config", "--config", odd}, nil, []string{
			`upstream = "https://cache.example.org/a\"b\\c"`, `filter-pattern = ["tab\there", "ünï"]`,
		}},
		{"a newline in the file name stays in the comment", []string{"--check-config", "--config", newline}, nil, []string{
			"# config file: " + `"` + filepath.Dir(newline) + `/new\nline.toml"`, "verbose = true",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := config.ParseServe(tt.args, tt.env.get)
			if err != nil {
				t.Fatal(err)
			}
			if !s.CheckConfig {
				t.Fatal("CheckConfig not set by --check-config")
			}
			var b bytes.Buffer
			if err := s.WriteConfig(&b); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			have := strings.Split(out, "\n")
			for _, line := range tt.lines {
				if !slices.Contains(have, line) {
					t.Errorf("no line %q in\n%s", line, out)
				}
			}
			// Every key once, in the order of the keys.
			var keys []string
			for _, line := range have {
				if k, _, ok := strings.Cut(line, " = "); ok && !strings.HasPrefix(line, "#") {
					keys = append(keys, k)
				}
			}
			if !reflect.DeepEqual(keys, config.ServeKeys()) {
				t.Errorf("keys %v, want %v", keys, config.ServeKeys())
			}

			// The output is a config file giving the same settings.
			file := writeFile(t, t.TempDir(), "effective.toml", out)
			again, err := config.ParseServe([]string{"--config", file}, nil)
			if err != nil {
				t.Fatalf("the output does not parse as a config file: %v\n%s", err, out)
			}
			want := *s
			want.ConfigFile, want.CheckConfig = file, false
			if !reflect.DeepEqual(normalize(*again), normalize(want)) {
				t.Errorf("read back\n got %+v\nwant %+v", *again, want)
			}
		})
	}

	t.Run("exact defaults", func(t *testing.T) {
		s, err := config.ParseServe(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := s.WriteConfig(&b); err != nil {
			t.Fatal(err)
		}
		if b.String() != defaultsText {
			t.Errorf("got\n%s\nwant\n%s", b.String(), defaultsText)
		}
	})
}

func TestTrackerWriteConfig(t *testing.T) {
	file := writeFile(t, t.TempDir(), "tracker.toml", "peer-ttl = \"90s\"\ndb = \"postgres:///peerix?host=/run/postgresql\"\n")
	tr, err := config.ParseTracker([]string{"--config", file, "--check-config", "--relay-port", "0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tr.WriteConfig(&b); err != nil {
		t.Fatal(err)
	}
	want := `# peerix tracker: effective configuration
# config file: ` + file + `
db = "postgres:///peerix?host=/run/postgresql"
listen = "0.0.0.0:12305"
peer-ttl = "1m30s"
relay-port = 0
verbose = false
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	back := writeFile(t, t.TempDir(), "back.toml", b.String())
	again, err := config.ParseTracker([]string{"--config", back}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.ConfigFile, tr.CheckConfig = back, false
	if *again != *tr {
		t.Errorf("read back\n got %+v\nwant %+v", *again, *tr)
	}
}

// TestKeys: the keys are the flags but --config and --check-config, which
// only the command line takes.
func TestKeys(t *testing.T) {
	for cmd, keys := range map[string][]string{"serve": config.ServeKeys(), "tracker": config.TrackerKeys()} {
		var want []string
		for _, f := range config.FlagNames(cmd) {
			if f != "config" && f != "check-config" {
				want = append(want, f)
			}
		}
		if !reflect.DeepEqual(keys, want) || len(keys) < 5 {
			t.Errorf("%s keys %v, want %v", cmd, keys, want)
		}
		if !slices.Contains(config.FlagNames(cmd), "check-config") {
			t.Errorf("peerix %s has no --check-config", cmd)
		}
	}
}
