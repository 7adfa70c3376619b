package p2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/compress"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
)

// The peer protocols, versioned: a change an older peer cannot read gets a
// new version.
const (
	NarInfoProtocol protocol.ID = "/peerix/narinfo/1.0.0"
	NARProtocol     protocol.ID = "/peerix/nar/1.0.0"
	// NARProtocol11 adds a length (byte ranges, for fetching pieces from
	// several holders) and zstd on the wire.
	NARProtocol11 protocol.ID = "/peerix/nar/1.1.0"
)

// Deadlines of docs/protocol.md: requests and status frames must arrive
// within RequestTimeout, a NAR body may make no progress for BodyTimeout.
// Variables so tests can shorten them.
var (
	RequestTimeout = 10 * time.Second
	BodyTimeout    = 30 * time.Second
)

// limitedConnReason is passed to network.WithAllowLimitedConn: the
// tracker's relay has limits fit for NARs, so our protocols may run over a
// relayed connection until a direct one exists.
const limitedConnReason = "peerix transfers fit the relay's limits"

// Server answers the peer protocols from the local store as it may be
// shared.
type Server struct {
	h         host.Host
	shared    store.Store
	obs       ServerObserver // nil: nobody watches
	log       *slog.Logger
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	transfers chan struct{} // a slot per NAR being sent; nil: unbounded
}

// errBusy answers a NAR request beyond the transfers a server sends at
// once: the asker tries another holder.
var errBusy = errors.New("busy: too many transfers")

// Serve registers the handlers of /peerix/narinfo/1.0.0 and
// /peerix/nar/1.0.0 and 1.1.0 on h, answering from shared: the local store wrapped
// in the filter (its NarInfo and NAR return store.ErrRefused for what must
// not leave the machine) and the signer. At most maxTransfers NARs are
// sent at once (each holds a file open; 0: no bound but libp2p's stream
// limits); a request beyond is answered with an error, busy. Close
// unregisters them.
func Serve(h host.Host, shared store.Store, maxTransfers int, log *slog.Logger) *Server {
	return serve(h, shared, maxTransfers, nil, log)
}

// ServerObserver watches what the Server does for peers, so that the
// daemon can show it to the operator. Its methods must not block.
type ServerObserver interface {
	// Answered: a peer's request of kind "narinfo" or "nar" for hash was
	// answered, found says with the path (a NAR: its body started; how it
	// ended, the Upload's Progress says), took how long. A refused path is
	// not found here either.
	Answered(kind, hash string, found bool, took time.Duration)
	// Upload: the NAR of hash starts to go to peer, size bytes (from the
	// offset asked for on), through a relay or not. The Progress follows
	// the bytes as they leave.
	Upload(hash, peer string, size int64, relayed bool) swarm.Progress
}

// serve is Serve with an observer (nil: none).
func serve(h host.Host, shared store.Store, maxTransfers int, obs ServerObserver, log *slog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{h: h, shared: shared, obs: obs, log: log, ctx: ctx, cancel: cancel}
	if maxTransfers > 0 {
		s.transfers = make(chan struct{}, maxTransfers)
	}
	h.SetStreamHandler(NarInfoProtocol, s.track(s.handleNarInfo))
	h.SetStreamHandler(NARProtocol, s.track(s.handleNAR))
	h.SetStreamHandler(NARProtocol11, s.track(s.handleNAR11))
	return s
}

// Close removes the handlers and ends the transfers in progress.
func (s *Server) Close() error {
	s.h.RemoveStreamHandler(NarInfoProtocol)
	s.h.RemoveStreamHandler(NARProtocol)
	s.h.RemoveStreamHandler(NARProtocol11)
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) track(f network.StreamHandler) network.StreamHandler {
	return func(st network.Stream) {
		s.wg.Add(1)
		defer s.wg.Done()
		if s.ctx.Err() != nil {
			st.Reset()
			return
		}
		// A transfer ends when the server closes.
		stop := context.AfterFunc(s.ctx, func() { st.Reset() })
		defer stop()
		f(st)
	}
}

// answerError writes a framed error answer and closes the stream; garbage
// gets told what was wrong instead of a dropped stream.
func (s *Server) answerError(st network.Stream, err error) {
	st.SetWriteDeadline(time.Now().Add(RequestTimeout))
	if werr := writeFrame(st, errorAnswer(err.Error())); werr != nil {
		st.Reset()
		return
	}
	st.Close()
}

