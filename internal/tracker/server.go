package tracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/store"
	api "github.com/peerix/peerix/internal/tracker/trackerapi"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// TTL: a peer is live while its last announce is younger. Required.
	TTL time.Duration
	// Relay returns the relay to advertise in /v1/info for a request that
	// came in with the given Host header; nil if the tracker runs none.
	Relay func(reqHost string) *api.PeerAddrs
	// Registered, if set, is told of every peer an announce made live
	// (the relay's admission waits for it).
	Registered func(peerID peer.ID)
	// Limits are the quotas and rate limits; the zero value is
	// DefaultLimits.
	Limits Limits
	// Now is the clock; time.Now if nil. Tests set it (see fakeClock).
	Now func() time.Time
	// Log; slog.Default() if nil.
	Log *slog.Logger
}

// Server is the tracker's HTTP API (docs/protocol.md section 3).
type Server struct {
	reg        Registry
	id         string // the tracker ID writes are signed for
	ttl        time.Duration
	relay      func(string) *api.PeerAddrs
	registered func(peer.ID)
	lim        Limits
	now        func() time.Time
	log        *slog.Logger
	mux        *http.ServeMux
	idx        *serverIndex // GET /v1/index (index.go)
	holders    holderCache  // candidates of popular hashes (select.go)
	descs      descCache    // peers described lately (desccache.go)

	netReads, netWrites, peerWrites *buckets
	bodies                          *bodyBudget
}

// NewServer returns the /v1 API over reg.
func NewServer(reg Registry, o ServerOptions) *Server {
	s := &Server{reg: reg, id: reg.TrackerID(), ttl: o.TTL, relay: o.Relay, registered: o.Registered,
		lim: o.Limits.withDefaults(), now: o.Now, log: o.Log}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.netReads = newBuckets(s.lim.NetReadRate, s.lim.NetReadBurst)
	s.netWrites = newBuckets(s.lim.NetWriteRate, s.lim.NetWriteBurst)
	s.peerWrites = newBuckets(s.lim.PeerWriteRate, s.lim.PeerWriteBurst)
	s.bodies = newBodyBudget(s.lim.BodyBudget, s.lim.BodyWait)
	s.idx = newServerIndex(reg, s.now, s.log)
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /v1/info", s.info)
	s.mux.HandleFunc("GET /v1/peers", s.peers)
	s.mux.HandleFunc("GET /v1/find/{hash}", s.find)
	s.mux.HandleFunc("GET /v1/index", s.serveIndex)
	s.mux.HandleFunc("POST /v1/announce", s.announce)
	s.mux.HandleFunc("POST /v1/packages", s.packages)
	s.mux.HandleFunc("DELETE /v1/peers/{id}", s.deletePeer)
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

// Sweep drops expired peers' hashes and forgets peers whose replay guard
// is no longer needed. Run it every TTL/4.
func (s *Server) Sweep(ctx context.Context) (int, error) {
	now := s.now()
	return s.reg.Sweep(ctx, s.liveSince(now), now.Add(-api.MaxClockSkew).UnixMilli())
}

func (s *Server) liveSince(now time.Time) time.Time { return now.Add(-s.ttl) }

// Live reports whether the peer is registered and live (the relay's
// admission).
func (s *Server) Live(ctx context.Context, id peer.ID) (bool, error) {
	return s.reg.Live(ctx, id.String(), s.liveSince(s.now()))
}

// allowRead takes cost tokens of the source network's read budget, or
// answers 429.
func (s *Server) allowRead(w http.ResponseWriter, r *http.Request, cost int) bool {
	src := sourceOf(r.RemoteAddr)
	if src.net == "" {
		return true
	}
	ok, retry := s.netReads.take(src.net, cost, s.now())
	if !ok {
		rateLimited(w, retry, "too many reads from your network ("+src.net+")")
	}
	return ok
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	if !s.allowRead(w, r, 1) {
		return
	}
	ans := api.InfoAnswer{OK: true, TrackerID: s.id, ObservedAddr: r.RemoteAddr, TTLSeconds: s.ttl.Seconds()}
	if s.relay != nil {
		ans.Relay = s.relay(r.Host)
	}
	writeJSON(w, http.StatusOK, ans)
}

// peers is GET /v1/peers[?limit=N][&after=<peer id>]: one page of the live
// peers in peer ID order, with the cursor of the next page.
func (s *Server) peers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := limitParam(w, q.Get("limit"), api.DefaultPeersLimit, api.MaxPeersLimit)
	if !ok {
		return
	}
	after := q.Get("after")
	if len(after) > 128 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "after: not a peer ID", nil)
		return
	}
	if !s.allowRead(w, r, 1+limit/100) {
		return
	}
	// One more than asked says whether there is a next page.
	peers, err := s.reg.Peers(r.Context(), s.liveSince(s.now()), after, limit+1)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	ans := api.PeersAnswer{Peers: peers}
	if len(peers) > limit {
		ans.Peers = peers[:limit]
		ans.Next = peers[limit-1].PeerID
	}
	writeJSON(w, http.StatusOK, ans)
}

