// Package httploop serves the hot routes of an HTTP server on a small
// hand-written HTTP/1.1 loop, and hands every connection that asks for
// anything else to net/http.
//
// A request the loop takes is a plain "GET <path> HTTP/1.1" on a route
// Options.Fast accepts, whose header block is whole in the loop's 4 KiB
// buffer (see parseRequest for every rule). It is answered by the same
// http.Handler net/http would call, through a lighter Request and
// ResponseWriter: no per-request context, goroutine, header map of every
// header, or bufio writer. Anything else (another method, a body, an odd
// header, a route of the dashboard or API, a malformed request) moves the
// connection, with every byte not yet consumed, to net/http for the rest
// of its life, so net/http's rules and limits answer it. A narinfo answered
// on the loop costs about half what it costs behind net/http (see
// docs/benchmarks.md, "Local serving").
package httploop

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Server.
type Options struct {
	// Handler answers the requests the loop takes.
	Handler http.Handler
	// Fast reports whether the loop serves a path (the request target,
	// which has no query and no percent-encoding) itself.
	Fast func(path string) bool
	// KeepHeaders names (canonical form) the request headers Handler
	// reads on the fast routes; the loop gives it no others.
	KeepHeaders []string
	// ReadHeaderTimeout bounds the reading of a request once its first
	// byte is in; IdleTimeout the wait for the next one. 0: 10 s, 2 min.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// ConnState, if set, is told of connection states as net/http's
	// Server.ConnState hook would be (a handed-off connection is then
	// net/http's to report, as a new connection).
	ConnState func(net.Conn, http.ConnState)
	Log       *slog.Logger
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("httploop: server closed")

// Server runs the loop.
type Server struct {
	opt     Options
	keep    [][]byte
	handoff *handoffListener

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	shutting atomic.Bool
}

// New makes a Server.
func New(opt Options) *Server {
	if opt.ReadHeaderTimeout <= 0 {
		opt.ReadHeaderTimeout = 10 * time.Second
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 2 * time.Minute
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opt:     opt,
		handoff: newHandoffListener(),
		conns:   make(map[*conn]struct{}),
	}
	for _, k := range opt.KeepHeaders {
		s.keep = append(s.keep, []byte(k))
	}
	return s
}

// HandOff is the listener net/http's Server must serve: it yields the
// connections the loop hands over. Its Close (net/http's Shutdown closes
// it) makes the loop close connections instead of handing them over.
func (s *Server) HandOff() net.Listener { return s.handoff }

// Serve accepts connections on ln until Shutdown or Close (then it
// returns ErrServerClosed) or an Accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return ErrServerClosed
			}
			if isTemporary(err) {
				// Out of descriptors, as net/http: wait a little and retry.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.opt.Log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		cn := s.newConn(c)
		if cn == nil {
			c.Close()
			continue
		}
		go cn.serve()
	}
}

// isTemporary is net/http's test for an Accept error worth retrying
// (EMFILE, ENFILE, ECONNABORTED and the like).
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// Shutdown stops accepting, closes idle connections, lets those with a
// request in hand answer it and close, and waits for them until ctx ends.
// Connections already handed to net/http are its Shutdown's.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes the listener and every connection the loop holds.
func (s *Server) Close() error {
	s.shutting.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	for cn := range s.conns {
		cn.c.Close()
	}
	return err
}

// closeIdle closes the connections waiting for a request; true when the
// loop holds none.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		if cn.idle.Load() || cn.quiet() {
			cn.c.Close()
		}
	}
	return len(s.conns) == 0
}

// newIdleAfter: a new connection that has not sent a whole request for
// this long counts as idle at Shutdown (net/http's rule too).
const newIdleAfter = 5 * time.Second

// quiet reports whether the connection is new and has had no request in
// newIdleAfter.
func (cn *conn) quiet() bool {
	return cn.served.Load() == 0 && !cn.active.Load() && time.Since(cn.born) > newIdleAfter
}

func (s *Server) newConn(c net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return nil
	}
	cn := &conn{s: s, c: c, born: time.Now()}
	s.conns[cn] = struct{}{}
	return cn
}

func (s *Server) forget(cn *conn) {
	s.mu.Lock()
	delete(s.conns, cn)
	s.mu.Unlock()
}

