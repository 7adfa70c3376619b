package trust

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// Defaults of the upstream cache, the stand-in for "public".
const (
	DefaultUpstream          = "https://cache.nixos.org"
	DefaultUpstreamKeyName   = "cache.nixos.org-1"
	DefaultUpstreamPublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
)

// maxUpstreamNarInfo bounds an upstream narinfo body. go-nix's parser takes
// lines up to 1 MiB; real narinfos are a few KiB, those of paths with
// thousands of references some hundred.
const maxUpstreamNarInfo = 1 << 20

// UpstreamKey works out which public key proves that the upstream has a path,
// from the options shared by Filter and Verifier:
//
//   - publicKey ("name:base64"), if given, is the key; keyName, if also
//     given, must be its name;
//   - else the key is named keyName, or DefaultUpstreamKeyName when keyName is
//     empty and upstreamURL is the default upstream (or empty);
//   - a key of that name among trusted ("name:base64" entries, e.g. Nix's
//     trusted-public-keys) is taken; else, for DefaultUpstreamKeyName, the
//     built-in DefaultUpstreamPublicKey.
//
// It returns nil when no key is known (a custom upstream without a key):
// then the filter checks every path with a HEAD, and the verifier accepts the
// upstream's narinfos on the strength of the configured URL alone. A name
// without a key never counts: a signature is only believed when it verifies.
func UpstreamKey(upstreamURL, keyName, publicKey string, trusted []string) (*signature.PublicKey, error) {
	if publicKey != "" {
		pk, err := signing.ParsePublicKey(publicKey)
		if err != nil {
			return nil, fmt.Errorf("upstream %w", err)
		}
		if keyName != "" && keyName != pk.Name {
			return nil, fmt.Errorf("upstream key name %q differs from the name of the upstream public key %q", keyName, pk.Name)
		}
		return &pk, nil
	}
	if keyName == "" {
		u := strings.TrimRight(upstreamURL, "/")
		if u != "" && u != DefaultUpstream {
			return nil, nil
		}
		keyName = DefaultUpstreamKeyName
	}
	keys, err := signing.ParsePublicKeys(trusted)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k.Name == keyName {
			return &k, nil
		}
	}
	if keyName == DefaultUpstreamKeyName {
		pk, err := signing.ParsePublicKey(DefaultUpstreamPublicKey)
		if err != nil {
			panic(err) // a constant
		}
		return &pk, nil
	}
	return nil, nil
}

// newHTTPClient is the client for upstream requests when none is given.
// Requests carry their own deadline through their context.
func newHTTPClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}}
}

// parseUpstreamNarInfo parses an upstream narinfo body for the path whose
// hash part is hash and checks what the filter and verifier rely on: the
// right store path and a sha256 NarHash with a NarSize.
func parseUpstreamNarInfo(body []byte, hash string) (*narinfo.NarInfo, error) {
	if len(body) > maxUpstreamNarInfo {
		return nil, errors.New("narinfo too large")
	}
	ni, err := store.ParseNarInfo(body)
	if err != nil {
		return nil, err
	}
	if err := store.CheckNarInfo(ni, hash); err != nil {
		return nil, err
	}
	return ni, nil
}

// hashOfStorePath returns the hash part of an absolute store path
// ("/nix/store/<hash>-<name>"), or "" if p is not of that form.
func hashOfStorePath(p string) string {
	_, base, ok := cutLast(p, "/")
	if !ok || !strings.HasPrefix(p, "/") || len(base) < store.HashLen+2 || base[store.HashLen] != '-' {
		return ""
	}
	if h := base[:store.HashLen]; store.ValidHash(h) {
		return h
	}
	return ""
}

