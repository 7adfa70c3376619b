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
	"path/filepath"
	"sync"
	"time"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/connlimit"
	"github.com/peerix/peerix/internal/lan"
	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/ops"
	"github.com/peerix/peerix/internal/p2p"
	"github.com/peerix/peerix/internal/share"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/trust"
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
	ln     *connlimit.Listener
	budget connlimit.Budget
	lan    *lan.Discovery // nil unless LAN discovery runs
	p2p    *p2p.Node      // nil unless in p2p mode
	start  time.Time

	lanStore  *lan.Store       // nil without LAN discovery
	inventory *share.Inventory // what this machine shares; nil without LAN discovery

	filter   *trust.Filter
	verifier *trust.Verifier // nil without peer sources
	closers  []func() error
	ops      *ops.Ops
}

// New opens everything a daemon needs and binds its HTTP listener, so that
// configuration and permission errors surface before Run.
func New(cfg *config.Serve, log *slog.Logger) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, log: log, start: time.Now()}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	restrictUmask()
	if err := prepareStateDir(cfg.StateDir, log); err != nil {
		return nil, err
	}
	if d.local, err = nixstore.Open(cfg.StoreRoot); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.local.Close)

	trusted := cfg.TrustedPublicKeys
	if len(trusted) == 0 {
		keys, source, err := trust.NixTrustedPublicKeys(context.Background())
		if err != nil {
			return nil, fmt.Errorf("reading Nix's trusted-public-keys: %w", err)
		}
		trusted = keys
		log.Debug("trusted public keys from Nix", "source", source, "keys", keys)
	}

	// What may leave: the filter, then our signature on what passes.
	// Peers of the lan and p2p modes ask only for what the filter let
	// out (announcements, summaries): their requests are answered from
	// what it knows, so a refusal takes no longer than a miss. In local
	// mode the operator chose who connects; Nix there may ask for a path
	// before anything decided it.
	d.filter, err = trust.NewFilter(trust.FilterOptions{
		Mode: cfg.Filter, Patterns: cfg.FilterPatterns, Upstream: cfg.Upstream,
		TrustedPublicKeys: trusted, StateDir: cfg.StateDir, Log: log.With("part", "filter"),
		AnswerFromMemory: cfg.Mode != "local",
	})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.filter.Close)
	d.shared = d.filter.Wrap(d.local)
	if cfg.SigningKeyFile != "" {
		key, err := signing.LoadSecretKeyFile(cfg.SigningKeyFile)
		if err != nil {
			return nil, err
		}
		d.shared = signing.NewStore(d.shared, key)
		log.Info("signing local narinfos", "key", key.ToPublicKey().String())
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	// What peers may hold of this process, so that serving this machine's
	// Nix always wins: connections, open files, libp2p's share.
	d.budget = connlimit.FromRlimit()
	d.ln = connlimit.NewListener(ln, connlimit.Options{Budget: d.budget, Log: log.With("part", "http")})
	d.closers = append(d.closers, d.ln.Close)
	log.Debug("descriptor budget for peers", "limit", d.budget.Limit, "http_conns", d.budget.PeerConns,
		"per_client", d.budget.PerClient, "p2p_transfers", d.budget.PeerTransfers, "p2p_fds", d.budget.P2PFDs)
	if cfg.Mode == "local" {
		return d.finish(), nil
	}

	// Where paths come from: the peer sources of the mode, through the
	// lookup kit, which takes a peer's narinfo only once the verifier
	// vouched for it and hands Nix only verified NARs.
	d.verifier, err = trust.NewVerifier(trust.VerifierOptions{
		NoVerify: cfg.NoVerify, TrustedPublicKeys: trusted, Upstream: cfg.Upstream,
		Log: log.With("part", "verifier"),
	})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.verifier.Close)
	spool := filepath.Join(cfg.StateDir, "spool")
	if err := os.RemoveAll(spool); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	lookup := swarm.Options{
		Accept:   d.verifier.Accept,
		SpoolDir: spool,
		OnLie:    func(peer, hash, what string) { d.ops.VerificationFailure(peer, what+" of "+hash) },
	}
	var sources []store.Store
	if cfg.LAN {
		// What this machine shares, as a summary its LAN neighbours follow.
		d.inventory = share.New(share.Options{
			Paths: d.local, Shareable: d.filter.Shareable, Log: log.With("part", "share"),
		})
		httpPort := uint16(d.ln.Addr().(*net.TCPAddr).Port)
		d.lan, err = lan.Listen(lan.Options{
			Port: cfg.LANPort, HTTPPort: httpPort, Holds: d.filter.Shareable,
			Summary: func() (uint64, uint64) {
				epoch, gen, _ := d.inventory.Summary().Version()
				return epoch, gen
			},
			Log: log.With("part", "lan"),
		})
		if err != nil {
			return nil, fmt.Errorf("--lan-port %d: %w", cfg.LANPort, err)
		}
		d.lanStore = lan.NewStore(d.lan, cfg.LANTimeout, lookup, log.With("part", "lan"))
		sources = append(sources, d.lanStore)
	}
	if cfg.Mode == "p2p" {
		d.p2p, err = p2p.Start(context.Background(), p2p.Config{
			StateDir: cfg.StateDir, Port: cfg.P2PPort, TrackerURL: cfg.Tracker,
			Shared: d.shared, Paths: d.local, Shareable: d.filter.Shareable,
			Lookup: lookup, FDs: d.budget.P2PFDs, MaxTransfers: d.budget.PeerTransfers,
			Log: log.With("part", "p2p"),
		})
		if err != nil {
			return nil, fmt.Errorf("p2p: %w", err)
		}
		d.closers = append(d.closers, d.p2p.Close)
		sources = append(sources, d.p2p.Store)
		log.Info("p2p node up", "peer_id", d.p2p.ID().String(), "tracker", cfg.Tracker)
	}
	d.remote = store.FirstOf(sources...)
	return d.finish(), nil
}

