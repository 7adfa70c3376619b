package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

// StatsFile is the name of the stats file in the state dir.
const StatsFile = "stats.json"

// stats are the lifetime totals shown by /api/status and kept in
// stats.json. Prometheus counts the same events for this process only.
type stats struct {
	requests       atomic.Int64
	hits, misses   [nSources]atomic.Int64
	bytesSent      atomic.Int64
	bytesReceived  [nSources]atomic.Int64
	verifyFailures atomic.Int64
	transfers      atomic.Int64
	transfersFail  atomic.Int64

	fmu    sync.Mutex
	filter map[string]int64
	fprom  map[string]prometheus.Counter

	requested, served *topK
}

func newStats() *stats {
	return &stats{
		filter:    map[string]int64{},
		fprom:     map[string]prometheus.Counter{},
		requested: newTopK(topCapacity),
		served:    newTopK(topCapacity),
	}
}

// Counters are the lifetime totals, as /api/status and stats.json carry them.
type Counters struct {
	Requests             int64            `json:"requests"` // binary-cache requests (not the operator's routes)
	Hits                 map[string]int64 `json:"hits"`     // by source, as peerix_cache_hits_total
	Misses               map[string]int64 `json:"misses"`
	BytesSent            int64            `json:"bytes_sent"`     // NAR bytes sent to peers, over HTTP and libp2p
	BytesReceived        map[string]int64 `json:"bytes_received"` // NAR bytes received from peers, by source: lan, p2p
	VerificationFailures int64            `json:"verification_failures"`
	FilterDecisions      map[string]int64 `json:"filter_decisions"`
	Transfers            int64            `json:"transfers"`
	TransfersFailed      int64            `json:"transfers_failed"`
}

func (s *stats) counters() Counters {
	c := Counters{
		Requests:             s.requests.Load(),
		Hits:                 map[string]int64{},
		Misses:               map[string]int64{},
		BytesSent:            s.bytesSent.Load(),
		BytesReceived:        map[string]int64{},
		VerificationFailures: s.verifyFailures.Load(),
		Transfers:            s.transfers.Load(),
		TransfersFailed:      s.transfersFail.Load(),
	}
	for i, name := range sourceNames {
		c.Hits[name] = s.hits[i].Load()
		c.Misses[name] = s.misses[i].Load()
		if i == srcLAN || i == srcP2P {
			c.BytesReceived[name] = s.bytesReceived[i].Load()
		}
	}
	s.fmu.Lock()
	c.FilterDecisions = make(map[string]int64, len(s.filter))
	for k, v := range s.filter {
		c.FilterDecisions[k] = v
	}
	s.fmu.Unlock()
	return c
}

// add adds loaded totals to the running ones.
func (s *stats) add(c Counters) {
	s.requests.Add(c.Requests)
	s.bytesSent.Add(c.BytesSent)
	s.verifyFailures.Add(c.VerificationFailures)
	s.transfers.Add(c.Transfers)
	s.transfersFail.Add(c.TransfersFailed)
	for name, n := range c.Hits {
		if i := sourceIndex(name); i >= 0 {
			s.hits[i].Add(n)
		}
	}
	for name, n := range c.Misses {
		if i := sourceIndex(name); i >= 0 {
			s.misses[i].Add(n)
		}
	}
	for name, n := range c.BytesReceived {
		if i := sourceIndex(name); i >= 0 {
			s.bytesReceived[i].Add(n)
		}
	}
	s.fmu.Lock()
	for k, v := range c.FilterDecisions {
		if _, ok := s.filter[k]; ok || len(s.filter) < maxFilterDecisions {
			s.filter[k] += v
		}
	}
	s.fmu.Unlock()
}

// ObserveCache takes cache.Server's report of one request (set it as
// cache.Server.Observe). Narinfo requests count as hits or misses of the
// local store (/local/) or of the peers (Nix's lookups), NARs fetched
// through peers as hits or misses of their layer (lan or p2p, from the URL).
func (o *Ops) ObserveCache(ev cache.Event) {
	if o == nil {
		return
	}
	ok := ev.Status == 200 || ev.Status == 206
	switch ev.Route {
	case cache.RouteLocalNarInfo, cache.RouteRemoteNarInfo:
		if !store.ValidHash(ev.Hash) {
			return
		}
		src := srcLocal
		if ev.Route == cache.RouteRemoteNarInfo {
			src = srcPeers
		}
		o.stats.requested.add(ev.Hash, 0)
		o.hitOrMiss(src, ok, ev.Status)
	case cache.RouteLocalNAR, cache.RouteRemoteNAR:
		// The bytes themselves were counted as they moved: sent by the
		// upload's Transfer (Instrument), received by the swarm's.
		if ev.Route == cache.RouteRemoteNAR {
			o.hitOrMiss(narSource(ev.URL), ok, ev.Status)
		}
		if ok && ev.Bytes > 0 {
			if h := hashOfNarURL(ev.URL); h != "" {
				o.stats.served.add(h, ev.Bytes)
			}
		}
	}
}