// readRequest reads a request frame of exactly n bytes. Broken requests are
// answered with a framed error (and false is returned); a vanished
// requester gets its stream reset.
func (s *Server) readRequest(st network.Stream, n int) ([]byte, bool) {
	st.SetDeadline(time.Now().Add(RequestTimeout))
	b, err := readExactFrame(st, n)
	if err != nil {
		if errors.Is(err, ErrProtocol) {
			s.log.Debug("peer sent a malformed request", "peer", st.Conn().RemotePeer(), "protocol", st.Protocol(), "err", err)
			s.answerError(st, err)
		} else {
			st.Reset()
		}
		return nil, false
	}
	return b, true
}

// statusOf maps a store error to an answer status (and, for errors, a
// message that reveals nothing of the local machine). A path the filter
// keeps private is answered exactly like one this machine does not hold:
// not found.
func statusOf(err error) (byte, string) {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrRefused), errors.Is(err, store.ErrBadRequest):
		return StatusNotFound, ""
	case errors.Is(err, store.ErrOffset):
		return StatusError, "offset beyond the end of the NAR"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return StatusError, "timed out"
	}
	return StatusError, "internal error"
}

func (s *Server) handleNarInfo(st network.Stream) {
	b, ok := s.readRequest(st, narInfoRequestLen)
	if !ok {
		return
	}
	hash, err := DecodeNarInfoRequest(b)
	if err != nil {
		s.answerError(st, err)
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, RequestTimeout)
	ni, err := s.shared.NarInfo(ctx, hash)
	cancel()
	defer func() { s.answered("narinfo", hash, err == nil, start) }()
	var answer []byte
	if err != nil {
		status, msg := statusOf(err)
		if status == StatusError {
			s.log.Warn("narinfo for a peer failed", "peer", st.Conn().RemotePeer(), "hash", hash, "err", err)
			answer = errorAnswer(msg)
		} else {
			cache.PadMiss(s.ctx, start)
			answer = encodeAnswer(status, nil)
		}
	} else {
		answer = cache.AppendNarInfo(append(make([]byte, 0, 1024), StatusFound), ni)
		if len(answer) > MaxNarInfoFrame {
			answer = errorAnswer("narinfo too large")
		}
	}
	st.SetWriteDeadline(time.Now().Add(RequestTimeout))
	if err := writeFrame(st, answer); err != nil {
		st.Reset()
		return
	}
	st.Close()
}

func (s *Server) handleNAR(st network.Stream) {
	b, ok := s.readRequest(st, narRequestLen)
	if !ok {
		return
	}
	req, err := DecodeNarRequest(b)
	if err != nil {
		s.answerError(st, err)
		return
	}
	s.serveNAR(st, req, false)
}

func (s *Server) handleNAR11(st network.Stream) {
	b, ok := s.readRequest(st, narRequestLen11)
	if !ok {
		return
	}
	req, err := DecodeNarRequest11(b)
	if err != nil {
		s.answerError(st, err)
		return
	}
	s.serveNAR(st, req, true)
}

