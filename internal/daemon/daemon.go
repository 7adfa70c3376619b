// Package daemon wires one `peerix serve` process together: the local store,
// signing, the peer sources for the chosen mode, and the HTTP server; it
// runs them until the context ends.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/lan"
	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// Version is the peerix version, set at build time with
// -ldflags "-X github.com/peerix/peerix/internal/daemon.Version=...".
var Version = "0.1.0-dev"

// ShutdownGrace bounds how long in-flight requests may finish after SIGTERM.
const ShutdownGrace = 4 * time.Second

// Daemon is a running `peerix serve`.
type Daemon struct {
	cfg    *config.Serve
	log    *slog.Logger
	local  *nixstore.Local
	shared store.Store // the local store as peers see it
	remote store.Store // peers; nil in local mode
	server *http.Server
	ln     net.Listener
	lan    *lan.Discovery // nil unless LAN discovery runs
	start  time.Time
}

// New opens everything a daemon needs and binds its HTTP listener, so that
// configuration and permission errors surface before Run.
func New(cfg *config.Serve, log *slog.Logger) (*Daemon, error) {
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	local, err := nixstore.Open(cfg.StoreRoot)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, local: local, shared: local, start: time.Now()}
	if cfg.SigningKeyFile != "" {
		key, err := signing.LoadSecretKeyFile(cfg.SigningKeyFile)
		if err != nil {
			local.Close()
			return nil, err
		}
		d.shared = signing.NewStore(d.shared, key)
		log.Info("signing local narinfos", "key", key.ToPublicKey().String())
	}

	d.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		local.Close()
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	if cfg.Mode == "lan" || cfg.LAN {
		httpPort := uint16(d.ln.Addr().(*net.TCPAddr).Port)
		d.lan, err = lan.Listen(cfg.LANPort, httpPort, d.holds, log.With("part", "lan"))
		if err != nil {
			d.ln.Close()
			local.Close()
			return nil, fmt.Errorf("--lan-port %d: %w", cfg.LANPort, err)
		}
		d.remote = lan.NewStore(d.lan, cfg.LANTimeout, log.With("part", "lan"))
	}

	cacheServer := &cache.Server{
		Local:    d.shared,
		Remote:   d.remote,
		StoreDir: nixstore.StoreDir,
		Priority: cfg.Priority,
		Next:     d.opsHandler(),
		Log:      log,
	}
	d.server = &http.Server{
		Handler:           cacheServer,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return d, nil
}

// holds tells LAN discovery whether to answer for a path: only when it is
// in the local store and may be shared.
func (d *Daemon) holds(ctx context.Context, hash string) bool {
	_, err := d.shared.NarInfo(ctx, hash)
	return err == nil
}

// Addr is the address the HTTP server listens on.
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// Run serves until ctx ends, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.local.Close()
	d.log.Info("peerix serving", "listen", d.ln.Addr().String(), "mode", d.cfg.Mode,
		"store", nixstore.DBPath(d.cfg.StoreRoot), "version", Version)
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("http server: %w", d.server.Serve(d.ln)) }()
	if d.lan != nil {
		go func() {
			if err := d.lan.Serve(ctx); err != nil {
				errc <- fmt.Errorf("LAN discovery: %w", err)
			}
		}()
		d.log.Info("LAN discovery on", "udp-port", d.lan.Port(), "wait", d.cfg.LANTimeout)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := d.server.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("http shutdown: %w", err)
	}
	d.server.Close()
	d.log.Info("peerix stopped")
	return nil
}