func (s *Server) setState(c net.Conn, st http.ConnState) {
	if s.opt.ConnState != nil {
		s.opt.ConnState(c, st)
	}
}

// readBufferSize holds a request's whole header block; a larger one goes
// to net/http (whose own limit is larger).
const readBufferSize = 4 << 10

// conn is one connection served by the loop.
type conn struct {
	s    *Server
	c    net.Conn
	br   *bufio.Reader
	born time.Time
	// idle: waiting for a request after one was answered; Shutdown closes
	// such connections, and new ones that sent nothing for newIdleAfter.
	idle atomic.Bool

	req     request
	target  string   // req.target
	url     *url.URL // parsed from it
	httpReq *http.Request
	w       response
	// deadline is the read deadline set (unix ns), moved only when it has
	// less than the idle timeout less a second left (setting it costs a
	// timer reset).
	deadline int64
	cancel   context.CancelFunc // ends the handlers' context
	served   atomic.Int64       // requests answered
	active   atomic.Bool        // a request is being answered
}

func (cn *conn) serve() {
	s := cn.s
	handedOff := false
	defer func() {
		if handedOff {
			return
		}
		cn.c.Close()
		s.forget(cn)
		s.setState(cn.c, http.StateClosed)
	}()
	s.setState(cn.c, http.StateNew)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As net/http's, the context ends when a write to the client fails:
	// handlers tell "the client went away" from a failure of their own.
	// (It is the connection's: no handler of the fast routes starts work
	// that outlives its request.)
	cn.cancel = cancel
	cn.br = bufio.NewReaderSize(cn.c, readBufferSize)
	cn.req.kept = make([][]byte, len(s.keep))
	cn.httpReq = (&http.Request{
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Body:       http.NoBody,
		Header:     make(http.Header, len(s.keep)),
		RemoteAddr: cn.c.RemoteAddr().String(),
	}).WithContext(ctx)
	cn.w = response{cn: cn, header: make(http.Header, 4)}
	for {
		err := cn.readRequest()
		if errors.Is(err, errHandOff) {
			handedOff = cn.handOff()
			return
		}
		if err != nil {
			return
		}
		cn.active.Store(true)
		cn.idle.Store(false)
		s.setState(cn.c, http.StateActive)
		keepAlive := cn.serveRequest()
		cn.served.Add(1)
		cn.active.Store(false)
		if !keepAlive || s.shutting.Load() {
			return
		}
		cn.idle.Store(true)
		s.setState(cn.c, http.StateIdle)
	}
}

// readRequest reads the next request's header block into cn.req. A
// request the loop does not serve (or cannot read whole into its buffer)
// is errHandOff with nothing consumed.
func (cn *conn) readRequest() error {
	begun := false
	for {
		if cn.br.Buffered() > 0 {
			b, _ := cn.br.Peek(cn.br.Buffered())
			err := parseRequest(b, cn.s.keep, &cn.req)
			if err == nil {
				return cn.route()
			}
			if len(b) >= readBufferSize || !incomplete(b) || !mayBeFast(b) {
				return errHandOff
			}
			if !begun && cn.served.Load() > 0 {
				// The request began: it has ReadHeaderTimeout to arrive (a
				// connection's first has had it since the accept).
				begun = true
				cn.setReadDeadline(time.Now().Add(cn.s.opt.ReadHeaderTimeout))
			}
		} else if cn.served.Load() == 0 {
			// A new connection: its first request is due within
			// ReadHeaderTimeout of the accept.
			if cn.deadline == 0 {
				cn.setReadDeadline(cn.born.Add(cn.s.opt.ReadHeaderTimeout))
			}
		} else {
			cn.idleDeadline()
		}
		// Peek past what is buffered: one read from the connection.
		if _, err := cn.br.Peek(cn.br.Buffered() + 1); err != nil {
			return err
		}
	}
}

// route decides whether the loop serves the request read: a fast path
// that net/http would parse into a URL.
func (cn *conn) route() error {
	target := string(cn.req.target)
	if !cn.s.opt.Fast(target) {
		return errHandOff
	}
	cn.url, cn.target = plainURL(target), target
	if cn.url == nil {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return errHandOff
		}
		cn.url = u
	}
	return nil
}