// serveNAR answers a NAR request of either version: a status frame, then
// the bytes asked for (1.1.0: zstd-compressed when the asker takes it and
// a sample shows it pays).
func (s *Server) serveNAR(st network.Stream, req NarRequest, v11 bool) {
	// The local store's NAR URL: nar/<hash>-<NarHash>.nar. Its NarHash
	// check makes a path that was rebuilt differently "not found".
	url := store.NarRef{Hash: req.Hash, NarHash: req.NarHash}.URL()
	if s.transfers != nil {
		select {
		case s.transfers <- struct{}{}:
			defer func() { <-s.transfers }()
		default:
			s.log.Debug("NAR request refused: as many transfers as the budget allows", "peer", st.Conn().RemotePeer(), "max", cap(s.transfers))
			s.answerError(st, errBusy)
			return
		}
	}
	start, found := time.Now(), false
	defer func() { s.answered("nar", req.Hash, found, start) }()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	nar, err := s.shared.NAR(ctx, url, req.Offset)
	if err != nil {
		status, msg := statusOf(err)
		answer := encodeAnswer(status, nil)
		if status == StatusError {
			if !errors.Is(err, store.ErrOffset) {
				s.log.Warn("NAR for a peer failed", "peer", st.Conn().RemotePeer(), "hash", req.Hash, "err", err)
			}
			answer = errorAnswer(msg)
		} else {
			cache.PadMiss(s.ctx, start)
		}
		st.SetWriteDeadline(time.Now().Add(RequestTimeout))
		if writeFrame(st, answer) != nil {
			st.Reset()
			return
		}
		st.Close()
		return
	}
	defer nar.Close()
	want := nar.Size - req.Offset
	if req.Offset > nar.Size || req.Length > want {
		s.answerError(st, store.ErrOffset)
		return
	}
	if req.Length > 0 {
		want = req.Length
	}
	// The whole rest of the NAR goes as it is, so that a local one keeps
	// its WriteTo (see compress.Copy).
	var body io.Reader = nar
	if want < nar.Size-req.Offset {
		body = io.LimitReader(nar, want)
	}
	enc := EncodingRaw
	if req.AcceptBlocks {
		enc = EncodingBlocks
	}
	status := binary.BigEndian.AppendUint64([]byte{StatusFound}, uint64(nar.Size))
	if v11 {
		status = append(status, enc)
	}
	st.SetWriteDeadline(time.Now().Add(RequestTimeout))
	if err := writeFrame(st, status); err != nil {
		st.Reset()
		return
	}
	found = true
	// Nothing more is read from the asker.
	st.CloseRead()
	progress := s.upload(st, req.Hash, want)
	w := &bodyWriter{st: st, left: want, progress: progress}
	countNAR := func(n int64) { progress.Add("", n, 0) }
	var n int64
	if enc == EncodingBlocks {
		// Block by block, compressed when that is faster than raw.
		w.left = math.MaxInt64
		n, err = compress.Copy(w, body, want, countNAR)
	} else {
		w.raw = true
		n, err = io.Copy(w, body)
	}
	if err == nil && n != want {
		err = fmt.Errorf("NAR ended after %d of %d bytes", n, want)
	}
	progress.Done(err)
	if err != nil {
		// The asker must see a broken transfer, never a clean short one.
		if !errors.Is(err, errBodyOverflow) && ctx.Err() == nil {
			s.log.Debug("NAR transfer to a peer broke", "peer", st.Conn().RemotePeer(), "hash", req.Hash, "sent", n, "of", want, "err", err)
		}
		st.Reset()
		return
	}
	st.Close()
}

// answered tells the observer about an answered request.
func (s *Server) answered(kind, hash string, found bool, start time.Time) {
	if s.obs != nil {
		s.obs.Answered(kind, hash, found, time.Since(start))
	}
}

// upload starts the observed progress of a NAR going to the stream's peer.
func (s *Server) upload(st network.Stream, hash string, size int64) swarm.Progress {
	if s.obs == nil {
		return noProgress{}
	}
	conn := st.Conn()
	p := s.obs.Upload(hash, conn.RemotePeer().String(), size, isCircuit(conn.RemoteMultiaddr()))
	if p == nil {
		return noProgress{}
	}
	return p
}

type noProgress struct{}

func (noProgress) Add(string, int64, int64) {}
func (noProgress) Done(error)               {}

var errBodyOverflow = errors.New("NAR source longer than its size")

// bodyWriter writes a NAR body to a stream with a deadline that moves while
// bytes move, and refuses to write past the announced size.
type bodyWriter struct {
	st       network.Stream
	left     int64
	deadline time.Time
	progress swarm.Progress // told about the bytes as they leave
	raw      bool           // the body is the NAR itself: its bytes are NAR bytes too
}

func (w *bodyWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, errBodyOverflow
	}
	w.refresh()
	n, err := w.st.Write(p)
	w.left -= int64(n)
	if w.raw {
		w.progress.Add("", int64(n), int64(n))
	} else {
		w.progress.Add("", 0, int64(n))
	}
	return n, err
}

// refresh moves the deadline to BodyTimeout from now, at most about once a
// second (setting a deadline costs a timer reset).
func (w *bodyWriter) refresh() {
	now := time.Now()
	if w.deadline.IsZero() || w.deadline.Sub(now) < BodyTimeout-time.Second {
		w.deadline = now.Add(BodyTimeout)
		w.st.SetWriteDeadline(w.deadline)
	}
}

// openStream opens a stream of the first of protos p speaks to p, over a relayed connection if no
// direct one exists. The stream is reset when ctx ends before release is
// called.
func openStream(ctx context.Context, h host.Host, p peer.ID, protos ...protocol.ID) (network.Stream, func() bool, error) {
	st, err := h.NewStream(network.WithAllowLimitedConn(ctx, limitedConnReason), p, protos...)
	if err != nil {
		return nil, nil, err
	}
	release := context.AfterFunc(ctx, func() { st.Reset() })
	return st, release, nil
}

