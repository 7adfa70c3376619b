package ops

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/peerix/peerix/internal/cache"
)

// Route classes of Instrument: the cache routes as cache.Server names them,
// then the operator's routes.
const (
	rCacheInfo = iota
	rLocalNarInfo
	rRemoteNarInfo
	rLocalNAR
	rRemoteNAR
	rP2PNarInfo // a peer's narinfo query over libp2p (never an HTTP path)
	rP2PNAR     // a peer's NAR request over libp2p
	rHealth
	rMetrics
	rAPI
	rDashboard
	rOther
	nRoutes
)

var routeNames = [nRoutes]string{
	rCacheInfo:     string(cache.RouteCacheInfo),
	rLocalNarInfo:  string(cache.RouteLocalNarInfo),
	rRemoteNarInfo: string(cache.RouteRemoteNarInfo),
	rLocalNAR:      string(cache.RouteLocalNAR),
	rRemoteNAR:     string(cache.RouteRemoteNAR),
	rP2PNarInfo:    "p2p-narinfo",
	rP2PNAR:        "p2p-nar",
	rHealth:        "health",
	rMetrics:       "metrics",
	rAPI:           "api",
	rDashboard:     "dashboard",
	rOther:         "other",
}

// classify names the route of a request path the way cache.Server routes it,
// without allocating. Malformed paths the cache refuses land in their class
// anyway; the status code tells them apart.
func classify(p string) int {
	local := false
	if strings.HasPrefix(p, "/local/") {
		local, p = true, p[len("/local"):]
	}
	switch {
	case p == "/nix-cache-info":
		return rCacheInfo
	case strings.HasPrefix(p, "/nar/"):
		if !local && strings.IndexByte(p[len("/nar/"):], '/') >= 0 {
			return rRemoteNAR
		}
		return rLocalNAR
	case strings.HasSuffix(p, ".narinfo") && strings.IndexByte(p[1:], '/') < 0:
		if local {
			return rLocalNarInfo
		}
		return rRemoteNarInfo
	case local:
		return rOther
	case p == "/health":
		return rHealth
	case p == "/metrics":
		return rMetrics
	case strings.HasPrefix(p, "/api/"):
		return rAPI
	case p == "/dashboard" || strings.HasPrefix(p, "/dashboard/"):
		return rDashboard
	}
	return rOther
}

// isCacheRoute: the binary-cache protocol (over HTTP or libp2p), as opposed
// to the operator's routes.
func isCacheRoute(rc int) bool { return rc <= rP2PNAR }

// Sources of hits, misses and bytes.
const (
	srcLocal = iota // this store, as peers (or anyone at /local/) ask it
	srcPeers        // Nix's narinfo lookups on the peers: the layer is not known yet
	srcLAN          // NARs fetched from LAN peers
	srcP2P          // NARs fetched from P2P peers
	nSources
)

var sourceNames = [nSources]string{"local", "peers", "lan", "p2p"}

// Ways NARs leave this machine: over HTTP (LAN peers, anyone using
// /local/ as a cache) and over libp2p.
const (
	viaHTTP = iota
	viaP2P
	nVias
)

var viaNames = [nVias]string{"http", "p2p"}

// Directions of transfers.
const (
	dirDown = iota // from a peer
	dirUp          // to a peer
	nDirs
)

var dirNames = [nDirs]string{"down", "up"}

// sourceIndex maps a source name to its index, -1 if unknown.
func sourceIndex(s string) int {
	for i, n := range sourceNames {
		if n == s {
			return i
		}
	}
	return -1
}

// Histogram buckets for request durations: narinfo answers take well under
// a millisecond, NAR transfers up to minutes.
var durationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// metrics holds the Prometheus side. Everything on a request's path is
// resolved ahead (per route, per source) or cached (per route and status),
// so observing a request is a few atomic operations.
type metrics struct {
	requests         *prometheus.CounterVec
	requestsByCode   [nRoutes][600]atomic.Pointer[prometheus.Counter]
	durations        [nRoutes]prometheus.Observer
	hits, misses     [nSources]prometheus.Counter
	bytesSent        [nVias]prometheus.Counter
	bytesReceived    [nSources]prometheus.Counter // lan and p2p only
	verifyFailures   prometheus.Counter
	filterDecisions  *prometheus.CounterVec
	transfersStarted [nDirs]prometheus.Counter
	transfersFailed  [nDirs]prometheus.Counter
}