// plainURL is the URL net/http would parse from a target that needs no
// escaping (its Path is the target, RawPath empty), or nil if it has a
// byte that would be escaped.
func plainURL(target string) *url.URL {
	for i := range len(target) {
		c := target[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~$&+,/:;=@", c) >= 0:
		default:
			return nil
		}
	}
	return &url.URL{Path: target}
}

// incomplete reports whether b may be the beginning of a header block
// (no CRLFCRLF in it yet).
func incomplete(b []byte) bool {
	for i := 0; i+3 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' && b[i+2] == '\r' && b[i+3] == '\n' {
			return false
		}
	}
	return true
}

// idleDeadline keeps a read deadline of IdleTimeout from now, moving it
// only when a second of it has passed.
func (cn *conn) idleDeadline() {
	now := time.Now()
	idle := cn.s.opt.IdleTimeout
	if cn.deadline != 0 && time.Unix(0, cn.deadline).Sub(now) >= idle-min(time.Second, idle/4) {
		return
	}
	cn.setReadDeadline(now.Add(idle))
}

func (cn *conn) setReadDeadline(t time.Time) {
	cn.deadline = t.UnixNano()
	cn.c.SetReadDeadline(t)
}

// serveRequest answers the request in cn.req; false when the connection
// must close after it.
func (cn *conn) serveRequest() (keepAlive bool) {
	req, r, w, target := &cn.req, cn.httpReq, &cn.w, cn.target
	r.Method = http.MethodGet
	r.URL = cn.url
	r.RequestURI = target
	r.Host = string(req.host)
	r.Close = req.close
	clear(r.Header)
	for i, v := range req.kept {
		if v != nil {
			r.Header[cn.s.opt.KeepHeaders[i]] = []string{string(v)}
		}
	}
	cn.br.Discard(req.size)
	w.reset(req.close || cn.s.shutting.Load())

	defer func() {
		if rec := recover(); rec != nil {
			keepAlive = false
			if rec != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				cn.s.opt.Log.Error("panic serving request", "path", target, "panic", fmt.Sprint(rec), "stack", string(buf))
			}
		}
	}()
	cn.s.opt.Handler.ServeHTTP(w, r)
	return w.finish()
}

// handOff gives the connection, with its unread bytes, to net/http; false
// if net/http is no longer taking any (the connection is then closed).
func (cn *conn) handOff() bool {
	cn.s.forget(cn)
	return cn.s.handoff.give(&handedConn{Conn: cn.c, br: cn.br, headerBy: time.Unix(0, cn.deadline)})
}

// handedConn is a connection net/http takes over: the bytes the loop
// read but did not consume come first, and the request being read is
// still due by the deadline the loop gave it.
type handedConn struct {
	net.Conn
	br *bufio.Reader
	// headerBy: no read deadline net/http sets is later than this until
	// it clears its own (net/http does once it has the request's
	// header): a slow client does not get a second ReadHeaderTimeout.
	headerBy time.Time
}

func (h *handedConn) SetReadDeadline(t time.Time) error {
	switch {
	case t.IsZero():
		h.headerBy = time.Time{}
	case !h.headerBy.IsZero() && t.After(h.headerBy):
		t = h.headerBy
	}
	return h.Conn.SetReadDeadline(t)
}

func (h *handedConn) SetDeadline(t time.Time) error {
	if err := h.SetReadDeadline(t); err != nil {
		return err
	}
	return h.Conn.SetWriteDeadline(t)
}

func (h *handedConn) Read(p []byte) (int, error) {
	if h.br != nil {
		if h.br.Buffered() > 0 {
			return h.br.Read(p)
		}
		h.br = nil
	}
	return h.Conn.Read(p)
}

// ReadFrom keeps the connection's own ReadFrom (sendfile) for net/http.
func (h *handedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := h.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{h.Conn}, r)
}

// NetConn is the connection the loop accepted (as tls.Conn's NetConn).
func (h *handedConn) NetConn() net.Conn { return h.Conn }

// handoffListener yields handed-off connections to net/http.
type handoffListener struct {
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "httploop" }
func (handoffAddr) String() string  { return "httploop hand-off" }