// limitParam parses ?limit= (absent: def; capped at most).
func limitParam(w http.ResponseWriter, v string, def, most int) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "limit must be a positive integer", nil)
		return 0, false
	}
	return min(n, most), true
}

// find is GET /v1/find/<hash>[?limit=N]: up to N live holders, chosen and
// ordered by pickHolders (select.go).
func (s *Server) find(w http.ResponseWriter, r *http.Request) {
	hash := r.PathValue("hash")
	if !store.ValidHash(hash) {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "invalid hash: want the 32-character Nix base-32 hash part of a store path", nil)
		return
	}
	limit, ok := limitParam(w, r.URL.Query().Get("limit"), api.DefaultFindLimit, api.MaxFindLimit)
	if !ok || !s.allowRead(w, r, 1) {
		return
	}
	now := s.now()
	liveSince := s.liveSince(now)
	cands, err := s.holders.candidates(r.Context(), hash, now, func(ctx context.Context) ([]Holder, error) {
		keys, err := s.reg.HolderKeys(ctx, hash, maxHolderScan)
		if err != nil {
			return nil, err
		}
		return s.descs.holders(ctx, s.reg, keys, liveSince, now)
	})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	keys := cands.pick(limit)
	// The holders' descriptions come from memory where a find listed
	// them lately, for this hash or another.
	bp := findBufs.Get().(*[]byte)
	buf := append((*bp)[:0], `{"peers":`...)
	buf, err = s.descs.describe(r.Context(), s.reg, keys, liveSince, now, buf)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	buf = append(buf, "}\n"...)
	writeRaw(w, http.StatusOK, buf)
	if cap(buf) <= maxPooledFindBuf {
		*bp = buf
		findBufs.Put(bp)
	}
}

// findBufs holds the buffers finds render their answers in (about 85 KiB
// for 100 holders with 8 addresses each): a fresh one per find was most
// of a find's allocations. A buffer is reused once its answer is written
// (an io.Writer keeps no slice it was given).
var findBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// maxPooledFindBuf: larger buffers (a find with a high limit of peers with
// many addresses) are left to the garbage collector.
const maxPooledFindBuf = 1 << 20

func (s *Server) announce(w http.ResponseWriter, r *http.Request) {
	var req api.AnnounceRequest
	sw, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS, func() int { return 1 })
	if !ok {
		return
	}
	defer sw.release()
	if len(req.Addrs) > api.MaxAddrs {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("%d addrs, at most %d allowed", len(req.Addrs), api.MaxAddrs), nil)
		return
	}
	loopbackOK := sw.src.net == "" && sw.src.ip.IsLoopback()
	addrs := make([]string, 0, len(req.Addrs))
	var dropped []string
	for _, a := range req.Addrs {
		canon, err := checkAddr(a, sw.id)
		if err != nil {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
			return
		}
		if err := api.CheckAddr(canon, loopbackOK); err != nil {
			dropped = append(dropped, err.Error())
			continue
		}
		if s := canon.String(); !containsString(addrs, s) {
			addrs = append(addrs, s)
		}
	}
	fresh, err := s.reg.UpsertPeer(r.Context(), Announce{
		PeerID: sw.id.String(), Addrs: addrs, Net: sw.src.net, TS: req.TS,
		Now: sw.now, LiveSince: s.liveSince(sw.now), MaxPeersPerNet: positive(s.lim.PeersPerNet),
	})
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	if fresh {
		s.log.Info("peer registered", "peer", sw.id, "addrs", addrs, "from", r.RemoteAddr, "dropped_addrs", dropped)
		if s.registered != nil {
			s.registered(sw.id)
		}
	} else {
		s.log.Debug("peer heartbeat", "peer", sw.id, "addrs", len(addrs), "dropped_addrs", len(dropped))
	}
	s.descs.forget(sw.id.String()) // finds list its new addresses at once
	writeJSON(w, http.StatusOK, api.AnnounceAnswer{OK: true, ObservedAddr: r.RemoteAddr, TTLSeconds: s.ttl.Seconds(), Registered: fresh, Addrs: addrs})
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkAddr parses a peer's announced address and returns it in canonical
// form, without a trailing /p2p/<own id>.
func checkAddr(a string, id peer.ID) (ma.Multiaddr, error) {
	if len(a) > api.MaxAddrLen {
		return nil, fmt.Errorf("address longer than %d bytes", api.MaxAddrLen)
	}
	m, err := ma.NewMultiaddr(a)
	if err != nil {
		return nil, fmt.Errorf("address %q: %v", a, err)
	}
	t, pid := peer.SplitAddr(m)
	if pid != "" && pid != id {
		return nil, fmt.Errorf("address %q names another peer", a)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("address %q has no transport part", a)
	}
	return t, nil
}

