package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/peerix/peerix/internal/daemon"
)

// TestEveryHelp: every subcommand's -h and --help succeed (exit 0) and
// print, to stdout, one style of help: a usage line and "--flag VALUE"
// lines, never Go's default "-flag string".
func TestEveryHelp(t *testing.T) {
	names := []string{"help", "--help", "-h"}
	for _, c := range commands() {
		names = append(names, c.name)
	}
	for _, name := range names {
		for _, help := range []string{"--help", "-h"} {
			args := []string{name, help}
			if strings.HasPrefix(name, "-") || name == "help" {
				args = []string{name}
			}
			var stdout, stderr bytes.Buffer
			if err := run(args, &stdout, &stderr); err != nil {
				t.Errorf("peerix %s: %v (want exit 0)", strings.Join(args, " "), err)
				continue
			}
			out := stdout.String()
			if stderr.Len() > 0 {
				t.Errorf("peerix %s wrote to stderr: %q", strings.Join(args, " "), stderr.String())
			}
			if !strings.HasPrefix(out, "usage: peerix "+name) && !strings.HasPrefix(out, "peerix: a peer-to-peer binary cache") {
				t.Errorf("peerix %s: no usage line:\n%s", strings.Join(args, " "), out)
			}
			if m := regexp.MustCompile(`(?m)^\s+-[a-z][a-z-]* (string|int|value|duration)\b`).FindString(out); m != "" {
				t.Errorf("peerix %s prints Go's default flag style (%q):\n%s", strings.Join(args, " "), m, out)
			}
			if name != "version" && name != "completion" && !strings.HasPrefix(name, "-") && name != "help" && !strings.Contains(out, "\nflags:\n  --") {
				t.Errorf("peerix %s: no flags section:\n%s", strings.Join(args, " "), out)
			}
		}
	}
	var stdout bytes.Buffer
	run([]string{"status", "--help"}, &stdout, &bytes.Buffer{})
	golden(t, "help_status.golden", stdout.String())
}

func TestWrongFlagIsOneLine(t *testing.T) {
	for _, args := range [][]string{{"status", "--bogus"}, {"doctor", "--url"}, {"keygen", "x", "--nope"}, {"version", "extra"}, {"completion", "tcsh"}, {"nope"}} {
		err := run(args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("peerix %s: %v; want one line", strings.Join(args, " "), err)
		}
	}
	err := run([]string{"status", "--bogus"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "unknown flag --bogus") {
		t.Errorf("unknown flag: %v", err)
	}
}

func TestVersion(t *testing.T) {
	want := "peerix " + daemon.Version + " (commit " + daemon.BuildCommit() + ")\n"
	for _, args := range [][]string{{"version"}, {"-v"}, {"--version"}} {
		var out bytes.Buffer
		if err := run(args, &out, &bytes.Buffer{}); err != nil || out.String() != want {
			t.Errorf("peerix %s = %q, %v; want %q", args[0], out.String(), err, want)
		}
	}
	if daemon.BuildCommit() == "" {
		t.Error("no commit at all, not even \"unknown\"")
	}
}

func TestKeygenPrintsNixConfLines(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run([]string{"keygen", "cache-1", "--out", dir}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "cache-1.pub"))
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(pub))
	for _, want := range []string{
		"public key: " + filepath.Join(dir, "cache-1.pub") + "\n" + key + "\n",
		"peerix serve --signing-key-file " + filepath.Join(dir, "cache-1.sec"),
		"extra-substituters = http://127.0.0.1:12304",
		"extra-trusted-public-keys = " + key,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("keygen output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCompletion: each script parses in its shell, and where the shell can
// be asked, completes subcommands, flags and their values.
func TestCompletion(t *testing.T) {
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		if err := run([]string{"completion", sh}, &out, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		scripts[sh] = out.String()
		for _, want := range []string{"serve", "p2p-port", "signing-key-file", "upstream", "keygen"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s completion lacks %q", sh, want)
			}
		}
	}
	dir := t.TempDir()
	shell := func(sh string, args ...string) string {
		t.Helper()
		if _, err := exec.LookPath(sh); err != nil {
			t.Skipf("%s not installed", sh)
		}
		file := filepath.Join(dir, "peerix."+sh)
		os.WriteFile(file, []byte(scripts[sh]), 0o644)
		out, err := exec.Command(sh, append(args, file)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", sh, args, err, out)
		}
		return string(out)
	}
	t.Run("bash", func(t *testing.T) {
		shell("bash", "-n")
		script := filepath.Join(dir, "peerix.bash")
		out, err := exec.Command("bash", "-c", `source "$1"
COMP_WORDS=(peerix serve --filter ""); COMP_CWORD=3; _peerix; echo "${COMPREPLY[*]}"
COMP_WORDS=(peerix do); COMP_CWORD=1; _peerix; echo "${COMPREPLY[*]}"
COMP_WORDS=(peerix tracker --relay); COMP_CWORD=2; _peerix; echo "${COMPREPLY[*]}"`, "bash", script).CombinedOutput()
		if err != nil || string(out) != "upstream patterns none\ndoctor\n--relay-port\n" {
			t.Errorf("bash completions: %q, %v", out, err)
		}
	})
	t.Run("zsh", func(t *testing.T) { shell("zsh", "-n") })
	t.Run("fish", func(t *testing.T) {
		shell("fish", "-n")
		script := filepath.Join(dir, "peerix.fish")
		out, err := exec.Command("fish", "-c", `source $argv[1]; complete -C "peerix serve --mode "; complete -C "peerix keyg"`, script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "local\t") || !strings.Contains(string(out), "keygen\t") {
			t.Errorf("fish completions: %q, %v", out, err)
		}
	})
}
