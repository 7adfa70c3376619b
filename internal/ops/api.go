package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/peerix/peerix/internal/cache"
)

// Check is one line of /health.
type Check struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Health is the answer of /health.
type Health struct {
	Status string           `json:"status"` // healthy or degraded
	Checks map[string]Check `json:"checks"`
}

// Health statuses.
const (
	Healthy  = "healthy"
	Degraded = "degraded"
)

// NotApplicable is the detail of a check registered as nil.
const NotApplicable = "not applicable"

// Health runs every check concurrently, each bounded by CheckTimeout, and
// reports degraded if any failed. A result is reused for a second.
func (o *Ops) Health(ctx context.Context) Health {
	o.health.Lock()
	defer o.health.Unlock()
	if o.lastHlth.Status != "" && time.Since(o.lastAt) < healthTTL {
		return o.lastHlth
	}
	checks := o.checks()
	type result struct {
		name string
		c    Check
	}
	results := make(chan result, len(checks))
	for name, fn := range checks {
		go func() { results <- result{name, runCheck(ctx, fn)} }()
	}
	h := Health{Status: Healthy, Checks: make(map[string]Check, len(checks))}
	for range checks {
		r := <-results
		h.Checks[r.name] = r.c
		if !r.c.OK {
			h.Status = Degraded
		}
	}
	o.lastHlth, o.lastAt = h, time.Now()
	return h
}

// checks are Options.Checks plus the built-in state dir check.
func (o *Ops) checks() map[string]func(context.Context) error {
	checks := make(map[string]func(context.Context) error, len(o.opts.Checks)+1)
	for name, fn := range o.opts.Checks {
		checks[name] = fn
	}
	if _, ok := checks["state_dir"]; !ok && o.opts.StateDir != "" {
		dir := o.opts.StateDir
		checks["state_dir"] = func(context.Context) error { return CheckWritable(dir) }
	}
	return checks
}

// runCheck runs one check with CheckTimeout. A check that ignores its
// context is abandoned at the deadline; one that panics fails.
func runCheck(ctx context.Context, fn func(context.Context) error) Check {
	if fn == nil {
		return Check{OK: true, Detail: NotApplicable}
	}
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("check panicked: %v", r)
			}
		}()
		done <- fn(ctx)
	}()
	select {
	case err := <-done:
		if err != nil {
			return Check{Detail: err.Error()}
		}
		return Check{OK: true}
	case <-ctx.Done():
		return Check{Detail: fmt.Sprintf("no answer within %v", CheckTimeout)}
	}
}

// CheckWritable checks that dir is a directory this process can create
// files in, by creating and removing one.
func CheckWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".peerix-write-check-*")
	if err != nil {
		return fmt.Errorf("state dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (o *Ops) serveHealth(w http.ResponseWriter, r *http.Request) {
	// The checks run detached from this request: one impatient client must
	// not fail the cached result for the others.
	h := o.Health(context.WithoutCancel(r.Context()))
	code := http.StatusOK
	if h.Status != Healthy {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

// Status is the answer of /api/status.
type Status struct {
	PeerID            string          `json:"peer_id"`
	Mode              string          `json:"mode"`
	Version           string          `json:"version"`
	Commit            string          `json:"commit,omitempty"`
	Started           time.Time       `json:"started"`
	UptimeS           int64           `json:"uptime_s"`
	Listen            string          `json:"listen"`
	StoreRoot         string          `json:"store_root"`
	StateDir          string          `json:"state_dir"`
	Tracker           string          `json:"tracker,omitempty"`
	Upstream          string          `json:"upstream,omitempty"`
	Filter            string          `json:"filter,omitempty"`
	PublicKey         string          `json:"public_key,omitempty"`
	TrustedPublicKeys []string        `json:"trusted_public_keys,omitempty"`
	Store             *StoreInfo      `json:"store,omitempty"`
	Peers             PeerCounts      `json:"peers"`
	Transfers         []TransferInfo  `json:"transfers"`
	RecentTransfers   []TransferInfo  `json:"recent_transfers"`
	Counters          Counters        `json:"counters"`
	TopRequested      []TopEntry      `json:"top_requested"`
	TopServed         []TopEntry      `json:"top_served"`
	Activity          []ActivityEntry `json:"activity"`
	History           History         `json:"history"`
}

// PeerCounts summarises /api/peers.
type PeerCounts struct {
	Known     int `json:"known"`
	Connected int `json:"connected"`
	LAN       int `json:"lan"`
	P2P       int `json:"p2p"`
}

// activityShown entries of recent activity go into /api/status.
const activityShown = 50

// Status gathers /api/status.
func (o *Ops) Status(ctx context.Context) Status {
	now := time.Now()
	s := Status{
		Mode:              o.opts.Mode,
		Version:           o.opts.Version,
		Commit:            o.opts.Commit,
		Started:           o.started,
		UptimeS:           int64(now.Sub(o.started).Seconds()),
		Listen:            o.opts.Listen,
		StoreRoot:         o.opts.StoreRoot,
		StateDir:          o.opts.StateDir,
		Tracker:           o.opts.Tracker,
		Upstream:          o.opts.Upstream,
		Filter:            o.opts.Filter,
		PublicKey:         o.opts.PublicKey,
		TrustedPublicKeys: o.opts.TrustedPublicKeys,
		Store:             o.store(ctx),
		Counters:          o.stats.counters(),
		TopRequested:      o.named(ctx, o.stats.requested.top(TopN)),
		TopServed:         o.named(ctx, o.stats.served.top(TopN)),
		Activity:          o.recentActivity(activityShown),
		History:           o.history.snapshot(now),
	}
	if o.opts.PeerID != nil {
		s.PeerID = o.opts.PeerID()
	}
	for _, p := range o.peers() {
		s.Peers.Known++
		if p.Connected {
			s.Peers.Connected++
		}
		switch p.Source {
		case "lan":
			s.Peers.LAN++
		case "p2p":
			s.Peers.P2P++
		}
	}
	s.Transfers, s.RecentTransfers = o.transferInfos()
	for _, ts := range [][]TransferInfo{s.Transfers, s.RecentTransfers} {
		for i := range ts {
			if ts[i].StorePath == "" && ts[i].Hash != "" {
				ts[i].StorePath = o.pathName(ctx, ts[i].Hash)
			}
		}
	}
	return s
}

// named fills in store path names.
func (o *Ops) named(ctx context.Context, es []TopEntry) []TopEntry {
	for i := range es {
		es[i].Name = o.pathName(ctx, es[i].Hash)
	}
	return es
}

func (o *Ops) serveStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, o.Status(r.Context()))
}

func (o *Ops) servePeers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, o.peers())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// LocalOnly lets only this machine reach h: the caller's address must be
// loopback (cache.IsLoopback), and the Host header an IP address or
// "localhost", so that a web page cannot reach the API through DNS
// rebinding (a name of its own that it points at 127.0.0.1). Others get 403.
func LocalOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cache.IsLoopback(r) {
			http.Error(w, "only from this machine", http.StatusForbidden)
			return
		}
		if !localHost(r.Host) {
			http.Error(w, "use an address such as http://127.0.0.1:PORT, not a host name", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// localHost accepts Host headers that no foreign DNS name can be: IP
// literals and localhost.
func localHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if net.ParseIP(host) != nil {
		return true
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "" || host == "localhost" || strings.HasSuffix(host, ".localhost")
}