func (s *Server) packages(w http.ResponseWriter, r *http.Request) {
	var req api.PackagesRequest
	sw, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS, func() int { return 1 + (len(req.Add)+len(req.Remove))/1000 })
	if !ok {
		return
	}
	defer sw.release()
	if n := len(req.Add) + len(req.Remove); n > api.MaxHashesPerRequest {
		writeError(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge,
			fmt.Sprintf("%d hashes in one request, at most %d: send the rest as deltas", n, api.MaxHashesPerRequest), nil)
		return
	}
	if req.Full && len(req.Remove) > 0 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, `"remove" must be empty in a full set`, nil)
		return
	}
	for _, list := range [][]string{req.Add, req.Remove} {
		for _, h := range list {
			if !store.ValidHash(h) {
				writeError(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("invalid hash %.40q: want 32 Nix base-32 characters", h), nil)
				return
			}
		}
	}
	count, err := s.reg.SetPackages(r.Context(), PackagesUpdate{
		PeerID: sw.id.String(), TS: req.TS, LiveSince: s.liveSince(sw.now), Full: req.Full, Add: req.Add, Remove: req.Remove,
		MaxHashes: positive(s.lim.HashesPerPeer), MaxNetHashes: positive(s.lim.HashesPerNet),
	})
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	s.idx.added(req.Add)
	s.log.Debug("packages", "peer", sw.id, "full", req.Full, "add", len(req.Add), "remove", len(req.Remove), "count", count)
	writeJSON(w, http.StatusOK, api.PackagesAnswer{OK: true, Count: count})
}

func (s *Server) deletePeer(w http.ResponseWriter, r *http.Request) {
	var req api.DeleteRequest
	sw, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS, func() int { return 1 })
	if !ok {
		return
	}
	defer sw.release()
	if target, err := peer.Decode(r.PathValue("id")); err != nil || target != sw.id {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "a peer may only deregister itself: the path's id must equal peer_id", nil)
		return
	}
	removed, err := s.reg.RemovePeer(r.Context(), sw.id.String(), req.TS, s.liveSince(sw.now))
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	s.descs.forget(sw.id.String())
	s.log.Info("peer deregistered", "peer", sw.id, "was_live", removed)
	writeJSON(w, http.StatusOK, api.DeleteAnswer{OK: true, Removed: removed})
}

// signedWrite is an authenticated write, as readSigned took it.
type signedWrite struct {
	id      peer.ID
	now     time.Time
	src     source
	release func() // gives the body's room back: call when done with it
}

