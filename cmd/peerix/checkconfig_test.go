package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCheckConfig: `peerix serve|tracker --check-config` prints the
// effective configuration and succeeds, or fails with the one-line error
// the command would fail with, printing nothing.
func TestCheckConfig(t *testing.T) {
	// Neither the machine's nor the user's config files.
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("NIX_SECRET_KEY_FILE", "")
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "mode = \"lan\"\npriority = 10\n")
	unknown := write("unknown.toml", "mode = \"lan\"\nlan_timeout = \"1s\"\n")
	tracker := write("tracker.toml", "relay-port = 0\n")

	tests := []struct {
		name    string
		args    []string
		lines   []string // lines of the output
		wantErr string   // the error, else success
	}{
		{"serve defaults", []string{"serve", "--check-config"}, []string{"# peerix serve: effective configuration", `mode = "p2p"`, "p2p-port = 12306"}, ""},
		{"serve file", []string{"serve", "--check-config", "--config", good}, []string{"# config file: " + good, `mode = "lan"`, "priority = 10"}, ""},
		{"serve flag over file", []string{"serve", "--config", good, "--priority", "3", "--check-config"}, []string{`mode = "lan"`, "priority = 3"}, ""},
		{"serve unknown key", []string{"serve", "--check-config", "--config", unknown}, nil, `config ` + unknown + `: unknown key "lan_timeout" (did you mean "lan-timeout"?)`},
		{"serve bad flag", []string{"serve", "--check-config", "--mode", "lan", "--lan=false"}, nil, "--lan: cannot be false in mode lan"},
		{"serve missing file", []string{"serve", "--check-config", "--config", filepath.Join(dir, "none.toml")}, nil, "no such file or directory"},
		{"tracker defaults", []string{"tracker", "--check-config"}, []string{"# peerix tracker: effective configuration", "relay-port = 12307", `listen = "0.0.0.0:12305"`}, ""},
		{"tracker file", []string{"tracker", "--check-config", "--config", tracker}, []string{"relay-port = 0"}, ""},
		{"tracker serve key", []string{"tracker", "--check-config", "--config", good}, nil, `unknown key "mode"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tt.args, &stdout, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v, want one line with %q", err, tt.wantErr)
				}
				if stdout.Len() != 0 {
					t.Errorf("printed a configuration for a bad one:\n%s", stdout.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			have := strings.Split(stdout.String(), "\n")
			for _, line := range tt.lines {
				if !slices.Contains(have, line) {
					t.Errorf("no line %q in\n%s", line, stdout.String())
				}
			}
		})
	}
}
