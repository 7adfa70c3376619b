package tracker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/store"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// TTL: a peer is live while its last announce is younger. Required.
	TTL time.Duration
	// Relay returns the relay to advertise in /v1/info for a request that
	// came in with the given Host header; nil if the tracker runs none.
	Relay func(reqHost string) *PeerAddrs
	// Now is the clock; time.Now if nil. Tests set it (see fakeClock).
	Now func() time.Time
	// Log; slog.Default() if nil.
	Log *slog.Logger
}

// Server is the tracker's HTTP API (docs/protocol.md section 3).
type Server struct {
	reg   Registry
	ttl   time.Duration
	relay func(string) *PeerAddrs
	now   func() time.Time
	log   *slog.Logger
	mux   *http.ServeMux
	idx   *serverIndex // GET /v1/index (index.go)
}

// NewServer returns the /v1 API over reg.
func NewServer(reg Registry, o ServerOptions) *Server {
	s := &Server{reg: reg, ttl: o.TTL, relay: o.Relay, now: o.Now, log: o.Log}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
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
	return s.reg.Sweep(ctx, s.liveSince(now), now.Add(-MaxClockSkew).UnixMilli())
}

func (s *Server) liveSince(now time.Time) time.Time { return now.Add(-s.ttl) }

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	ans := infoJSON{OK: true, ObservedAddr: r.RemoteAddr, TTLSeconds: s.ttl.Seconds()}
	if s.relay != nil {
		ans.Relay = s.relay(r.Host)
	}
	writeJSON(w, http.StatusOK, ans)
}

func (s *Server) peers(w http.ResponseWriter, r *http.Request) {
	peers, err := s.reg.Peers(r.Context(), s.liveSince(s.now()))
	if err != nil {
		s.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, peersJSON{Peers: peers})
}

func (s *Server) find(w http.ResponseWriter, r *http.Request) {
	hash := r.PathValue("hash")
	if !store.ValidHash(hash) {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "invalid hash: want the 32-character Nix base-32 hash part of a store path", nil)
		return
	}
	limit := DefaultFindLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "limit must be a positive integer", nil)
			return
		}
		limit = min(n, MaxFindLimit)
	}
	peers, err := s.reg.Find(r.Context(), hash, s.liveSince(s.now()), limit)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, peersJSON{Peers: peers})
}

func (s *Server) announce(w http.ResponseWriter, r *http.Request) {
	var req announceRequest
	id, now, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS)
	if !ok {
		return
	}
	if len(req.Addrs) > MaxAddrs {
		writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("%d addrs, at most %d allowed", len(req.Addrs), MaxAddrs), nil)
		return
	}
	addrs := make([]string, 0, len(req.Addrs))
	for _, a := range req.Addrs {
		canon, err := checkAddr(a, id)
		if err != nil {
			writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error(), nil)
			return
		}
		addrs = append(addrs, canon)
	}
	fresh, err := s.reg.UpsertPeer(r.Context(), id.String(), addrs, req.TS, now, s.liveSince(now))
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	if fresh {
		s.log.Info("peer registered", "peer", id, "addrs", addrs, "from", r.RemoteAddr)
	} else {
		s.log.Debug("peer heartbeat", "peer", id, "addrs", len(addrs))
	}
	writeJSON(w, http.StatusOK, announceJSON{OK: true, ObservedAddr: r.RemoteAddr, TTLSeconds: s.ttl.Seconds(), Registered: fresh})
}

// checkAddr parses a peer's announced address and returns its canonical
// text form, without a trailing /p2p/<own id>.
func checkAddr(a string, id peer.ID) (string, error) {
	if len(a) > MaxAddrLen {
		return "", fmt.Errorf("address longer than %d bytes", MaxAddrLen)
	}
	m, err := ma.NewMultiaddr(a)
	if err != nil {
		return "", fmt.Errorf("address %q: %v", a, err)
	}
	t, pid := peer.SplitAddr(m)
	if pid != "" && pid != id {
		return "", fmt.Errorf("address %q names another peer", a)
	}
	if len(t) == 0 {
		return "", fmt.Errorf("address %q has no transport part", a)
	}
	return t.String(), nil
}