// PeerRequest takes the P2P server's report of one request of a peer: kind
// "narinfo" or "nar", the hash asked for, whether the path was found (and,
// for a NAR, sent whole), and how long the answer took. A narinfo counts as
// a hit or miss of this store, like one asked over HTTP at /local/.
func (o *Ops) PeerRequest(kind, hash string, found bool, took time.Duration) {
	if o == nil {
		return
	}
	rc, status := rP2PNAR, http.StatusOK
	if kind == "narinfo" {
		rc = rP2PNarInfo
	}
	if !found {
		status = http.StatusNotFound
	}
	o.finishRequest(rc, status, took)
	if rc == rP2PNarInfo && store.ValidHash(hash) {
		o.stats.requested.add(hash, 0)
		o.hitOrMiss(srcLocal, found, status)
	}
}

// countBytes counts n bytes of a transfer as sent (way: viaHTTP, viaP2P)
// or received (way: srcLAN, srcP2P), in the totals, /metrics and the
// history.
func (o *Ops) countBytes(direction, way int, n int64) {
	if direction == dirUp {
		o.stats.bytesSent.Add(n)
		o.metrics.bytesSent[way].Add(float64(n))
		o.history.add(time.Now(), seriesSent, n)
		return
	}
	o.stats.bytesReceived[way].Add(n)
	o.metrics.bytesReceived[way].Add(float64(n))
	o.history.add(time.Now(), seriesReceived, n)
}

func (o *Ops) hitOrMiss(src int, ok bool, status int) {
	// The history counts lookups (narinfos), not the NARs that follow them.
	lookup := src == srcLocal || src == srcPeers
	switch {
	case ok:
		o.stats.hits[src].Add(1)
		o.metrics.hits[src].Inc()
		if lookup {
			o.history.add(time.Now(), seriesHits, 1)
		}
	case status == 404:
		o.stats.misses[src].Add(1)
		o.metrics.misses[src].Inc()
		if lookup {
			o.history.add(time.Now(), seriesMisses, 1)
		}
	}
}

// narSource tells a peer NAR URL's layer by its shape: nar/lan/..., nar/p2p/...
func narSource(url string) int {
	switch {
	case strings.HasPrefix(url, "nar/lan/"):
		return srcLAN
	case strings.HasPrefix(url, "nar/p2p/"):
		return srcP2P
	}
	return srcPeers
}

// hashOfNarURL is the hash part a NAR URL names (store.NarRef), "" if
// it names none.
func hashOfNarURL(url string) string {
	ref, err := store.ParseNarURL(url)
	if err != nil {
		return ""
	}
	return ref.Hash
}

// VerificationFailure counts a narinfo or NAR from a peer that the verifier
// refused, and notes it in the activity list.
func (o *Ops) VerificationFailure(peer, what string) {
	if o == nil {
		return
	}
	o.stats.verifyFailures.Add(1)
	o.metrics.verifyFailures.Inc()
	if peer != "" {
		o.Activity(fmt.Sprintf("verification failed: %s from %s", what, shortID(peer)))
	} else {
		o.Activity("verification failed: " + what)
	}
}

// maxFilterDecisions bounds the distinct decision labels; more are "other".
const maxFilterDecisions = 32

// FilterDecision counts one decision of the share filter. decision is one
// of a small fixed set the filter chooses (for example "shared",
// "denied-pattern", "denied-upstream"); it becomes a metric label.
func (o *Ops) FilterDecision(decision string) {
	if o == nil {
		return
	}
	s := o.stats
	s.fmu.Lock()
	if _, ok := s.filter[decision]; !ok && len(s.filter) >= maxFilterDecisions {
		decision = "other"
	}
	s.filter[decision]++
	c := s.fprom[decision]
	if c == nil {
		c = o.metrics.filterDecisions.WithLabelValues(decision)
		s.fprom[decision] = c
	}
	s.fmu.Unlock()
	c.Inc()
}

// topK counts the most frequent keys approximately in bounded space
// (Metwally et al.'s space-saving): a new key replaces the least counted one
// and inherits its count as a possible overestimate.
type topK struct {
	mu    sync.Mutex
	cap   int
	idx   map[string]int
	items []topItem
}

type topItem struct {
	key   string
	count int64
	err   int64 // the count inherited from the key it replaced
	bytes int64
}