// openNARStream is openStream for a NAR: on a direct TCP connection to p
// when there is one, as the fastest transport both ends reached (libp2p's
// TCP moves about twice the bytes of its QUIC on the same link and cores,
// and libp2p itself would pick whichever connection has the most streams).
func openNARStream(ctx context.Context, h host.Host, p peer.ID, protos ...protocol.ID) (network.Stream, func() bool, error) {
	c := directTCPConn(h, p)
	if c == nil {
		return openStream(ctx, h, p, protos...)
	}
	st, err := c.NewStream(ctx)
	if err != nil {
		// The connection went away meanwhile: whichever libp2p has.
		return openStream(ctx, h, p, protos...)
	}
	st.SetDeadline(requestDeadline(ctx))
	proto, err := msmux.SelectOneOf(protos, st)
	if err != nil {
		st.Reset()
		return nil, nil, ctxErr(ctx, err)
	}
	if err := st.SetProtocol(proto); err != nil {
		st.Reset()
		return nil, nil, err
	}
	release := context.AfterFunc(ctx, func() { st.Reset() })
	return st, release, nil
}

// directTCPConn returns the newest open, direct, unlimited TCP connection
// to p, or nil.
func directTCPConn(h host.Host, p peer.ID) network.Conn {
	var best network.Conn
	for _, c := range h.Network().ConnsToPeer(p) {
		a := c.RemoteMultiaddr()
		if c.IsClosed() || c.Stat().Limited || isCircuit(a) || !isTCP(a) {
			continue
		}
		if best == nil || c.Stat().Opened.After(best.Stat().Opened) {
			best = c
		}
	}
	return best
}

// isTCP reports whether a is a plain TCP address (QUIC's is UDP; not a
// WebSocket).
func isTCP(a ma.Multiaddr) bool {
	tcp := false
	for _, c := range a {
		switch c.Code() {
		case ma.P_TCP:
			tcp = true
		case ma.P_WS, ma.P_WSS, ma.P_TLS:
			return false
		}
	}
	return tcp
}

// requestDeadline is RequestTimeout from now, or ctx's deadline if sooner.
func requestDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(RequestTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// QueryNarInfo asks peer p for the narinfo of hash. It returns an error
// wrapping store.ErrNotFound for a not found answer (and an older peer's
// refused),
// ErrProtocol for garbage, *RemoteError for an error answer. The narinfo is
// parsed but not checked beyond that: see CheckNarInfo.
func QueryNarInfo(ctx context.Context, h host.Host, p peer.ID, hash string) (*narinfo.NarInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	st, release, err := openStream(ctx, h, p, NarInfoProtocol)
	if err != nil {
		return nil, err
	}
	defer release()
	st.SetDeadline(requestDeadline(ctx))
	if err := writeFrame(st, EncodeNarInfoRequest(hash)); err != nil {
		st.Reset()
		return nil, ctxErr(ctx, err)
	}
	st.CloseWrite()
	a, err := ReadStatus(st, MaxNarInfoFrame)
	if err != nil {
		st.Reset()
		return nil, ctxErr(ctx, err)
	}
	st.Close()
	if a.Status != StatusFound {
		return nil, a.Err("narinfo " + hash)
	}
	return parseNarInfo(a.Payload)
}

// parseNarInfo parses a peer's narinfo text; a text that does not parse
// is a protocol error.
func parseNarInfo(b []byte) (*narinfo.NarInfo, error) {
	if len(b) == 0 {
		return nil, protocolErrorf("empty narinfo")
	}
	ni, err := store.ParseNarInfo(b)
	if err != nil {
		return nil, protocolErrorf("narinfo: %v", err)
	}
	return ni, nil
}

// ctxErr prefers the context's error over the stream error it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// OpenNAR asks peer p for length bytes (0: all) of the NAR of hash with
// NarHash narHash (Nix base-32), from offset on; over /peerix/nar/1.1.0 if
// p speaks it (then zstd on the wire if acceptZstd and p finds it pays),
// else over 1.0.0 (the reader then stops after length bytes and resets the
// stream). It returns the whole NAR's size and a body of exactly the bytes
// asked for: a body the peer ends early fails with io.ErrUnexpectedEOF,
// one that makes no progress for BodyTimeout fails with a timeout. The
// body must be closed; ctx bounds its whole life.
func OpenNAR(ctx context.Context, h host.Host, p peer.ID, hash, narHash string, offset, length int64, acceptBlocks bool) (size int64, body io.ReadCloser, err error) {
	if !store.ValidHash(hash) || !validNarHash(narHash) || offset < 0 || length < 0 {
		return 0, nil, fmt.Errorf("NAR %s-%s at %d: %w", hash, narHash, offset, store.ErrBadRequest)
	}
	st, release, err := openNARStream(ctx, h, p, NARProtocol11, NARProtocol)
	if err != nil {
		return 0, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			release()
			st.Reset()
		}
	}()
	v11 := st.Protocol() == NARProtocol11
	req := NarRequest{Hash: hash, NarHash: narHash, Offset: offset, Length: length, AcceptBlocks: acceptBlocks}
	frame := EncodeNarRequest(req)
	if v11 {
		frame = EncodeNarRequest11(req)
	}
	st.SetDeadline(requestDeadline(ctx))
	if err := writeFrame(st, frame); err != nil {
		return 0, nil, ctxErr(ctx, err)
	}
	st.CloseWrite()
	b, err := readFrame(st, maxNarStatusFrame)
	if err != nil {
		return 0, nil, ctxErr(ctx, err)
	}
	var a Answer
	enc := EncodingRaw
	if v11 {
		a, size, enc, err = DecodeNarAnswer11(b)
	} else {
		a, size, err = DecodeNarAnswer(b)
	}
	if err != nil {
		return 0, nil, err
	}
	if a.Status != StatusFound {
		return 0, nil, a.Err("NAR " + hash)
	}
	if offset > size || offset+length > size {
		return 0, nil, protocolErrorf("NAR of %d bytes sent for offset %d, length %d", size, offset, length)
	}
	want := size - offset
	if length > 0 {
		want = length
	}
	ok = true
	if enc == EncodingBlocks {
		wire := &narBody{st: st, release: release, left: math.MaxInt64, untilEOF: true}
		return size, &blocksBody{r: compress.NewReader(wire), wire: wire, left: want}, nil
	}
	if !v11 {
		// 1.0.0 sends to the end; the reader stops at want (and resets
		// the stream when closed before its end).
		return size, &narBody{st: st, release: release, left: size - offset, stopAt: size - offset - want}, nil
	}
	return size, &narBody{st: st, release: release, left: want}, nil
}