// nameOfStorePath returns the name of an absolute store path (what follows
// "<hash>-"), or "" if p is not of that form.
func nameOfStorePath(p string) string {
	if hashOfStorePath(p) == "" {
		return ""
	}
	_, base, _ := cutLast(p, "/")
	return base[store.HashLen+1:]
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// hashOfNarURL is the store hash part a NAR URL names (store.NarRef);
// anything else is an error wrapping store.ErrBadRequest. It is the
// default of FilterOptions.HashOfURL.
func hashOfNarURL(u string) (string, error) {
	ref, err := store.ParseNarURL(u)
	if err != nil {
		return "", err
	}
	return ref.Hash, nil
}

// memo remembers answers by key until they expire, runs at most one fetch
// per key at a time (concurrent callers share it) and at most cap(sem)
// fetches in all.
type memo[V any] struct {
	sem        chan struct{}
	base       context.Context // fetches run under it, not under a caller's context
	maxEntries int

	mu      sync.Mutex
	entries map[string]memoEntry[V]
	flights map[string]*flight[V]
	dirty   bool // entries changed since the last markClean
}

type memoEntry[V any] struct {
	v   V
	exp time.Time
}

type flight[V any] struct {
	done chan struct{}
	v    V
}

func newMemo[V any](base context.Context, concurrency, maxEntries int) *memo[V] {
	return &memo[V]{
		sem:        make(chan struct{}, concurrency),
		base:       base,
		maxEntries: maxEntries,
		entries:    make(map[string]memoEntry[V]),
		flights:    make(map[string]*flight[V]),
	}
}

// get returns the remembered value for key, or waits for a fetch of it. The
// fetch runs detached from ctx (a caller that gives up does not cancel it
// for the others, and its answer is remembered) and returns the value and
// how long to keep it (<= 0: not at all). hit tells whether the value came
// from memory. If ctx ends first, get returns ctx's error.
func (m *memo[V]) get(ctx context.Context, key string, fetch func(ctx context.Context) (V, time.Duration)) (v V, hit bool, err error) {
	m.mu.Lock()
	if e, ok := m.entries[key]; ok && time.Now().Before(e.exp) {
		m.mu.Unlock()
		return e.v, true, nil
	}
	// An expired entry stays until the fetch replaces it: peek serves it
	// meanwhile.
	f := m.startLocked(key, 0, fetch)
	m.mu.Unlock()
	select {
	case <-f.done:
		return f.v, false, nil
	case <-ctx.Done():
		return v, false, ctx.Err()
	}
}

// peek returns the value remembered for key, fresh or expired, without
// waiting. Unless it is fresh, a fetch runs in the background, as get
// would run it (one per key at a time), starting after a pause of after:
// the caller's answer leaves before the fetch costs anything. ok is false
// when nothing is remembered for key.
func (m *memo[V]) peek(key string, after time.Duration, fetch func(ctx context.Context) (V, time.Duration)) (v V, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[key]
	if ok && time.Now().Before(e.exp) {
		return e.v, true
	}
	m.startLocked(key, after, fetch)
	return e.v, ok
}

// startLocked returns the fetch of key in flight, starting one (after a
// pause of after) if there is none. Called with m.mu held.
func (m *memo[V]) startLocked(key string, after time.Duration, fetch func(ctx context.Context) (V, time.Duration)) *flight[V] {
	f := m.flights[key]
	if f == nil {
		f = &flight[V]{done: make(chan struct{})}
		m.flights[key] = f
		if after > 0 {
			time.AfterFunc(after, func() { m.run(key, f, fetch) })
		} else {
			go m.run(key, f, fetch)
		}
	}
	return f
}

func (m *memo[V]) run(key string, f *flight[V], fetch func(ctx context.Context) (V, time.Duration)) {
	var ttl time.Duration
	select {
	case m.sem <- struct{}{}:
		f.v, ttl = fetch(m.base)
		<-m.sem
	case <-m.base.Done():
		f.v, ttl = fetch(m.base) // sees the closed context and fails at once
	}
	m.mu.Lock()
	if ttl > 0 {
		m.putLocked(key, f.v, time.Now().Add(ttl))
	}
	delete(m.flights, key)
	m.mu.Unlock()
	close(f.done)
}

// put remembers v for key until exp.
func (m *memo[V]) put(key string, v V, exp time.Time) {
	m.mu.Lock()
	m.putLocked(key, v, exp)
	m.mu.Unlock()
}

func (m *memo[V]) putLocked(key string, v V, exp time.Time) {
	if _, ok := m.entries[key]; !ok && len(m.entries) >= m.maxEntries {
		now := time.Now()
		for k, e := range m.entries {
			if !now.Before(e.exp) {
				delete(m.entries, k)
			}
		}
		// Still full: drop an arbitrary eighth (map order is random enough).
		for k := range m.entries {
			if len(m.entries) < m.maxEntries-m.maxEntries/8 {
				break
			}
			delete(m.entries, k)
		}
	}
	m.entries[key] = memoEntry[V]{v: v, exp: exp}
	m.dirty = true
}

// snapshot returns the unexpired entries keep accepts, and clears the dirty
// mark; changed tells whether anything changed since the last snapshot.
func (m *memo[V]) snapshot(keep func(V) bool) (entries map[string]memoEntry[V], changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	entries = make(map[string]memoEntry[V], len(m.entries))
	for k, e := range m.entries {
		if now.Before(e.exp) && keep(e.v) {
			entries[k] = e
		}
	}
	changed, m.dirty = m.dirty, false
	return entries, changed
}

func (m *memo[V]) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// Health is the state of the upstream as the filter or verifier saw it.
type Health struct {
	Upstream string `json:"upstream"`
	// Reachable is false once the last FailuresForUnhealthy requests to the
	// upstream all failed (network error, timeout, or a status other than
	// 200 and 404). The filter then shares nothing new and the verifier
	// accepts only what is signed by a trusted key; nothing answers Nix 5xx.
	Reachable           bool      `json:"reachable"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	LastError           string    `json:"last_error,omitempty"`
	LastSuccess         time.Time `json:"last_success,omitzero"`
	LastFailure         time.Time `json:"last_failure,omitzero"`
}

// healthTracker counts consecutive upstream failures and logs the moments
// the upstream is lost and found again.
type healthTracker struct {
	upstream  string
	what      string // "filter" or "verifier", for the log
	threshold int
	log       *slog.Logger

	mu          sync.Mutex
	consecutive int
	lastErr     string
	lastOK      time.Time
	lastFail    time.Time
}

func (h *healthTracker) ok() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.consecutive >= h.threshold {
		h.log.Info("upstream reachable again", "part", h.what, "upstream", h.upstream)
	}
	h.consecutive = 0
	h.lastOK = time.Now()
}

func (h *healthTracker) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.consecutive++
	h.lastErr = err.Error()
	h.lastFail = time.Now()
	if h.consecutive == h.threshold {
		msg := "upstream unreachable: sharing no path whose upstream status is not known"
		if h.what == "verifier" {
			msg = "upstream unreachable: peers' paths not signed by a trusted key are refused"
		}
		h.log.Warn(msg, "part", h.what, "upstream", h.upstream, "failures", h.consecutive, "err", err)
	}
}

func (h *healthTracker) health() Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Health{
		Upstream:            h.upstream,
		Reachable:           h.consecutive < h.threshold,
		ConsecutiveFailures: h.consecutive,
		LastError:           h.lastErr,
		LastSuccess:         h.lastOK,
		LastFailure:         h.lastFail,
	}
}

// drainClose reads a little of body so the connection can be reused, and
// closes it.
func drainClose(body io.ReadCloser) {
	io.CopyN(io.Discard, body, 4<<10)
	body.Close()
}