// TopEntry is one of the most requested or served paths.
type TopEntry struct {
	Hash  string `json:"hash"`
	Name  string `json:"name,omitempty"` // the store path, when known
	Count int64  `json:"count"`
	Bytes int64  `json:"bytes,omitempty"`
	// Error: Count may be overestimated by up to this much.
	Error int64 `json:"error,omitempty"`
}

func newTopK(capacity int) *topK {
	return &topK{cap: capacity, idx: make(map[string]int, capacity)}
}

func (t *topK) add(key string, bytes int64) {
	t.addN(key, 1, bytes, 0)
}

func (t *topK) addN(key string, n, bytes, errN int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.idx[key]; ok {
		t.items[i].count += n
		t.items[i].bytes += bytes
		return
	}
	key = strings.Clone(key) // do not keep a request's URL alive
	if len(t.items) < t.cap {
		t.idx[key] = len(t.items)
		t.items = append(t.items, topItem{key: key, count: n, bytes: bytes, err: errN})
		return
	}
	m := 0
	for i := range t.items {
		if t.items[i].count < t.items[m].count {
			m = i
		}
	}
	old := t.items[m]
	delete(t.idx, old.key)
	t.idx[key] = m
	t.items[m] = topItem{key: key, count: old.count + n, err: old.count + errN, bytes: bytes}
}

// top returns the n most counted keys, most first.
func (t *topK) top(n int) []TopEntry {
	t.mu.Lock()
	items := slices.Clone(t.items)
	t.mu.Unlock()
	slices.SortFunc(items, func(a, b topItem) int {
		if a.count != b.count {
			if a.count > b.count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.key, b.key)
	})
	out := make([]TopEntry, 0, min(n, len(items)))
	for _, it := range items[:min(n, len(items))] {
		out = append(out, TopEntry{Hash: it.key, Count: it.count, Bytes: it.bytes, Error: it.err})
	}
	return out
}

// savedStats is the content of stats.json.
type savedStats struct {
	Version      int        `json:"version"`
	Saved        time.Time  `json:"saved"`
	Counters     Counters   `json:"counters"`
	TopRequested []TopEntry `json:"top_requested"`
	TopServed    []TopEntry `json:"top_served"`
}

const statsVersion = 1

func (o *Ops) statsPath() string {
	if o == nil || o.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(o.opts.StateDir, StatsFile)
}

// Load adds the totals saved in <state dir>/stats.json to the running ones.
// A missing file is no error. A file that cannot be parsed is renamed to
// stats.json.bad (so the next Save does not destroy the evidence) and
// reported; counting goes on from zero.
func (o *Ops) Load() error {
	path := o.statsPath()
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	var saved savedStats
	if err := json.Unmarshal(data, &saved); err != nil || saved.Version != statsVersion {
		if err == nil {
			err = fmt.Errorf("unknown version %d", saved.Version)
		}
		os.Rename(path, path+".bad")
		return fmt.Errorf("stats %s: %v (moved aside to %s.bad, starting from zero)", path, err, path)
	}
	o.stats.add(saved.Counters)
	for _, e := range saved.TopRequested {
		if store.ValidHash(e.Hash) && e.Count > 0 {
			o.stats.requested.addN(e.Hash, e.Count, e.Bytes, e.Error)
		}
	}
	for _, e := range saved.TopServed {
		if store.ValidHash(e.Hash) && e.Count > 0 {
			o.stats.served.addN(e.Hash, e.Count, e.Bytes, e.Error)
		}
	}
	return nil
}

// Save writes the totals to <state dir>/stats.json atomically (a temporary
// file, synced, renamed over the old one).
func (o *Ops) Save() error {
	path := o.statsPath()
	if path == "" {
		return nil
	}
	o.saveMu.Lock()
	defer o.saveMu.Unlock()
	saved := savedStats{
		Version:      statsVersion,
		Saved:        time.Now().UTC(),
		Counters:     o.stats.counters(),
		TopRequested: o.stats.requested.top(topCapacity),
		TopServed:    o.stats.served.top(topCapacity),
	}
	data, err := json.MarshalIndent(saved, "", "  ")
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(filepath.Dir(path), StatsFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("stats: %w", err)
	}
	return nil
}

// Run saves the stats every SaveInterval until ctx ends, then once more,
// and returns. The daemon should wait for it before exiting.
func (o *Ops) Run(ctx context.Context) {
	if o == nil {
		return
	}
	t := time.NewTicker(SaveInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := o.Save(); err != nil {
				o.log.Warn("saving stats", "err", err)
			}
		case <-ctx.Done():
			if err := o.Save(); err != nil {
				o.log.Warn("saving stats", "err", err)
			}
			return
		}
	}
}