// finish makes the HTTP side once the sources are known.
func (d *Daemon) finish() *Daemon {
	cfg, log := d.cfg, d.log
	d.ops = d.newOps()
	cacheServer := &cache.Server{
		Summary:  d.summaryHandler(),
		Local:    d.shared,
		Remote:   d.remote,
		StoreDir: nixstore.StoreDir,
		Priority: cfg.Priority,
		Next:     d.ops.Handler(),
		Log:      log,
		Observe:  d.ops.ObserveCache,
	}
	d.server = &http.Server{
		Handler:           d.ops.Instrument(cacheServer),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// Which connections are idle: the listener closes those first when
		// peers hold all their budget.
		ConnState: d.ln.ConnState,
	}
	if d.inventory != nil {
		d.server.RegisterOnShutdown(d.inventory.Summary().EndPolls)
	}
	return d
}

// summaryHandler serves /local/summary, or nil without LAN discovery.
func (d *Daemon) summaryHandler() http.Handler {
	if d.inventory == nil {
		return nil
	}
	return d.inventory.Summary()
}

// close releases what New opened, last first.
func (d *Daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil && !errors.Is(err, net.ErrClosed) {
			d.log.Warn("closing", "err", err)
		}
	}
	d.closers = nil
}

// Rescan looks at the store again and announces what changed (SIGHUP).
func (d *Daemon) Rescan() {
	d.log.Info("rescanning the store")
	d.ops.Activity("store rescan requested")
	if d.p2p != nil {
		d.p2p.Rescan()
	}
}

// Addr is the address the HTTP server listens on.
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// Run serves until ctx ends, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	d.log.Info("peerix serving", "listen", d.ln.Addr().String(), "mode", d.cfg.Mode,
		"store", nixstore.DBPath(d.cfg.StoreRoot), "version", Version)
	if err := d.ops.Load(); err != nil {
		d.log.Warn("loading stats", "err", err)
	}
	d.ops.Activity("peerix " + Version + " started in " + d.cfg.Mode + " mode")
	opsCtx, stopOps := context.WithCancel(context.Background())
	opsDone := make(chan struct{})
	go func() { d.ops.Run(opsCtx); close(opsDone) }()
	defer func() { stopOps(); <-opsDone }()
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("http server: %w", d.server.Serve(d.ln)) }()
	var parts sync.WaitGroup
	partsCtx, stopParts := context.WithCancel(context.Background())
	defer func() { stopParts(); parts.Wait() }()
	if d.inventory != nil {
		parts.Go(func() { d.inventory.Run(partsCtx) })
	}
	if d.lan != nil {
		parts.Go(func() {
			if err := d.lan.Run(partsCtx); err != nil {
				errc <- fmt.Errorf("LAN discovery: %w", err)
			}
		})
		d.log.Info("LAN discovery on", "udp-port", d.lan.Port(), "original-format-wait", d.cfg.LANTimeout)
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
