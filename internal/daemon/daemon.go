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
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/connlimit"
	"github.com/peerix/peerix/internal/httploop"
	"github.com/peerix/peerix/internal/lan"
	"github.com/peerix/peerix/internal/nixstore"
	"github.com/peerix/peerix/internal/ops"
	"github.com/peerix/peerix/internal/p2p"
	"github.com/peerix/peerix/internal/portcheck"
	"github.com/peerix/peerix/internal/share"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/trust"
)

// ShutdownGrace bounds how long in-flight requests may finish after SIGTERM.
const ShutdownGrace = 4 * time.Second

// Daemon is a running `peerix serve`.
type Daemon struct {
	cfg    *config.Serve
	log    *slog.Logger
	local  *nixstore.Local
	shared store.Store      // the local store as peers see it
	remote store.Store      // peers; nil in local mode
	server *http.Server     // everything but the fast routes
	loop   *httploop.Server // the fast routes; hands the rest to server
	ln     *connlimit.Listener
	budget connlimit.Budget
	lan    *lan.Discovery // nil unless LAN discovery runs
	p2p    *p2p.Node      // nil unless in p2p mode
	start  time.Time

	lanStore  *lan.Store       // nil without LAN discovery
	inventory *share.Inventory // what this machine shares (its summary is served only with LAN discovery)
	publicKey string           // the signing key's public half, "" when not signing

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
		d.publicKey = key.ToPublicKey().String()
		log.Info("signing local narinfos", "key", d.publicKey)
	}
	// What this machine shares: the filter's verdict on every local path,
	// kept current; its count is shown to the operator, its summary
	// followed by LAN neighbours.
	d.inventory = share.New(share.Options{
		Paths: d.local, Shareable: d.filter.Shareable, Log: log.With("part", "share"),
	})

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
	// Each source's transfers are shown to the operator as they run.
	lookup := func(source string) swarm.Options {
		return swarm.Options{
			Accept:   d.verifier.Accept,
			SpoolDir: spool,
			// Nix asks for a NAR right after its narinfo: small ones are
			// on their way by then (a round trip saved per path).
			PrefetchMax: swarm.DefaultPrefetchMax,
			OnLie:       func(peer, hash, what string) { d.ops.VerificationFailure(peer, what+" of "+hash) },
			Observer:    downloads{d: d, source: source},
		}
	}
	var sources []store.Store
	if cfg.LAN {
		httpPort := uint16(d.ln.Addr().(*net.TCPAddr).Port)
		d.lan, err = lan.Listen(lan.Options{
			Port: cfg.LANPort, HTTPPort: httpPort, Holds: d.filter.Shareable,
			Summary: func() (uint64, uint64) {
				epoch, gen, _ := d.inventory.Summary().Version()
				return epoch, gen
			},
			Log: log.With("part", "lan"),
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("--lan-port %d: UDP port %d is taken by another program (another peerix daemon, or the original peerix?): %w", cfg.LANPort, cfg.LANPort, portcheck.ErrInUse)
		}
		if err != nil {
			return nil, fmt.Errorf("--lan-port %d: %w", cfg.LANPort, err)
		}
		d.lanStore = lan.NewStore(d.lan, cfg.LANTimeout, lookup(lan.Source), log.With("part", "lan"))
		sources = append(sources, d.lanStore)
	}
	if cfg.Mode == "p2p" {
		d.p2p, err = p2p.New(p2p.Config{
			StateDir: cfg.StateDir, Port: cfg.P2PPort, TrackerURL: cfg.Tracker,
			Shared: d.shared, Paths: d.local, Shareable: d.filter.Shareable,
			Lookup: lookup(p2p.Source), Served: served{d},
			FDs: d.budget.P2PFDs, MaxTransfers: d.budget.PeerTransfers,
			Log: log.With("part", "p2p"),
		})
		if errors.Is(err, portcheck.ErrInUse) {
			return nil, err // "--p2p-port N: TCP 0.0.0.0:N is taken ..."
		}
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

// The HTTP server's timeouts: for a request's header once it began, and
// for an idle connection.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

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
	handler := d.ops.Instrument(cacheServer)
	// The local store's routes, which LAN peers ask at high rates, are
	// served by a lean HTTP/1.1 loop; every connection that asks anything
	// else, or asks oddly, goes on to net/http.
	d.loop = httploop.New(httploop.Options{
		Handler:           handler,
		Fast:              cacheServer.Fast,
		KeepHeaders:       cache.RequestHeaders,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ConnState:         d.ln.ConnState,
		Log:               log.With("part", "http"),
	})
	d.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// Which connections are idle: the listener closes those first when
		// peers hold all their budget.
		ConnState: d.ln.ConnState,
	}
	if d.lan != nil {
		d.server.RegisterOnShutdown(d.inventory.Summary().EndPolls)
	}
	return d
}

