package tracker

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/config"
)

// TestRun runs a whole tracker: database in a new directory, relay with a
// persistent identity, API, the sweeper with a 200 ms TTL, and shutdown.
func TestRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sub")
	cfg := &config.Tracker{Listen: "127.0.0.1:0", DB: filepath.Join(dir, "tracker.db"), RelayPort: 0, PeerTTL: 200 * time.Millisecond}

	start := func() (*Tracker, context.CancelFunc, chan error) {
		tr, err := New(cfg, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		return tr, cancel, done
	}
	stop := func(cancel context.CancelFunc, done chan error) {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(ShutdownGrace + time.Second):
			t.Fatal("no shutdown")
		}
	}

	tr, cancel, done := start()
	relayID := tr.Relay().ID()
	if fi, err := os.Stat(filepath.Join(dir, IdentityFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v", err)
	}
	ctx := context.Background()
	c := NewClient("http://"+tr.Addr().String(), newSigner(t).key)
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Relay.PeerID != relayID.String() || len(info.Relay.Addrs) == 0 || info.TTL != cfg.PeerTTL {
		t.Fatalf("info: %+v", info)
	}
	if _, err := c.Announce(ctx, []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1")}); err != nil {
		t.Fatal(err)
	}
	if err := c.Packages(ctx, true, hashes(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	if peers, err := c.Find(ctx, hashN(3)); err != nil || len(peers) != 1 {
		t.Fatalf("find: %v %v", peers, err)
	}
	// Silent for longer than the TTL: gone from reads, and swept.
	deadline := time.Now().Add(5 * time.Second)
	for {
		all, err := findAll(ctx, tr.reg, hashN(3), time.Time{}, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sweeper did not delete the hashes of an expired peer")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if peers, err := c.Peers(ctx); err != nil || len(peers) != 0 {
		t.Fatalf("peers after TTL: %v %v", peers, err)
	}
	stop(cancel, done)

	// Same identity after a restart.
	tr, cancel, done = start()
	if tr.Relay().ID() != relayID {
		t.Fatal("relay identity changed across restarts")
	}
	stop(cancel, done)
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0") // the relay port, taken for TCP
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, cfg := range []*config.Tracker{
		{Listen: "127.0.0.1:0", DB: "postgres://peerix@127.0.0.1:1/tracker?connect_timeout=5", PeerTTL: time.Minute},
		{Listen: "127.0.0.1:0", DB: filepath.Join(dir, "a.db"), PeerTTL: 0},
		{Listen: "256.0.0.1:0", DB: filepath.Join(dir, "b.db"), PeerTTL: time.Minute},
		{Listen: "127.0.0.1:0", DB: filepath.Join(dir, "c.db"), PeerTTL: time.Minute, RelayPort: busy.Addr().(*net.TCPAddr).Port},
	} {
		tr, err := New(cfg, quietLog())
		if err == nil {
			tr.Run(canceled())
			t.Errorf("%+v: no error", cfg)
			continue
		}
		t.Logf("%v", err)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
