// Package cache serves Nix's HTTP binary-cache protocol: nix-cache-info,
// <hash>.narinfo and NARs, for the local store (to anyone, at /local/ and
// /nar/) and for paths found on peers (to this machine's own Nix only).
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/compress"
	"github.com/peerix/peerix/internal/store"
)

// MissFloor is the least time a miss answered to a peer takes, counted from
// when its request arrived: a path the filter keeps private costs a little
// more work than an absent one (its record is read and judged), and that
// difference must not tell a peer the path is here. Loopback callers (this
// machine's Nix) are not delayed. A variable for tests.
var MissFloor = 2 * time.Millisecond

// PadMiss waits until MissFloor has passed since start (or ctx ends).
func PadMiss(ctx context.Context, start time.Time) {
	d := time.Until(start.Add(MissFloor))
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// MaxURILength bounds the request target; every legitimate URL is far
// shorter (a NAR URL of a peer is a few hundred bytes at most).
const MaxURILength = 1024

// Header values set on every response, shared (net/http only reads them).
var (
	narInfoContentType = []string{"text/x-nix-narinfo"}
	narContentType     = []string{"application/x-nix-nar"}
	acceptRanges       = []string{"bytes"}
	blocksEncoding     = []string{BlocksEncoding}
)

// A peer that takes the block format of internal/compress (zstd block by
// block where that is faster) says so in AcceptEncodingHeader; a NAR sent
// so carries EncodingHeader and no Content-Length (Range and
// Content-Range still count NAR bytes). Custom headers, not
// Content-Encoding: the range is of the NAR, not of the wire bytes, and
// neither Nix nor an HTTP client library ever sees them.
const (
	AcceptEncodingHeader = "X-Peerix-Accept-Encoding"
	EncodingHeader       = "X-Peerix-Encoding"
	BlocksEncoding       = "zstd-blocks"
	// LengthHeader: the NAR bytes a body in the block format holds.
	LengthHeader = "X-Peerix-Length"
)

// NARCounter is implemented by a ResponseWriter that wants to know how many
// NAR bytes of a body in the block format went out (it sees only the wire
// bytes): the ops middleware's, for upload progress.
type NARCounter interface{ CountNAR(n int64) }

// Server is the binary-cache HTTP handler.
type Server struct {
	// Local is the machine's own store as it may be shared (filtered and
	// signed). Required.
	Local store.Store
	// Remote finds paths on peers; nil when no peers are looked for.
	Remote store.Store
	// StoreDir and Priority go into nix-cache-info.
	StoreDir string
	Priority int
	// Summary, if set, serves /local/summary: the summary of what this
	// machine shares, for its LAN neighbours (internal/share).
	Summary http.Handler
	// Next serves every path that is not part of the cache protocol
	// (health, metrics, dashboard, API); nil answers 404.
	Next http.Handler
	Log  *slog.Logger
	// Observe, if set, is told about every cache request: which route, the
	// outcome status and the bytes of NAR sent.
	Observe func(ev Event)

	initOnce sync.Once
	rendered *store.NarInfoMemo[renderedNarInfo]
	closures chan struct{} // closure answers being built at once
}

// init makes what the Server keeps between requests.
func (s *Server) init() {
	s.rendered = store.NewNarInfoMemo[renderedNarInfo](maxRendered)
	s.closures = make(chan struct{}, closureSlots)
}

// Route names the kind of cache request, for metrics and logs.
type Route string

// The cache routes.
const (
	RouteCacheInfo     Route = "cache-info"
	RouteLocalNarInfo  Route = "local-narinfo"
	RouteRemoteNarInfo Route = "remote-narinfo"
	RouteLocalNAR      Route = "local-nar"
	RouteRemoteNAR     Route = "remote-nar"
	RouteSummary       Route = "summary"
	RouteLocalClosure  Route = "local-closure"
)

// Event describes one served cache request.
type Event struct {
	Route  Route
	Hash   string // narinfo requests
	URL    string // NAR requests
	Status int
	Bytes  int64 // NAR bytes written
}

// ServeHTTP routes a request. Routing is by hand: net/http's ServeMux can
// neither express "/{hash}.narinfo" nor refuse "..", which it redirects.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(r.RequestURI) > MaxURILength {
		http.Error(w, "request URI too long", http.StatusRequestURITooLong)
		return
	}
	p := r.URL.Path
	route, arg, ok := s.route(p)
	if !ok {
		if s.Next != nil && cleanPath(r) {
			s.Next.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
		return
	}
	if !cleanPath(r) {
		http.Error(w, "malformed path", http.StatusBadRequest)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	remote := route == RouteRemoteNarInfo || route == RouteRemoteNAR || (route == RouteCacheInfo && p == "/nix-cache-info")
	if remote && !IsLoopback(r) {
		http.Error(w, "only this machine's Nix may use this route; peers use /local/", http.StatusForbidden)
		return
	}
	switch route {
	case RouteCacheInfo:
		s.serveCacheInfo(w)
	case RouteLocalNarInfo:
		s.serveNarInfo(w, r, route, s.Local, arg)
	case RouteRemoteNarInfo:
		s.serveNarInfo(w, r, route, s.Remote, arg)
	case RouteLocalNAR:
		s.serveNAR(w, r, route, s.Local, arg)
	case RouteRemoteNAR:
		s.serveNAR(w, r, route, s.Remote, arg)
	case RouteLocalClosure:
		s.serveClosure(w, r, arg)
	case RouteSummary:
		if s.Summary == nil {
			http.NotFound(w, r)
			return
		}
		s.Summary.ServeHTTP(w, r)
	}
}

// Fast reports whether a path is one of the routes a lean HTTP loop may
// serve (internal/httploop): the local store's narinfos and NARs and
// nix-cache-info, which answer from the local store without waiting.
// Routes that wait for peers stay with net/http, which ends a request's
// context when its client goes away.
func (s *Server) Fast(path string) bool {
	route, _, ok := s.route(path)
	return ok && (route == RouteLocalNarInfo || route == RouteLocalNAR || route == RouteCacheInfo)
}

// RequestHeaders are the request headers the routes Fast accepts read.
var RequestHeaders = []string{"Range", AcceptEncodingHeader}

// route classifies a path. For narinfo routes arg is the hash part, for NAR
// routes the NAR URL as a narinfo names it ("nar/...").
func (s *Server) route(p string) (route Route, arg string, ok bool) {
	local := false
	if strings.HasPrefix(p, "/local/") {
		local, p = true, p[len("/local"):] // keeps the "/", allocates nothing
	}
	switch {
	case p == "/nix-cache-info":
		return RouteCacheInfo, "", true
	case local && p == "/summary":
		return RouteSummary, "", true
	case strings.HasPrefix(p, "/nar/"):
		url := p[1:]
		// A local NAR URL is one path segment under nar/; peers' NAR URLs
		// have more (nar/lan/..., nar/p2p/...) and are never served from /local/.
		if strings.Contains(url[len("nar/"):], "/") {
			if local {
				return RouteLocalNAR, "", true // refused by the local store's URL check
			}
			return RouteRemoteNAR, url, true
		}
		return RouteLocalNAR, url, true
	case local && strings.HasSuffix(p, ClosureSuffix) && strings.Count(p, "/") == 1:
		return RouteLocalClosure, strings.TrimSuffix(p[1:], ClosureSuffix), true
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		hash := strings.TrimSuffix(p[1:], ".narinfo")
		if local {
			return RouteLocalNarInfo, hash, true
		}
		return RouteRemoteNarInfo, hash, true
	}
	return "", "", false
}

// cleanPath refuses what no legitimate cache URL contains: percent-encoding
// (it could hide "/" or NUL), "..", empty segments, control bytes.
func cleanPath(r *http.Request) bool {
	raw := r.URL.EscapedPath()
	if r.URL.RawPath != "" || strings.ContainsAny(raw, "%\\") {
		return false
	}
	if strings.Contains(raw, "//") || strings.Contains(raw, "/./") || strings.Contains(raw, "/../") ||
		strings.HasSuffix(raw, "/..") || strings.HasSuffix(raw, "/.") {
		return false
	}
	for i := 0; i < len(r.URL.Path); i++ {
		if c := r.URL.Path[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// IsLoopback reports whether the request came from this machine.
func IsLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) serveCacheInfo(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	fmt.Fprintf(w, "StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", s.StoreDir, s.Priority)
}

func (s *Server) serveNarInfo(w http.ResponseWriter, r *http.Request, route Route, st store.Store, hash string) {
	status := s.narInfo(w, r, route, st, hash)
	s.observe(Event{Route: route, Hash: hash, Status: status})
}

func (s *Server) narInfo(w http.ResponseWriter, r *http.Request, route Route, st store.Store, hash string) int {
	if !store.ValidHash(hash) {
		http.Error(w, "invalid store path hash", http.StatusBadRequest)
		return http.StatusBadRequest
	}
	if st == nil {
		http.NotFound(w, r)
		return http.StatusNotFound
	}
	start := time.Now()
	ni, err := st.NarInfo(r.Context(), hash)
	if err != nil {
		status := s.errorStatus(err)
		if route == RouteRemoteNarInfo && status >= 500 {
			// A 5xx switches the whole substituter off in Nix; "the peers
			// failed us" is, to Nix, "not here".
			status = http.StatusNotFound
		}
		s.logError(r, err, status)
		s.padMiss(r, start, status)
		http.Error(w, http.StatusText(status), status)
		return status
	}
	var text renderedNarInfo
	if route == RouteLocalNarInfo {
		text = s.renderLocal(hash, ni)
	} else {
		text = render(ni)
	}
	h := w.Header()
	h["Content-Type"] = narInfoContentType
	h["Content-Length"] = text.length
	if r.Method != http.MethodHead {
		w.Write(text.body)
	}
	return http.StatusOK
}

// renderedNarInfo is a narinfo response: the body, and its length as the
// Content-Length header's value.
type renderedNarInfo struct {
	body   []byte
	length []string
}

func render(ni *narinfo.NarInfo) renderedNarInfo {
	body := AppendNarInfo(make([]byte, 0, 1024), ni)
	return renderedNarInfo{body: body, length: []string{strconv.Itoa(len(body))}}
}

// renderLocal renders a narinfo of the local store once for as long as the
// store hands out the same narinfo (store.NarInfoMemo says why that is
// never stale). The store is still asked on every request, so a path
// deleted or no longer shared is answered as such; only the rendering is
// saved. Peers' narinfos are new on every lookup and rendered each time.
func (s *Server) renderLocal(hash string, ni *narinfo.NarInfo) renderedNarInfo {
	s.initOnce.Do(s.init)
	if text, ok := s.rendered.Get(hash, ni); ok {
		return text
	}
	text := render(ni)
	s.rendered.Put(hash, ni, text)
	return text
}

// maxRendered bounds the rendered narinfos remembered: one a path, about
// 2 KiB each with the narinfo the entry keeps alive.
const maxRendered = 16 << 10

func (s *Server) serveNAR(w http.ResponseWriter, r *http.Request, route Route, st store.Store, url string) {
	status, n := s.nar(w, r, st, url)
	s.observe(Event{Route: route, URL: url, Status: status, Bytes: n})
}

func (s *Server) nar(w http.ResponseWriter, r *http.Request, st store.Store, url string) (status int, sent int64) {
	start := time.Now()
	if st == nil || url == "" {
		http.NotFound(w, r)
		return http.StatusNotFound, 0
	}
	rng, err := parseRange(r.Header.Get("Range"))
	if errors.Is(err, errUnsatisfiable) {
		return s.rangeNotSatisfiable(w, r, start, st, url), 0
	}
	if err != nil {
		// RFC 9110: an unparseable Range is ignored.
		rng = byteRange{start: 0, end: -1}
	}
	if rng.suffix > 0 {
		// bytes=-N needs the size before the offset; Nix never asks this,
		// so learning the size costs one extra open.
		size, err := narSize(r.Context(), st, url)
		if err != nil {
			return s.narError(w, r, start, err), 0
		}
		rng = byteRange{start: max(0, size-rng.suffix), end: -1}
	}
	nar, err := st.NAR(r.Context(), url, rng.start)
	if errors.Is(err, store.ErrOffset) {
		return s.rangeNotSatisfiable(w, r, start, st, url), 0
	}
	if err != nil {
		return s.narError(w, r, start, err), 0
	}
	defer nar.Close()

	if rng.start >= nar.Size && rng.start > 0 {
		return s.rangeNotSatisfiable(w, r, start, st, url), 0
	}
	if rng.end < 0 || rng.end >= nar.Size {
		rng.end = nar.Size - 1
	}
	length := rng.end - rng.start + 1
	var src io.Reader = nar
	if rng.start+length < nar.Size {
		src = io.LimitReader(nar, length)
	}
	// A peer (never Nix, which does not ask) may take the block format,
	// compressed block by block where that is faster than raw.
	blocks := r.Header.Get(AcceptEncodingHeader) == BlocksEncoding && r.Method == http.MethodGet
	h := w.Header()
	// Canonical keys and shared values: no allocation but the length.
	h["Content-Type"] = narContentType
	h["Accept-Ranges"] = acceptRanges
	if blocks {
		h[EncodingHeader] = blocksEncoding
		h[LengthHeader] = []string{strconv.FormatInt(length, 10)}
	} else {
		h["Content-Length"] = []string{strconv.FormatInt(length, 10)}
	}
	status = http.StatusOK
	if length < nar.Size {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.start, rng.end, nar.Size))
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return status, 0
	}
	if blocks {
		var counted func(int64)
		if c, ok := w.(NARCounter); ok {
			counted = c.CountNAR
		}
		sent, err = compress.Copy(w, src, length, counted)
	} else {
		sent, err = io.Copy(w, src)
	}
	if err == nil && sent != length {
		err = fmt.Errorf("NAR ended after %d of %d bytes", sent, length)
	}
	if err != nil {
		if r.Context().Err() == nil {
			s.log().Warn("NAR transfer aborted", "url", url, "sent", sent, "err", err)
		}
		// Abort the connection: Nix must see a broken transfer, never a
		// complete-looking short or chunk-terminated one.
		panic(http.ErrAbortHandler)
	}
	return status, sent
}

// narSize learns the size of a NAR by opening it.
func narSize(ctx context.Context, st store.Store, url string) (int64, error) {
	n, err := st.NAR(ctx, url, 0)
	if err != nil {
		return 0, err
	}
	n.Close()
	return n.Size, nil
}

// rangeNotSatisfiable answers 416 with the NAR's size, as RFC 9110 asks, or
// the store's error if the NAR itself is not there.
func (s *Server) rangeNotSatisfiable(w http.ResponseWriter, r *http.Request, start time.Time, st store.Store, url string) int {
	size, err := narSize(r.Context(), st, url)
	if err != nil {
		return s.narError(w, r, start, err)
	}
	w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
	http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
	return http.StatusRequestedRangeNotSatisfiable
}

func (s *Server) narError(w http.ResponseWriter, r *http.Request, start time.Time, err error) int {
	status := s.errorStatus(err)
	s.logError(r, err, status)
	s.padMiss(r, start, status)
	http.Error(w, http.StatusText(status), status)
	return status
}

// padMiss holds a 404 to a peer until MissFloor has passed since start
// (see MissFloor).
func (s *Server) padMiss(r *http.Request, start time.Time, status int) {
	if status == http.StatusNotFound && !IsLoopback(r) {
		PadMiss(r.Context(), start)
	}
}

// errorStatus maps store errors to HTTP: absent and refused paths look the
// same from outside (404), malformed requests are 400, the rest 500.
func (s *Server) errorStatus(err error) int {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrRefused):
		return http.StatusNotFound
	case errors.Is(err, store.ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, context.Canceled):
		return 499 // the client went away; nobody reads this status
	}
	return http.StatusInternalServerError
}

