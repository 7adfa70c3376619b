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
	"syscall"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/daemon"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/tracker"
)

const usage = `peerix: a peer-to-peer binary cache for Nix

usage:
  peerix serve    [flags]   run the daemon (peerix serve --help for flags;
                            --check-config prints the effective configuration)
  peerix tracker  [flags]   run the tracker
  peerix status   [--url URL]
  peerix doctor   [--url URL]
  peerix keygen   NAME [--out DIR]
  peerix version
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "peerix:", err)
		}
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
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(args, stdout)
	case "tracker":
		return runTracker(args, stdout)
	case "status":
		return status(args, stdout)
	case "doctor":
		return doctor(args, stdout)
	case "keygen":
		return keygen(args, stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "peerix", daemon.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
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

func keygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	out := fs.String("out", ".", "directory to write NAME.sec and NAME.pub to")
	// Flags may stand before or after NAME: the flag package stops at the
	// first positional argument, so parse again after taking it.
	var name string
	for rest := args; ; rest = fs.Args()[1:] {
		if err := fs.Parse(rest); err != nil {
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
	fmt.Fprintf(stdout, "secret key: %s\npublic key: %s\n", secPath, pubPath)
	return nil
}

func newLogger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
