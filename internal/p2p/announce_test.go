package p2p

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

type call struct {
	kind        string // announce, packages, deregister
	full        bool
	add, remove []string
	addrs       []string
}

type fakeRegistry struct {
	calls      chan call
	mu         sync.Mutex
	registered bool // answer of the next announce
	failDereg  bool
	ttl        time.Duration
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{calls: make(chan call, 100), registered: true, ttl: time.Minute}
}

func (r *fakeRegistry) Announce(ctx context.Context, addrs []ma.Multiaddr) (Announced, error) {
	r.mu.Lock()
	reg := r.registered
	r.registered = false
	r.mu.Unlock()
	c := call{kind: "announce"}
	for _, a := range addrs {
		c.addrs = append(c.addrs, a.String())
	}
	r.calls <- c
	return Announced{TTL: r.ttl, ObservedAddr: "1.2.3.4:5", New: reg}, nil
}

func (r *fakeRegistry) Packages(ctx context.Context, full bool, add, remove []string) error {
	r.calls <- call{kind: "packages", full: full, add: slices.Clone(add), remove: slices.Clone(remove)}
	return nil
}

func (r *fakeRegistry) Deregister(ctx context.Context) error {
	r.calls <- call{kind: "deregister"}
	if r.failDereg {
		return errors.New("tracker gone")
	}
	return nil
}

// next returns the next call of kind, skipping heartbeats when looking
// for something else.
func (r *fakeRegistry) next(t *testing.T, kind string) call {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c := <-r.calls:
			if c.kind == kind {
				return c
			}
			if c.kind != "announce" {
				t.Fatalf("got %s %+v while waiting for %s", c.kind, c, kind)
			}
		case <-timeout:
			t.Fatalf("no %s call", kind)
		}
	}
}

type fakePaths struct {
	mu    sync.Mutex
	paths []string
}

func (p *fakePaths) set(hashes ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paths = nil
	for _, h := range hashes {
		p.paths = append(p.paths, "/nix/store/"+h+"-name")
	}
}