// blocksBody is a NAR body in the block format, decoded: exactly left
// bytes.
type blocksBody struct {
	r    *compress.Reader
	wire *narBody
	left int64
}

func (u *blocksBody) Read(p []byte) (int, error) {
	if u.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > u.left {
		p = p[:u.left]
	}
	n, err := u.r.Read(p)
	u.left -= int64(n)
	switch {
	case err == io.EOF && u.left > 0:
		err = io.ErrUnexpectedEOF
	case err == nil && u.left == 0:
		err = io.EOF
	}
	return n, err
}

// WireBytes is how many bytes came over the wire so far.
func (u *blocksBody) WireBytes() int64 { return u.wire.read }

// Relayed reports whether the body comes over a relayed connection.
func (u *blocksBody) Relayed() bool { return u.wire.Relayed() }

func (u *blocksBody) Close() error { return u.wire.Close() }

// narBody is the bytes of an answer's body: left of them (or, untilEOF,
// all until the responder closes), the last stopAt of which are not read
// (a 1.0.0 responder sends to the NAR's end).
type narBody struct {
	st       network.Stream
	release  func() bool
	left     int64
	stopAt   int64
	untilEOF bool
	read     int64
	eof      bool // the responder closed its side
	deadline time.Time
	closed   bool
}

func (b *narBody) Read(p []byte) (int, error) {
	if b.left == b.stopAt {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left-b.stopAt {
		p = p[:b.left-b.stopAt]
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	now := time.Now()
	if b.deadline.IsZero() || b.deadline.Sub(now) < BodyTimeout-time.Second {
		b.deadline = now.Add(BodyTimeout)
		b.st.SetReadDeadline(b.deadline)
	}
	n, err := b.st.Read(p)
	b.left -= int64(n)
	b.read += int64(n)
	b.eof = b.eof || err == io.EOF
	switch {
	case b.untilEOF:
	case err == io.EOF && b.left > b.stopAt:
		err = io.ErrUnexpectedEOF
	case err == nil && b.left == b.stopAt:
		err = io.EOF
	}
	return n, err
}

// WireBytes is how many bytes came over the wire so far.
func (b *narBody) WireBytes() int64 { return b.read }

// Relayed reports whether the body comes over a relayed connection.
func (b *narBody) Relayed() bool { return isCircuit(b.st.Conn().RemoteMultiaddr()) }

func (b *narBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.release()
	if b.eof || !b.untilEOF && b.left == 0 {
		return b.st.Close()
	}
	return b.st.Reset()
}