func newMetrics(o *Ops, reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerix_requests_total",
			Help: "HTTP requests answered, by route and status code (\"aborted\": the transfer broke off).",
		}, []string{"route", "code"}),
		filterDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerix_filter_decisions_total",
			Help: "Decisions of the share filter, by outcome.",
		}, []string{"decision"}),
	}
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "peerix_request_duration_seconds",
		Help:    "Time to answer HTTP requests, to the last byte, by route.",
		Buckets: durationBuckets,
	}, []string{"route"})
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_cache_hits_total",
		Help: "Paths found, by source: local = narinfo requests for this store (/local/), peers = this machine's Nix's narinfo lookups on the peers, lan and p2p = NARs fetched from peers.",
	}, []string{"source"})
	misses := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_cache_misses_total",
		Help: "Paths not found (404), by source, as for peerix_cache_hits_total.",
	}, []string{"source"})
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_received_bytes_total",
		Help: "NAR bytes received from peers as they arrive (retries included), by source: lan (HTTP) or p2p (libp2p).",
	}, []string{"source"})
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_sent_bytes_total",
		Help: "NAR bytes of the local store sent to peers as they leave, by way: http (LAN peers and /local/ clients) or p2p (libp2p).",
	}, []string{"via"})
	m.verifyFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "peerix_verification_failures_total",
		Help: "Narinfos or NARs from peers refused by the verifier.",
	})
	started := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_transfers_total",
		Help: "NAR transfers started, by direction: down (from a peer), up (to a peer).",
	}, []string{"direction"})
	failed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "peerix_transfers_failed_total",
		Help: "NAR transfers that ended in an error, by direction.",
	}, []string{"direction"})
	for d := range nDirs {
		m.transfersStarted[d] = started.WithLabelValues(dirNames[d])
		m.transfersFailed[d] = failed.WithLabelValues(dirNames[d])
	}
	for v := range nVias {
		m.bytesSent[v] = sent.WithLabelValues(viaNames[v])
	}
	for rc := range nRoutes {
		m.durations[rc] = durations.WithLabelValues(routeNames[rc])
	}
	for s := range nSources {
		m.hits[s] = hits.WithLabelValues(sourceNames[s])
		m.misses[s] = misses.WithLabelValues(sourceNames[s])
		if s == srcLAN || s == srcP2P {
			m.bytesReceived[s] = received.WithLabelValues(sourceNames[s])
		}
	}

	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "peerix_build_info",
		Help: "Always 1; the labels describe the running peerix.",
	}, []string{"version", "commit", "goversion", "mode"})
	build.WithLabelValues(o.opts.Version, o.opts.Commit, runtime.Version(), o.opts.Mode).Set(1)

	inFlight := func(dir int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "peerix_transfers_in_flight",
			Help:        "NAR transfers in progress, by direction.",
			ConstLabels: prometheus.Labels{"direction": dirNames[dir]},
		}, func() float64 { return float64(o.transfersInFlight(dir)) })
	}
	reg.MustRegister(m.requests, durations, hits, misses, received, sent, m.verifyFailures,
		m.filterDecisions, started, failed, build, inFlight(dirDown), inFlight(dirUp),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peerix_peers_known",
			Help: "Peers known now (LAN and P2P).",
		}, func() float64 { return float64(len(o.peers())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peerix_peers_connected",
			Help: "Peers with a live connection now.",
		}, func() float64 {
			n := 0
			for _, p := range o.peers() {
				if p.Connected {
					n++
				}
			}
			return float64(n)
		}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (o *Ops) metricsHandler() http.Handler {
	return promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{o}})
}

type slogPrinter struct{ o *Ops }

func (p slogPrinter) Println(v ...any) { p.o.log.Warn("metrics", "err", v) }

// Registry is where Ops registers its metrics; the daemon may add its own.
func (o *Ops) Registry() *prometheus.Registry {
	if o == nil {
		return nil
	}
	return o.reg
}

