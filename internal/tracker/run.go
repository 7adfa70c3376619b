package tracker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/peerix/peerix/internal/config"
	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// ShutdownGrace bounds a graceful shutdown after the context ends.
const ShutdownGrace = 5 * time.Second

// openTimeout bounds connecting to (and migrating) a PostgreSQL database at
// start.
const openTimeout = 30 * time.Second

// Tracker is a running `peerix tracker`: registry, relay and HTTP API.
type Tracker struct {
	cfg    *config.Tracker
	log    *slog.Logger
	reg    Registry
	relay  *Relay
	api    *Server
	server *http.Server
	ln     net.Listener
}

// Run runs `peerix tracker` until ctx ends, then shuts down within
// ShutdownGrace. Setup errors (database, ports) are returned at once.
func Run(ctx context.Context, cfg *config.Tracker, log *slog.Logger) error {
	t, err := New(cfg, log)
	if err != nil {
		return err
	}
	return t.Run(ctx)
}

// IsPostgres reports whether db (the --db value) names a PostgreSQL
// database rather than a SQLite file.
func IsPostgres(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// New opens the database, starts the relay and binds the HTTP listener, so
// that configuration and permission errors surface before Run.
func New(cfg *config.Tracker, log *slog.Logger) (*Tracker, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.PeerTTL <= 0 {
		return nil, errors.New("--peer-ttl must be positive")
	}
	t := &Tracker{cfg: cfg, log: log}
	reg, keyPath, err := openRegistry(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("--db: %w", err)
	}
	t.reg = reg
	var key crypto.PrivKey
	if keyPath == "" {
		// No directory of ours to keep it in: a new relay identity per start.
		key, _, err = crypto.GenerateEd25519Key(rand.Reader)
	} else {
		key, err = LoadOrCreateKey(keyPath)
	}
	if err != nil {
		t.reg.Close()
		return nil, fmt.Errorf("relay identity: %w", err)
	}

	t.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.reg.Close()
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	// The relay admits only peers live in the registry; the API tells it
	// of new registrations, so a reservation made while its peer's first
	// announce is under way need not wait for the database.
	adm := NewAdmission(func(ctx context.Context, id peer.ID) (bool, error) { return t.api.Live(ctx, id) }, log.With("part", "relay"))
	t.api = NewServer(t.reg, ServerOptions{
		TTL:        cfg.PeerTTL,
		Relay:      func(host string) *trackerapi.PeerAddrs { return t.relay.Info(host) },
		Registered: adm.Registered,
		Log:        log,
	})
	t.relay, err = StartRelay(key, relayIPs(t.ln.Addr()), cfg.RelayPort, RelayOptions{Admission: adm}, log.With("part", "relay"))
	if err != nil {
		t.ln.Close()
		t.reg.Close()
		return nil, fmt.Errorf("--relay-port %d: %w", cfg.RelayPort, err) // errors say "relay: ..."
	}
	t.server = &http.Server{
		Handler:           t.api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second, // an 8 MiB body at 140 KB/s
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	t.server.RegisterOnShutdown(t.api.EndPolls) // long polls of /v1/index
	return t, nil
}

// openRegistry opens the --db database and says where the relay identity
// lives: next to a SQLite file, nowhere ("") for PostgreSQL.
func openRegistry(db string) (Registry, string, error) {
	if IsPostgres(db) {
		ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
		defer cancel()
		reg, err := OpenPostgres(ctx, db)
		if err != nil {
			return nil, "", fmt.Errorf("PostgreSQL: %w", err)
		}
		return reg, "", nil
	}
	dir := filepath.Dir(db)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, "", err
	}
	reg, err := OpenSQLite(db)
	if err != nil {
		return nil, "", err
	}
	return reg, filepath.Join(dir, IdentityFile), nil
}

// relayIPs: the relay listens where the API does; on every IPv4 and IPv6
// address if the API is bound to a wildcard.
func relayIPs(api net.Addr) []string {
	if a, ok := api.(*net.TCPAddr); ok && a.IP != nil && !a.IP.IsUnspecified() {
		return []string{a.IP.String()}
	}
	return []string{"0.0.0.0", "::"}
}

// Addr is the address the HTTP API listens on.
func (t *Tracker) Addr() net.Addr { return t.ln.Addr() }

// Relay is the tracker's relay host.
func (t *Tracker) Relay() *Relay { return t.relay }

// Run serves until ctx ends, sweeping expired peers every TTL/4.
func (t *Tracker) Run(ctx context.Context) error {
	t.log.Info("tracker listening", "addr", t.ln.Addr().String(), "db", t.cfg.DB,
		"peer_ttl", t.cfg.PeerTTL, "relay", t.relay.ID(), "relay_addrs", relayAddrStrings(t.relay.Addrs()))

	sweepCtx, stopSweep := context.WithCancel(context.Background())
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		t.sweep(sweepCtx)
	}()
	checkpointed := make(chan struct{})
	go func() {
		defer close(checkpointed)
		if db, ok := t.reg.(*SQLite); ok {
			if err := db.RunCheckpoints(sweepCtx); err != nil {
				// The writer checkpoints again (at its default), as
				// before.
				t.log.Warn("background WAL checkpoints stopped", "err", err)
			}
		}
	}()

	served := make(chan error, 1)
	go func() { served <- t.server.Serve(t.ln) }()

	var err error
	select {
	case err = <-served:
		err = fmt.Errorf("tracker HTTP server: %w", err)
	case <-ctx.Done():
		t.log.Info("tracker shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
		if serr := t.server.Shutdown(sctx); serr != nil {
			t.server.Close()
		}
		cancel()
		<-served
	}
	stopSweep()
	<-swept
	<-checkpointed
	return errors.Join(err, t.relay.Close(), t.reg.Close())
}

func (t *Tracker) sweep(ctx context.Context) {
	tick := time.NewTicker(max(t.cfg.PeerTTL/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		n, err := t.api.Sweep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			t.log.Warn("sweeping expired peers", "err", err)
		case n > 0:
			t.log.Debug("swept expired peers", "peers", n, "took", time.Since(start))
		}
	}
}
