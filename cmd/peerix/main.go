// Command peerix is a peer-to-peer binary cache for Nix.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/daemon"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/tracker"
)

// command is one subcommand: its synopsis and summary for the usage, and
// what runs it.
type command struct {
	name     string
	synopsis string // after "peerix "
	summary  string
	run      func(args []string, stdout, stderr io.Writer) error
}

// commands are peerix's subcommands, in the order the usage lists them.
// (A function, not a variable: completion reads the list.)
func commands() []command {
	return []command{
		{"serve", "serve [flags]", "run the daemon: a binary cache for this machine's Nix, fed by peers (--check-config: print the effective configuration)", func(a []string, o, _ io.Writer) error { return serve(a, o) }},
		{"tracker", "tracker [flags]", "run the tracker: who is online, who holds what, a relay", func(a []string, o, _ io.Writer) error { return runTracker(a, o) }},
		{"status", "status [--url URL]", "a running daemon's peers, transfers and store, as tables", func(a []string, o, _ io.Writer) error { return status(a, o) }},
		{"doctor", "doctor [--url URL]", "check the setup (Nix config, keys, database, state dir, tracker) and say what to fix", func(a []string, o, _ io.Writer) error { return doctor(a, o) }},
		{"keygen", "keygen NAME [--out DIR]", "make a Nix signing key pair and print the nix.conf lines that trust it", func(a []string, o, _ io.Writer) error { return keygen(a, o) }},
		{"version", "version", "print the version and commit (also -v, --version)", func(a []string, o, _ io.Writer) error { return version(a, o) }},
		{"completion", "completion bash|zsh|fish", "print a shell completion script", func(a []string, o, _ io.Writer) error { return completion(a, o) }},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, "peerix: a peer-to-peer binary cache for Nix\n\nusage:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  peerix %-26s %s\n", c.synopsis, c.summary)
	}
	fmt.Fprint(w, "\nEvery command takes --help. The daemon's dashboard is http://127.0.0.1:12304/dashboard.\n")
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "peerix:", err)
		code := 2
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		}
		os.Exit(code)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return errors.New("missing command")
	}
	name, args := args[0], args[1:]
	switch name {
	case "-v", "--version", "-version":
		return version(args, stdout)
	case "help", "-h", "--help", "-help":
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args, stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", name)
}

// newFlagSet makes a subcommand's flag set: errors are returned, never
// printed, and -h/--help returns flag.ErrHelp for the caller's help.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("peerix "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// printHelp writes a subcommand's --help in the style of every peerix
// command: usage line, what it does, its flags.
func printHelp(w io.Writer, synopsis, about string, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: peerix %s\n\n%s\n", synopsis, about)
	if fs != nil {
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(w, "\nflags:\n")
			config.WriteFlags(w, fs)
		}
	}
}

// parseFlags parses a subcommand's flags. On -h/--help it prints the help
// to stdout and reports helped; a wrong flag is one line naming it.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer, synopsis, about string) (helped bool, err error) {
	err = fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, synopsis, about, fs)
		return true, nil
	}
	if err != nil {
		msg := err.Error()
		if rest, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			return false, fmt.Errorf("%s: unknown flag --%s (peerix %s --help lists them)", fs.Name(), strings.TrimLeft(rest, "-"), strings.TrimPrefix(fs.Name(), "peerix "))
		}
		if rest, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
			return false, fmt.Errorf("%s: --%s needs a value", fs.Name(), strings.TrimLeft(rest, "-"))
		}
		return false, fmt.Errorf("%s: %v", fs.Name(), err)
	}
	return false, nil
}

// helpOnly handles the arguments of commands that take no flags: with -h
// or --help among them it prints the help and reports so.
func helpOnly(args []string, stdout io.Writer, synopsis, about string) (helped bool) {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			printHelp(stdout, synopsis, about, nil)
			return true
		}
	}
	return false
}

func serve(args []string, stdout io.Writer) error {
	cfg, err := config.ParseServe(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		config.ServeUsage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.CheckConfig {
		return cfg.WriteConfig(stdout)
	}
	log := newLogger(cfg.Verbose)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	// SIGHUP (systemctl reload) rescans the store and announces changes.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			d.Rescan()
		}
	}()
	return d.Run(ctx)
}

func runTracker(args []string, stdout io.Writer) error {
	cfg, err := config.ParseTracker(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		config.TrackerUsage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.CheckConfig {
		return cfg.WriteConfig(stdout)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return tracker.Run(ctx, cfg, newLogger(cfg.Verbose))
}

const versionAbout = "Prints the version of peerix and the git commit it was built from."

// version implements `peerix version` (and -v, --version).
func version(args []string, stdout io.Writer) error {
	if helpOnly(args, stdout, "version", versionAbout) {
		return nil
	}
	if len(args) > 0 {
		return fmt.Errorf("version: unexpected argument %q", args[0])
	}
	fmt.Fprintln(stdout, "peerix", daemon.FullVersion())
	return nil
}

const keygenAbout = `Makes a Nix signing key pair: NAME.sec (the secret key, mode 0600) and NAME.pub
in DIR, and prints the public key with the nix.conf lines that make Nix trust
what the daemon signs with it.`

func keygenFlags() (*flag.FlagSet, *string) {
	fs := newFlagSet("keygen")
	out := fs.String("out", ".", "write NAME.sec and NAME.pub to `DIR`")
	return fs, out
}

func keygen(args []string, stdout io.Writer) error {
	fs, out := keygenFlags()
	// Flags may stand before or after NAME: the flag package stops at the
	// first positional argument, so parse again after taking it.
	var name string
	for rest := args; ; rest = fs.Args()[1:] {
		if helped, err := parseFlags(fs, rest, stdout, "keygen NAME [--out DIR]", keygenAbout); helped || err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if name != "" {
			return fmt.Errorf("keygen: unexpected argument %q", fs.Arg(0))
		}
		name = fs.Arg(0)
	}
	if name == "" {
		return errors.New("keygen: usage: peerix keygen NAME [--out DIR]")
	}
	secPath, pubPath, err := signing.WriteKeyPair(name, *out)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if abs, err := filepath.Abs(secPath); err == nil {
		secPath = abs
	}
	if abs, err := filepath.Abs(pubPath); err == nil {
		pubPath = abs
	}
	publicKey := strings.TrimSpace(string(pub))
	fmt.Fprintf(stdout, `secret key: %s (keep it private)
public key: %s
%s

Sign what this machine shares:
  peerix serve --signing-key-file %s
  (or signing-key-file = %q in /etc/peerix/config.toml)

On every machine that should take paths from this one, add to nix.conf
(/etc/nix/nix.conf, then restart nix-daemon; on NixOS nix.settings):
  extra-substituters = http://127.0.0.1:12304
  extra-trusted-public-keys = %s
(peerix serve trusts the keys Nix trusts, unless given --trusted-public-key.)
`, secPath, pubPath, publicKey, secPath, secPath, publicKey)
	return nil
}

func newLogger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