// readSigned reads and authenticates a signed write (docs/protocol.md,
// "Signed writes", in the order given there): the v2 signature header,
// the source network's write budget, room for the body, the body (at most
// MaxBodySize), strictly decoded into dst, signed by the key of its
// peer_id for this method, route and tracker, the identity's write budget
// (cost, called once dst is decoded), a ts close to the tracker's clock.
// peerID and ts point into dst. On failure it has answered and returns ok
// false; on success the caller must call release.
func (s *Server) readSigned(w http.ResponseWriter, r *http.Request, dst any, peerID *string, ts *int64, cost func() int) (sw signedWrite, ok bool) {
	sig, err := api.ParseSignature(r.Header.Get(api.SignatureHeader))
	if r.Header.Get(api.SignatureHeader) == "" {
		err = errors.New("missing " + api.SignatureHeader + " header")
	}
	if err != nil {
		code := api.CodeBadSig
		if errors.Is(err, api.ErrOldSignature) {
			code = api.CodeOldSignature
		}
		writeError(w, http.StatusUnauthorized, code, err.Error(), &api.ErrorAnswer{TrackerID: s.id})
		return sw, false
	}
	if r.ContentLength > api.MaxBodySize {
		writeError(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("body over %d bytes", api.MaxBodySize), nil)
		return sw, false
	}
	sw.src = sourceOf(r.RemoteAddr)
	size := r.ContentLength
	if size < 0 {
		size = api.MaxBodySize
	}
	if sw.src.net != "" {
		if ok, retry := s.netWrites.take(sw.src.net, 1+int(size/40000), s.now()); !ok {
			rateLimited(w, retry, "too many writes from your network ("+sw.src.net+")")
			return sw, false
		}
	}
	release, ok := s.bodies.acquire(r.Context(), size)
	if !ok {
		if r.Context().Err() == nil {
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the tracker is busy: try again soon", &api.ErrorAnswer{RetryAfterMS: 5000})
		}
		return sw, false
	}
	defer func() {
		if !ok {
			release()
		}
	}()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxBodySize))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("body over %d bytes", api.MaxBodySize), nil)
		} else {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "reading body: "+err.Error(), nil)
		}
		return sw, false
	}
	if err := decodeStrict(body, dst); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "body: "+err.Error(), nil)
		return sw, false
	}
	if *peerID == "" {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "body: peer_id missing", nil)
		return sw, false
	}
	id, err := peer.Decode(*peerID)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "body: invalid peer_id", nil)
		return sw, false
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		writeError(w, http.StatusUnauthorized, api.CodeBadSig, "peer_id does not embed its public key (use an ed25519 identity)", &api.ErrorAnswer{TrackerID: s.id})
		return sw, false
	}
	if valid, err := pub.Verify(api.SignedMessage(r.Method, r.URL.Path, s.id, body), sig); err != nil || !valid {
		writeError(w, http.StatusUnauthorized, api.CodeBadSig,
			"signature does not verify with peer_id's key over "+r.Method+" "+r.URL.Path+" for tracker "+s.id+" and the body",
			&api.ErrorAnswer{TrackerID: s.id})
		return sw, false
	}
	sw.now = s.now()
	if ok, retry := s.peerWrites.take(id.String(), cost(), sw.now); !ok {
		rateLimited(w, retry, "too many writes from peer "+id.String())
		return sw, false
	}
	if *ts <= 0 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "body: ts missing", nil)
		return sw, false
	}
	if diff, skew := *ts-sw.now.UnixMilli(), api.MaxClockSkew.Milliseconds(); diff > skew || diff < -skew {
		writeError(w, http.StatusBadRequest, api.CodeClockSkew,
			fmt.Sprintf("ts is %d ms from the tracker's clock (at most %v allowed)", diff, api.MaxClockSkew),
			&api.ErrorAnswer{NowMS: sw.now.UnixMilli()})
		return sw, false
	}
	sw.id, sw.release = id, release
	return sw, true
}

// decodeStrict decodes exactly one JSON object with only known fields.
func decodeStrict(body []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func (s *Server) writeRegistryError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		replay *ReplayError
		quota  *QuotaError
	)
	switch {
	case errors.As(err, &replay):
		writeError(w, http.StatusConflict, api.CodeReplay, replay.Error(), &api.ErrorAnswer{LastTS: replay.LastTS})
	case errors.As(err, &quota):
		writeError(w, http.StatusForbidden, api.CodeQuota, quota.Error(), &api.ErrorAnswer{Limit: quota.Limit})
	case errors.Is(err, ErrUnknownPeer):
		writeError(w, http.StatusNotFound, api.CodeUnknownPeer, err.Error(), nil)
	default:
		s.internal(w, r, err)
	}
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	s.log.Error("tracker request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, api.CodeInternal, "internal error", nil)
}

// rateLimited answers 429 with Retry-After (whole seconds, at least 1)
// and retry_after_ms.
func rateLimited(w http.ResponseWriter, retry time.Duration, msg string) {
	w.Header().Set("Retry-After", strconv.FormatInt(max(int64((retry+time.Second-1)/time.Second), 1), 10))
	writeError(w, http.StatusTooManyRequests, api.CodeRateLimited, msg, &api.ErrorAnswer{RetryAfterMS: max(retry.Milliseconds(), 1)})
}

func writeError(w http.ResponseWriter, status int, code, msg string, extra *api.ErrorAnswer) {
	e := api.ErrorAnswer{}
	if extra != nil {
		e = *extra
	}
	e.OK, e.Error, e.Code = false, msg, code
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"ok":false,"error":"encoding answer","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(b)
	w.Write(newline) // not append: b has no room, and a large answer would be copied
}

var newline = []byte{'\n'}

// writeRaw writes b, JSON ending in a newline, as the answer.
func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
