package p2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

// The peer protocols, versioned: a change an older peer cannot read gets a
// new version.
const (
	NarInfoProtocol protocol.ID = "/peerix/narinfo/1.0.0"
	NARProtocol     protocol.ID = "/peerix/nar/1.0.0"
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
// /peerix/nar/1.0.0 on h, answering from shared: the local store wrapped
// in the filter (its NarInfo and NAR return store.ErrRefused for what must
// not leave the machine) and the signer. At most maxTransfers NARs are
// sent at once (each holds a file open; 0: no bound but libp2p's stream
// limits); a request beyond is answered with an error, busy. Close
// unregisters them.
func Serve(h host.Host, shared store.Store, maxTransfers int, log *slog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{h: h, shared: shared, log: log, ctx: ctx, cancel: cancel}
	if maxTransfers > 0 {
		s.transfers = make(chan struct{}, maxTransfers)
	}
	h.SetStreamHandler(NarInfoProtocol, s.track(s.handleNarInfo))
	h.SetStreamHandler(NARProtocol, s.track(s.handleNAR))
	return s
}

// Close removes the handlers and ends the transfers in progress.
func (s *Server) Close() error {
	s.h.RemoveStreamHandler(NarInfoProtocol)
	s.h.RemoveStreamHandler(NARProtocol)
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
	// The local store's NAR URL: nar/<hash>-<NarHash>.nar. Its NarHash
	// check makes a path that was rebuilt differently "not found".
	url := "nar/" + req.Hash + "-" + req.NarHash + ".nar"
	start := time.Now()
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
	if req.Offset > nar.Size {
		s.answerError(st, store.ErrOffset)
		return
	}
	st.SetWriteDeadline(time.Now().Add(RequestTimeout))
	if err := writeFrame(st, binary.BigEndian.AppendUint64([]byte{StatusFound}, uint64(nar.Size))); err != nil {
		st.Reset()
		return
	}
	// Nothing more is read from the asker.
	st.CloseRead()
	want := nar.Size - req.Offset
	w := &bodyWriter{st: st, left: want}
	n, err := io.Copy(w, nar)
	if err != nil || n != want {
		// The asker must see a broken transfer, never a clean short one.
		if !errors.Is(err, errBodyOverflow) && ctx.Err() == nil {
			s.log.Debug("NAR transfer to a peer broke", "peer", st.Conn().RemotePeer(), "hash", req.Hash, "sent", n, "of", want, "err", err)
		}
		st.Reset()
		return
	}
	st.Close()
}

var errBodyOverflow = errors.New("NAR source longer than its size")

// bodyWriter writes a NAR body to a stream with a deadline that moves while
// bytes move, and refuses to write past the announced size.
type bodyWriter struct {
	st       network.Stream
	left     int64
	deadline time.Time
}

func (w *bodyWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, errBodyOverflow
	}
	w.refresh()
	n, err := w.st.Write(p)
	w.left -= int64(n)
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

// openStream opens a stream of proto to p, over a relayed connection if no
// direct one exists. The stream is reset when ctx ends before release is
// called.
func openStream(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID) (network.Stream, func() bool, error) {
	st, err := h.NewStream(network.WithAllowLimitedConn(ctx, limitedConnReason), p, proto)
	if err != nil {
		return nil, nil, err
	}
	release := context.AfterFunc(ctx, func() { st.Reset() })
	return st, release, nil
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

// OpenNAR asks peer p for the NAR of hash with NarHash narHash (Nix
// base-32), from offset on. It returns the whole NAR's size and a body of
// exactly size-offset bytes: a body the peer ends early fails with
// io.ErrUnexpectedEOF, one that makes no progress for BodyTimeout fails
// with a timeout. The body must be closed; ctx bounds its whole life.
func OpenNAR(ctx context.Context, h host.Host, p peer.ID, hash, narHash string, offset int64) (size int64, body io.ReadCloser, err error) {
	if !store.ValidHash(hash) || !validNarHash(narHash) || offset < 0 {
		return 0, nil, fmt.Errorf("NAR %s-%s at %d: %w", hash, narHash, offset, store.ErrBadRequest)
	}
	st, release, err := openStream(ctx, h, p, NARProtocol)
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
	st.SetDeadline(requestDeadline(ctx))
	if err := writeFrame(st, EncodeNarRequest(NarRequest{Hash: hash, NarHash: narHash, Offset: offset})); err != nil {
		return 0, nil, ctxErr(ctx, err)
	}
	st.CloseWrite()
	b, err := readFrame(st, maxNarStatusFrame)
	if err != nil {
		return 0, nil, ctxErr(ctx, err)
	}
	a, size, err := DecodeNarAnswer(b)
	if err != nil {
		return 0, nil, err
	}
	if a.Status != StatusFound {
		return 0, nil, a.Err("NAR " + hash)
	}
	if offset > size {
		return 0, nil, protocolErrorf("NAR of %d bytes sent for offset %d", size, offset)
	}
	ok = true
	return size, &narBody{st: st, release: release, left: size - offset}, nil
}

// narBody is the raw NAR bytes of an answer.
type narBody struct {
	st       network.Stream
	release  func() bool
	left     int64
	deadline time.Time
	closed   bool
}

func (b *narBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
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
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && b.left == 0 {
		err = io.EOF
	}
	return n, err
}

func (b *narBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.release()
	if b.left > 0 {
		return b.st.Reset()
	}
	return b.st.Close()
}