func (s *Server) packages(w http.ResponseWriter, r *http.Request) {
	var req packagesRequest
	id, now, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS)
	if !ok {
		return
	}
	if req.Full && len(req.Remove) > 0 {
		writeError(w, http.StatusBadRequest, CodeBadRequest, `"remove" must be empty in a full set`, nil)
		return
	}
	for _, list := range [][]string{req.Add, req.Remove} {
		for _, h := range list {
			if !store.ValidHash(h) {
				writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("invalid hash %.40q: want 32 Nix base-32 characters", h), nil)
				return
			}
		}
	}
	count, err := s.reg.SetPackages(r.Context(), id.String(), req.TS, s.liveSince(now), req.Full, req.Add, req.Remove)
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	s.idx.added(req.Add)
	s.log.Debug("packages", "peer", id, "full", req.Full, "add", len(req.Add), "remove", len(req.Remove), "count", count)
	writeJSON(w, http.StatusOK, packagesJSON{OK: true, Count: count})
}

func (s *Server) deletePeer(w http.ResponseWriter, r *http.Request) {
	var req deleteRequest
	id, now, ok := s.readSigned(w, r, &req, &req.PeerID, &req.TS)
	if !ok {
		return
	}
	if target, err := peer.Decode(r.PathValue("id")); err != nil || target != id {
		writeError(w, http.StatusForbidden, CodeForbidden, "a peer may only deregister itself: the path's id must equal peer_id", nil)
		return
	}
	removed, err := s.reg.RemovePeer(r.Context(), id.String(), req.TS, s.liveSince(now))
	if err != nil {
		s.writeRegistryError(w, r, err)
		return
	}
	s.log.Info("peer deregistered", "peer", id, "was_live", removed)
	writeJSON(w, http.StatusOK, deleteJSON{OK: true, Removed: removed})
}

// readSigned reads and authenticates a signed write: the body (at most
// MaxBodySize), strictly decoded into dst, signed by the key of its
// peer_id, with a ts close to the tracker's clock. peerID and ts point
// into dst. On failure it has answered and returns ok false.
func (s *Server) readSigned(w http.ResponseWriter, r *http.Request, dst any, peerID *string, ts *int64) (id peer.ID, now time.Time, ok bool) {
	sigText := r.Header.Get(SignatureHeader)
	if sigText == "" {
		writeError(w, http.StatusUnauthorized, CodeBadSig, "missing "+SignatureHeader+" header", nil)
		return "", now, false
	}
	sig, err := base64.StdEncoding.DecodeString(sigText)
	if err != nil || len(sig) == 0 {
		writeError(w, http.StatusUnauthorized, CodeBadSig, "malformed "+SignatureHeader+" header: want standard base64", nil)
		return "", now, false
	}
	if r.ContentLength > MaxBodySize {
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("body over %d bytes", MaxBodySize), nil)
		return "", now, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("body over %d bytes", MaxBodySize), nil)
		} else {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "reading body: "+err.Error(), nil)
		}
		return "", now, false
	}
	if err := decodeStrict(body, dst); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body: "+err.Error(), nil)
		return "", now, false
	}
	if *peerID == "" {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body: peer_id missing", nil)
		return "", now, false
	}
	id, err = peer.Decode(*peerID)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body: invalid peer_id", nil)
		return "", now, false
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		writeError(w, http.StatusUnauthorized, CodeBadSig, "peer_id does not embed its public key (use an ed25519 identity)", nil)
		return "", now, false
	}
	if valid, err := pub.Verify(body, sig); err != nil || !valid {
		writeError(w, http.StatusUnauthorized, CodeBadSig, "signature does not verify with peer_id's key over the body", nil)
		return "", now, false
	}
	now = s.now()
	if *ts <= 0 {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body: ts missing", nil)
		return "", now, false
	}
	if diff, skew := *ts-now.UnixMilli(), MaxClockSkew.Milliseconds(); diff > skew || diff < -skew {
		writeError(w, http.StatusBadRequest, CodeClockSkew,
			fmt.Sprintf("ts is %d ms from the tracker's clock (at most %v allowed)", diff, MaxClockSkew),
			&errorJSON{NowMS: now.UnixMilli()})
		return "", now, false
	}
	return id, now, true
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
	var replay *ReplayError
	switch {
	case errors.As(err, &replay):
		writeError(w, http.StatusConflict, CodeReplay, replay.Error(), &errorJSON{LastTS: replay.LastTS})
	case errors.Is(err, ErrUnknownPeer):
		writeError(w, http.StatusNotFound, CodeUnknownPeer, err.Error(), nil)
	default:
		s.internal(w, r, err)
	}
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	s.log.Error("tracker request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, CodeInternal, "internal error", nil)
}

func writeError(w http.ResponseWriter, status int, code, msg string, extra *errorJSON) {
	e := errorJSON{}
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
	w.Write(append(b, '\n'))
}