func (s *Server) logError(r *http.Request, err error, status int) {
	if status >= 500 && status != 499 {
		s.log().Error("cache request failed", "path", r.URL.Path, "err", err)
	} else {
		s.log().Debug("cache request", "path", r.URL.Path, "status", status, "err", err)
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return discardLog
	}
	return s.Log
}

var discardLog = slog.New(slog.DiscardHandler)

func (s *Server) observe(ev Event) {
	if s.Observe != nil {
		s.Observe(ev)
	}
}

// byteRange is one HTTP byte range: start..end inclusive (end -1: to the
// end), or the last suffix bytes.
type byteRange struct {
	start, end, suffix int64
}

// errUnsatisfiable: a well-formed range no byte can satisfy (bytes=-0).
var errUnsatisfiable = errors.New("unsatisfiable range")

// parseRange parses a single-range "bytes=" header. Several ranges are
// answered with the whole NAR, as RFC 9110 allows.
func parseRange(h string) (byteRange, error) {
	full := byteRange{start: 0, end: -1}
	if h == "" {
		return full, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return full, errors.New("unsupported range")
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return full, errors.New("malformed range")
	}
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return full, errors.New("malformed suffix range")
		}
		if n == 0 {
			return full, errUnsatisfiable
		}
		return byteRange{suffix: n, end: -1}, nil
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return full, errors.New("malformed range start")
	}
	end := int64(-1)
	if last != "" {
		end, err = strconv.ParseInt(last, 10, 64)
		if err != nil || end < start {
			return full, errors.New("malformed range end")
		}
	}
	return byteRange{start: start, end: end}, nil
}