func (p *fakePaths) StorePaths(ctx context.Context, fn func(string) error) error {
	p.mu.Lock()
	paths := slices.Clone(p.paths)
	p.mu.Unlock()
	for _, s := range append(paths, "/nix/store/.links", "/nix/store/short") {
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

type announcerRun struct {
	a      *Announcer
	cancel context.CancelFunc
	done   chan struct{}
}

func startAnnouncer(t *testing.T, reg Registry, paths PathLister, dir string, private map[string]bool) *announcerRun {
	t.Helper()
	a := NewAnnouncer(AnnouncerConfig{
		Registry:  reg,
		Paths:     paths,
		Shareable: func(ctx context.Context, h string) bool { return !private[h] },
		Addrs:     func() []ma.Multiaddr { return []ma.Multiaddr{ma.StringCast("/ip4/1.2.3.4/udp/12306/quic-v1")} },
		StateDir:  dir,
		Tracker:   "http://tracker.example",
		PeerID:    "12D3KooWtest",
		Interval:  time.Hour,
		Log:       testLog(t),
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := &announcerRun{a: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		a.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *announcerRun) stop() {
	r.cancel()
	<-r.done
}

func TestAnnouncerFullThenDeltas(t *testing.T) {
	dir := t.TempDir()
	h := []string{
		"00000000000000000000000000000000", "11111111111111111111111111111111",
		"22222222222222222222222222222222", "33333333333333333333333333333333",
	}
	paths := &fakePaths{}
	paths.set(h[0], h[1], h[2])
	reg := newFakeRegistry()
	run := startAnnouncer(t, reg, paths, dir, map[string]bool{h[2]: true})

	c := reg.next(t, "announce")
	if !slices.Equal(c.addrs, []string{"/ip4/1.2.3.4/udp/12306/quic-v1"}) {
		t.Errorf("announced addrs %v", c.addrs)
	}
	c = reg.next(t, "packages")
	if !c.full || !slices.Equal(c.add, []string{h[0], h[1]}) {
		t.Errorf("first packages %+v, want the full shareable set", c)
	}
	for range 100 {
		if run.a.Stats().Announced == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := run.a.Stats(); s.Announced != 2 || s.ObservedAddr != "1.2.3.4:5" {
		t.Errorf("stats %+v", s)
	}

	paths.set(h[1], h[2], h[3])
	run.a.Rescan()
	c = reg.next(t, "packages")
	if c.full || !slices.Equal(c.add, []string{h[3]}) || !slices.Equal(c.remove, []string{h[0]}) {
		t.Errorf("delta %+v", c)
	}
	if fi, err := os.Stat(filepath.Join(dir, AnnouncedFile)); err != nil {
		t.Errorf("state not saved: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %04o, want 0600: what this machine shares is nobody else's business", AnnouncedFile, fi.Mode().Perm())
	}

	run.stop()
	reg.next(t, "deregister")
	if _, err := os.Stat(filepath.Join(dir, AnnouncedFile)); !os.IsNotExist(err) {
		t.Errorf("state kept after deregistering: %v", err)
	}
}

func TestAnnouncerRestart(t *testing.T) {
	dir := t.TempDir()
	h := []string{"00000000000000000000000000000000", "11111111111111111111111111111111", "22222222222222222222222222222222"}
	paths := &fakePaths{}
	paths.set(h[0], h[1])

	// A first run that ends without a goodbye (a crash, or the tracker
	// unreachable at shutdown).
	reg := newFakeRegistry()
	reg.failDereg = true
	run := startAnnouncer(t, reg, paths, dir, nil)
	if c := reg.next(t, "packages"); !c.full {
		t.Fatalf("first packages %+v", c)
	}
	run.stop()

	// The tracker still knows us: only the difference goes out.
	paths.set(h[1], h[2])
	reg = newFakeRegistry()
	reg.registered = false
	reg.failDereg = true
	run = startAnnouncer(t, reg, paths, dir, nil)
	c := reg.next(t, "packages")
	if c.full || !slices.Equal(c.add, []string{h[2]}) || !slices.Equal(c.remove, []string{h[0]}) {
		t.Errorf("after restart: %+v, want a delta", c)
	}
	run.stop()

	// The tracker forgot us (it says the announce registered us anew):
	// the full set.
	reg = newFakeRegistry()
	reg.registered = true
	run = startAnnouncer(t, reg, paths, dir, nil)
	c = reg.next(t, "packages")
	if !c.full || !slices.Equal(c.add, []string{h[1], h[2]}) {
		t.Errorf("tracker without our record: %+v, want the full set", c)
	}
	run.stop()
}

func TestAnnouncerStaleState(t *testing.T) {
	dir := t.TempDir()
	h := "00000000000000000000000000000000"
	paths := &fakePaths{}
	paths.set(h)
	a := NewAnnouncer(AnnouncerConfig{StateDir: dir, Tracker: "t", PeerID: "p", Log: testLog(t)})
	if err := a.saveState(map[string]bool{h: true}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if set, _, ok := a.loadState(); !ok || !set[h] {
		t.Fatalf("fresh state not loaded: %v %v", set, ok)
	}
	old := time.Now().Add(-2 * time.Minute)
	os.Chtimes(filepath.Join(dir, AnnouncedFile), old, old)
	if _, _, ok := a.loadState(); ok {
		t.Error("state older than the TTL was used")
	}
	b := NewAnnouncer(AnnouncerConfig{StateDir: dir, Tracker: "other", PeerID: "p", Log: testLog(t)})
	b.touchState(time.Now())
	if _, _, ok := b.loadState(); ok {
		t.Error("state of another tracker was used")
	}
	os.WriteFile(filepath.Join(dir, AnnouncedFile), []byte("{garbage"), 0o644)
	if _, _, ok := a.loadState(); ok {
		t.Error("garbage state was used")
	}
}

// TestAnnouncerRestartUnchanged: after a restart with nothing new, the
// tracker is sent nothing, and the announcer still says what it knows
// from us (the dashboard's "announced").
func TestAnnouncerRestartUnchanged(t *testing.T) {
	dir := t.TempDir()
	paths := &fakePaths{}
	paths.set("00000000000000000000000000000000", "11111111111111111111111111111111")
	reg := newFakeRegistry()
	reg.failDereg = true
	run := startAnnouncer(t, reg, paths, dir, nil)
	if c := reg.next(t, "packages"); !c.full {
		t.Fatalf("first packages %+v", c)
	}
	run.stop()

	reg = newFakeRegistry()
	reg.registered = false
	reg.failDereg = true
	run = startAnnouncer(t, reg, paths, dir, nil)
	defer run.stop()
	deadline := time.Now().Add(5 * time.Second)
	for run.a.Stats().Announced != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after a restart with nothing new: %+v, want announced 2", run.a.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