// codeStrings are the status codes as label values, made once.
var codeStrings = func() (t [600]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

const codeAborted = 0 // a handler that panicked (an aborted transfer)

// requestCounter returns the requests_total child for a route and status,
// creating it once.
func (m *metrics) requestCounter(rc, status int) prometheus.Counter {
	if status < 100 || status >= 600 {
		status = codeAborted
	}
	slot := &m.requestsByCode[rc][status]
	if c := slot.Load(); c != nil {
		return *c
	}
	code := codeStrings[status]
	if status == codeAborted {
		code = "aborted"
	}
	c := m.requests.WithLabelValues(routeNames[rc], code)
	slot.Store(&c)
	return c
}

// Instrument wraps the daemon's whole handler: it counts requests by route
// and status, times them, and shows NARs served to peers as transfers. It
// logs nothing and allocates nothing per request beyond pooled state.
func (o *Ops) Instrument(next http.Handler) http.Handler {
	if o == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := classify(r.URL.Path)
		rw := writerPool.Get().(*respWriter)
		*rw = respWriter{ResponseWriter: w, o: o, r: r, rc: rc}
		start := time.Now()
		defer func() {
			rec := recover()
			status := rw.status
			if rec != nil {
				status = codeAborted
			} else if status == 0 {
				status = http.StatusOK
			}
			o.finishRequest(rc, status, time.Since(start))
			if rw.transfer != nil {
				var err error
				if rec != nil {
					err = errAborted
				}
				rw.transfer.Done(err)
			}
			*rw = respWriter{}
			writerPool.Put(rw)
			if rec != nil {
				panic(rec)
			}
		}()
		next.ServeHTTP(rw, r)
	})
}

func (o *Ops) finishRequest(rc, status int, d time.Duration) {
	o.metrics.requestCounter(rc, status).Inc()
	o.metrics.durations[rc].Observe(d.Seconds())
	if isCacheRoute(rc) {
		o.stats.requests.Add(1)
	}
}

var writerPool = sync.Pool{New: func() any { return new(respWriter) }}

// readFromChunk: NAR bodies sent with ReadFrom (sendfile) go out in pieces
// of this size, so that an upload's progress moves while a large file is
// sent, not only once it is all gone.
const readFromChunk = 512 << 10

// respWriter records the status and, for NARs served to peers, the
// progress. It keeps io.ReaderFrom so that file bodies still go out with
// sendfile, and http.Flusher.
type respWriter struct {
	http.ResponseWriter
	o        *Ops
	r        *http.Request
	rc       int
	status   int
	transfer *Transfer
	blocks   bool // the body is in the block format
}

var _ cache.NARCounter = (*respWriter)(nil)

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		if w.rc == rLocalNAR && (code == http.StatusOK || code == http.StatusPartialContent) && w.r.Method == http.MethodGet {
			w.startUpload()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// startUpload shows every NAR of the local store sent over HTTP as a
// transfer: its bytes are counted as they are written.
func (w *respWriter) startUpload() {
	size, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64)
	if err != nil {
		size = -1
	}
	// In the block format the body's bytes are wire bytes; the cache
	// server tells the NAR bytes (CountNAR) and their number.
	w.blocks = w.Header().Get(cache.EncodingHeader) == cache.BlocksEncoding
	if w.blocks {
		if size, err = strconv.ParseInt(w.Header().Get(cache.LengthHeader), 10, 64); err != nil {
			size = -1
		}
	}
	url := strings.TrimPrefix(strings.TrimPrefix(w.r.URL.Path, "/local"), "/")
	peer, _, _ := net.SplitHostPort(w.r.RemoteAddr)
	w.transfer = w.o.StartUpload(hashOfNarURL(url), "http", peer, size, false)
}

// CountNAR implements cache.NARCounter: n NAR bytes of a body in the
// block format went out.
func (w *respWriter) CountNAR(n int64) { w.transfer.Add("", n, 0) }

// count records n bytes of the body written.
func (w *respWriter) count(n int64) {
	if w.blocks {
		w.transfer.Add("", 0, n)
	} else {
		w.transfer.Add("", n, n)
	}
}

func (w *respWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.count(int64(n))
	return n, err
}

// ReadFrom keeps sendfile: net/http's own ReadFrom sees the *os.File (or
// the *io.LimitedReader over it that the NAR writer hands out). During an
// upload it is called a chunk at a time, so progress moves as the file goes.
func (w *respWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok {
		n, err := io.Copy(writerOnly{w}, src)
		return n, err
	}
	if w.transfer == nil {
		return rf.ReadFrom(src)
	}
	// sendfile looks through one *io.LimitedReader only: chunk the one we
	// were given rather than wrap it in another.
	lr, limited := src.(*io.LimitedReader)
	if !limited {
		lr = &io.LimitedReader{R: src, N: 1<<63 - 1}
	}
	var total int64
	for lr.N > 0 {
		part := &io.LimitedReader{R: lr.R, N: min(readFromChunk, lr.N)}
		want := part.N
		n, err := rf.ReadFrom(part)
		lr.N -= n
		total += n
		w.count(n)
		if err != nil || n < want {
			return total, err
		}
	}
	return total, nil
}

func (w *respWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type writerOnly struct{ io.Writer }