// summaryHandler serves /local/summary, or nil without LAN discovery.
func (d *Daemon) summaryHandler() http.Handler {
	if d.lan == nil {
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

// Run serves until ctx ends, then shuts down gracefully. Its long-lived
// parts (the HTTP server, the inventory, the activity watch, LAN discovery,
// the P2P node) run in one errgroup: the first to fail stops the others,
// and Run returns its error once all have stopped; the operator's stats
// stop last, so they count everything.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	d.logStartup()
	if err := d.ops.Load(); err != nil {
		d.log.Warn("loading stats", "err", err)
	}
	d.ops.Activity("peerix " + Version + " started in " + d.cfg.Mode + " mode")
	opsCtx, stopOps := context.WithCancel(context.Background())
	opsDone := make(chan struct{})
	go func() { d.ops.Run(opsCtx); close(opsDone) }()
	defer func() { stopOps(); <-opsDone }()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := d.loop.Serve(d.ln); !errors.Is(err, httploop.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := d.server.Serve(d.loop.HandOff()); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
		defer cancel()
		// Both at once, each with the whole grace: once net/http's
		// Shutdown closes the hand-off listener, the loop closes a
		// connection it would have handed over.
		var loopErr error
		loopDone := make(chan struct{})
		go func() {
			loopErr = d.loop.Shutdown(shutdownCtx)
			d.loop.Close()
			close(loopDone)
		}()
		err := d.server.Shutdown(shutdownCtx)
		d.server.Close()
		<-loopDone
		if err == nil {
			err = loopErr
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("http shutdown: %w", err)
		}
		return nil
	})
	g.Go(func() error { return d.inventory.Run(gctx) })
	g.Go(func() error { d.watchActivity(gctx); return nil })
	if d.lan != nil {
		g.Go(func() error {
			if err := d.lan.Run(gctx); err != nil {
				return fmt.Errorf("LAN discovery: %w", err)
			}
			return nil
		})
		d.log.Info("LAN discovery on", "udp-port", d.lan.Port(), "original-format-wait", d.cfg.LANTimeout)
	}
	if d.p2p != nil {
		g.Go(func() error {
			if err := d.p2p.Run(gctx); err != nil {
				return fmt.Errorf("p2p: %w", err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	d.log.Info("peerix stopped")
	return nil
}

// logStartup says in a few lines what the daemon does: where it listens
// and on which addresses, where the dashboard is, which config file was
// read, what it shares and with whom.
func (d *Daemon) logStartup() {
	cfg := d.cfg
	addr := d.ln.Addr().(*net.TCPAddr)
	configFile := cfg.ConfigFile
	if configFile == "" {
		configFile = "none (flags and defaults only)"
	}
	d.log.Info("peerix serving", "version", Version, "commit", BuildCommit(), "mode", cfg.Mode,
		"listen", addr.String(), "addresses", strings.Join(reachableAt(addr), " "),
		"dashboard", dashboardURL(addr), "config", configFile,
		"store", nixstore.DBPath(cfg.StoreRoot), "state_dir", cfg.StateDir)

	audience := "anyone who can reach " + strings.Join(reachableAt(addr), " ") + " (HTTP /local/ and /nar/)"
	if addr.IP.IsLoopback() {
		audience = "this machine only (--listen is a loopback address)"
	}
	if d.lan != nil {
		audience += ", LAN peers (UDP port " + strconv.Itoa(d.lan.Port()) + ")"
	}
	if d.p2p != nil {
		audience += ", P2P peers over libp2p"
		if cfg.Tracker != "" {
			audience += " (found through " + cfg.Tracker + ")"
		}
	}
	args := []any{"filter", cfg.Filter, "shares", shareRule(cfg), "to", audience}
	if cfg.Mode == "local" && cfg.Filter == "patterns" {
		args = append(args, "why", "local mode applies the deny-list by default (it serves whoever reaches --listen); --filter none shares every path, --listen 127.0.0.1:PORT keeps the cache to this machine")
	}
	d.log.Info("sharing the local store; how many paths is logged once the filter has seen them all", args...)
	if cfg.Filter == "none" && !addr.IP.IsLoopback() {
		d.log.Warn("--filter none on a non-loopback address: every store path, secret-looking ones included, goes to anyone who can reach " +
			addr.String() + "; use --filter patterns, or --listen 127.0.0.1:" + strconv.Itoa(addr.Port))
	}
}

// shareRule says in words which paths the filter lets out.
func shareRule(cfg *config.Serve) string {
	denied := fmt.Sprintf("names on the deny-list (%d built-in patterns: secrets, keys, NixOS system and home-manager files, .drv", len(trust.DefaultPatterns))
	if n := len(cfg.FilterPatterns); n > 0 {
		denied += fmt.Sprintf(", plus %d of --filter-pattern", n)
	}
	denied += ")"
	switch cfg.Filter {
	case "none":
		return "every valid path (no filter, no deny-list)"
	case "patterns":
		return "every valid path but " + denied
	}
	return "paths the upstream " + cfg.Upstream + " has, but " + denied
}

// reachableAt lists the addresses the HTTP listener answers on: the
// machine's interface addresses when it listens on all of them.
func reachableAt(addr *net.TCPAddr) []string {
	port := strconv.Itoa(addr.Port)
	if !addr.IP.IsUnspecified() {
		return []string{net.JoinHostPort(addr.IP.String(), port)}
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return []string{addr.String()}
	}
	v4only := addr.IP.To4() != nil
	var out []string
	for _, a := range ifaddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() || (v4only && ipn.IP.To4() == nil) {
			continue
		}
		out = append(out, net.JoinHostPort(ipn.IP.String(), port))
	}
	if len(out) == 0 {
		return []string{addr.String()}
	}
	return out
}

// dashboardURL is where this machine's browser finds the dashboard (it
// answers loopback callers only).
func dashboardURL(addr *net.TCPAddr) string {
	port := strconv.Itoa(addr.Port)
	switch {
	case addr.IP.IsUnspecified():
		return "http://127.0.0.1:" + port + "/dashboard"
	case addr.IP.IsLoopback():
		return "http://" + net.JoinHostPort(addr.IP.String(), port) + "/dashboard"
	}
	return "none: it answers only loopback callers, and --listen " + addr.String() + " is not a loopback address"
}
