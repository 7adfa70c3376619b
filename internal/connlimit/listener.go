package connlimit

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of Options.
const (
	DefaultPeerTimeout  = 30 * time.Second
	DefaultLocalTimeout = 5 * time.Minute
	DefaultStallAfter   = 5 * time.Second
	// newGrace: a connection that has not sent a request yet is not shed
	// before this (an honest client sends one at once).
	newGrace = time.Second
	// chunk is the most written in one go: a write deadline covers one
	// chunk, so a response cut for "no progress" moved less than this in
	// a whole timeout (64 KiB in 30 s: 2 KiB/s).
	chunk = 64 << 10
	// localWriteChunk is chunk for Write on this machine's own
	// connections, whose timeout is minutes (1 MiB in 5 min: 3.5 KiB/s):
	// a NAR streaming to Nix from a ring goes out in a write per
	// megabyte, not per 64 KiB.
	localWriteChunk = 1 << 20
	// warnEvery bounds the warnings about refused, shed and cut peers.
	warnEvery = 10 * time.Second
)

// Options configure a Listener.
type Options struct {
	// Budget says how many connections peers may hold (PeerConns,
	// PerClient); the zero value means ForLimit(1024).
	Budget Budget
	// PeerTimeout: a response to another machine that makes no progress
	// for this long is cut; 0 means 30 s. One that progresses is never cut.
	PeerTimeout time.Duration
	// LocalTimeout is the same for this machine's own clients; 0 means 5
	// minutes.
	LocalTimeout time.Duration
	// StallAfter: a peer connection whose response has made no progress
	// for this long may be shed to admit a newcomer; 0 means 5 s.
	StallAfter time.Duration
	// Local tells which clients are this machine (never limited); nil
	// means loopback addresses.
	Local func(netip.Addr) bool
	Log   *slog.Logger
}

// Listener wraps a TCP listener: connections from this machine pass
// freely; connections from other machines are held to the budget. A
// newcomer beyond PerClient connections of its client, or beyond
// PeerConns in all, takes the place of an idle connection (of that client,
// or anybody's), then of one that has not sent a request for a second,
// then of one whose response has stalled for StallAfter; when there is
// none, the newcomer is closed at once. Every connection's writes carry a
// deadline that moves with progress (PeerTimeout, LocalTimeout). When the
// process runs out of descriptors, a peer connection is shed so that the
// next connection (this machine's Nix, waiting in the backlog) is
// accepted. Give ConnState to the http.Server, so the Listener knows which
// connections are idle.
type Listener struct {
	net.Listener
	opt Options

	mu        sync.Mutex
	peers     map[*Conn]struct{}
	perClient map[netip.Prefix]int
	lastWarn  time.Time
	warned    Stats

	refused, shed, cut atomic.Uint64
}

// Stats counts what the Listener did to peers since it started.
type Stats struct {
	PeerConns int    // peer connections open now
	Refused   uint64 // newcomers closed at once
	Shed      uint64 // connections closed for a newcomer
	Cut       uint64 // responses cut for making no progress
}

// NewListener wraps ln.
func NewListener(ln net.Listener, opt Options) *Listener {
	if opt.Budget.PeerConns <= 0 {
		opt.Budget = ForLimit(1024)
	}
	if opt.PeerTimeout <= 0 {
		opt.PeerTimeout = DefaultPeerTimeout
	}
	if opt.LocalTimeout <= 0 {
		opt.LocalTimeout = DefaultLocalTimeout
	}
	if opt.StallAfter <= 0 {
		opt.StallAfter = DefaultStallAfter
	}
	if opt.Local == nil {
		opt.Local = netip.Addr.IsLoopback
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	return &Listener{
		Listener:  ln,
		opt:       opt,
		peers:     make(map[*Conn]struct{}),
		perClient: make(map[netip.Prefix]int),
	}
}

// Stats reports the Listener's counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	n := len(l.peers)
	l.mu.Unlock()
	return Stats{PeerConns: n, Refused: l.refused.Load(), Shed: l.shed.Load(), Cut: l.cut.Load()}
}

// Accept returns the next connection the budget admits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: free one held by a peer, so the
				// connection waiting in the backlog (perhaps this
				// machine's Nix) gets one.
				if l.shedOne() {
					continue
				}
			}
			return nil, err
		}
		if conn := l.admit(c); conn != nil {
			return conn, nil
		}
	}
}

// clientOf is the address a connection came from, and the prefix that
// counts as one client: the address for IPv4, its /64 for IPv6.
func clientOf(c net.Conn) (netip.Addr, netip.Prefix) {
	var ip netip.Addr
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return ip, p
}

func (l *Listener) admit(c net.Conn) *Conn {
	ip, client := clientOf(c)
	now := time.Now()
	conn := &Conn{Conn: c, l: l, client: client, state: http.StateNew, since: now}
	conn.progress.Store(now.UnixNano())
	if ip.IsValid() && l.opt.Local(ip) {
		conn.local, conn.timeout = true, l.opt.LocalTimeout
		return conn
	}
	conn.timeout = l.opt.PeerTimeout
	b := l.opt.Budget
	var victims []*Conn
	l.mu.Lock()
	if l.perClient[client] >= b.PerClient {
		v := l.victimLocked(now, func(x *Conn) bool { return x.client == client })
		if v == nil {
			l.mu.Unlock()
			l.refuse(c)
			return nil
		}
		l.releaseLocked(v)
		victims = append(victims, v)
	}
	if len(l.peers) >= b.PeerConns {
		v := l.victimLocked(now, nil)
		if v == nil {
			l.mu.Unlock()
			for _, v := range victims {
				l.shedConn(v)
			}
			l.refuse(c)
			return nil
		}
		l.releaseLocked(v)
		victims = append(victims, v)
	}
	l.peers[conn] = struct{}{}
	l.perClient[client]++
	conn.registered = true
	l.mu.Unlock()
	for _, v := range victims {
		l.shedConn(v)
	}
	return conn
}

// victimLocked chooses the peer connection to close for a newcomer (among
// those match accepts; nil: all): the longest idle, else the longest
// without a first request (past newGrace), else the longest stalled
// response (past StallAfter); nil if there is none. Never a response that
// is making progress.
func (l *Listener) victimLocked(now time.Time, match func(*Conn) bool) *Conn {
	var best *Conn
	bestRank, bestAge := 3, time.Duration(-1)
	for c := range l.peers {
		if match != nil && !match(c) {
			continue
		}
		rank, age := 3, time.Duration(0)
		switch {
		case c.state == http.StateIdle:
			rank, age = 0, now.Sub(c.since)
		case c.state == http.StateNew && now.Sub(c.since) >= newGrace:
			rank, age = 1, now.Sub(c.since)
		case c.writing.Load():
			if stalled := now.Sub(time.Unix(0, c.progress.Load())); stalled >= l.opt.StallAfter {
				rank, age = 2, stalled
			}
		}
		if rank < bestRank || rank == bestRank && rank < 3 && age > bestAge {
			best, bestRank, bestAge = c, rank, age
		}
	}
	if bestRank == 3 {
		return nil
	}
	return best
}

// shedOne closes the best victim among all peer connections; false if
// there is none.
func (l *Listener) shedOne() bool {
	l.mu.Lock()
	v := l.victimLocked(time.Now(), nil)
	if v != nil {
		l.releaseLocked(v)
	}
	l.mu.Unlock()
	if v == nil {
		return false
	}
	l.shedConn(v)
	return true
}

func (l *Listener) releaseLocked(c *Conn) {
	if !c.registered {
		return
	}
	c.registered = false
	delete(l.peers, c)
	if n := l.perClient[c.client] - 1; n > 0 {
		l.perClient[c.client] = n
	} else {
		delete(l.perClient, c.client)
	}
}

func (l *Listener) release(c *Conn) {
	l.mu.Lock()
	l.releaseLocked(c)
	l.mu.Unlock()
}

func (l *Listener) refuse(c net.Conn) {
	l.refused.Add(1)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // a reset: no FIN_WAIT state kept for it
	}
	c.Close()
	l.warn()
}

func (l *Listener) shedConn(c *Conn) {
	l.shed.Add(1)
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Conn.Close()
	l.warn()
}

// warn logs what was done to peers, at most every warnEvery.
func (l *Listener) warn() {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.lastWarn) < warnEvery {
		l.mu.Unlock()
		return
	}
	l.lastWarn = now
	s := Stats{PeerConns: len(l.peers), Refused: l.refused.Load(), Shed: l.shed.Load(), Cut: l.cut.Load()}
	prev := l.warned
	l.warned = s
	l.mu.Unlock()
	l.opt.Log.Warn("peers hold all the connections their budget allows: the newest refused, idle and stalled ones closed",
		"peer_conns", s.PeerConns, "budget", l.opt.Budget.PeerConns, "per_client", l.opt.Budget.PerClient,
		"refused", s.Refused-prev.Refused, "shed", s.Shed-prev.Shed, "cut", s.Cut-prev.Cut)
}

// ConnState is the http.Server's ConnState hook: it tells the Listener
// which connections are idle or between requests.
// A connection that wraps a Conn says so with NetConn (as tls.Conn does).
func (l *Listener) ConnState(c net.Conn, s http.ConnState) {
	if w, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = w.NetConn()
	}
	conn, ok := c.(*Conn)
	if !ok || conn.l != l {
		return
	}
	switch s {
	case http.StateClosed:
		l.release(conn)
	default:
		if conn.local {
			return
		}
		l.mu.Lock()
		conn.state, conn.since = s, time.Now()
		l.mu.Unlock()
	}
}

// Conn is a connection the Listener accepted: its writes carry a deadline
// that moves with progress.
type Conn struct {
	net.Conn
	l       *Listener
	local   bool
	client  netip.Prefix
	timeout time.Duration

	// Guarded by l.mu.
	registered bool
	state      http.ConnState
	since      time.Time

	writing  atomic.Bool
	progress atomic.Int64 // unix nanoseconds of the last byte written to a peer (this machine's connections are never shed)
	deadline atomic.Int64 // the write deadline set, unix nanoseconds; 0: none
	closed   sync.Once
}

// Write writes p in chunks, each with the write deadline moved to timeout
// from now (see refresh): a client that takes
// nothing for the whole timeout is cut off, one that keeps taking is not.
func (c *Conn) Write(p []byte) (int, error) {
	c.writing.Store(true)
	defer c.writing.Store(false)
	most := chunk
	if c.local {
		most = localWriteChunk
	}
	n := 0
	for len(p) > 0 {
		b := p[:min(len(p), most)]
		c.refresh()
		m, err := c.Conn.Write(b)
		n += m
		if m > 0 && !c.local {
			c.progress.Store(time.Now().UnixNano())
		}
		if err != nil {
			return n, c.writeErr(err)
		}
		p = p[m:]
	}
	return n, nil
}

// ReadFrom sends r in chunks with the same deadlines, through the
// connection's own ReadFrom (sendfile for files).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{c}, r)
	}
	c.writing.Store(true)
	defer c.writing.Store(false)
	// sendfile looks through one *io.LimitedReader only: one over a file
	// (a NAR's, a spool's) is cut into chunks, not wrapped in another
	// (which sent it through a 32 KiB buffer instead).
	lr, limited := r.(*io.LimitedReader)
	var n int64
	for {
		c.refresh()
		part := &io.LimitedReader{R: r, N: chunk}
		if limited {
			part = &io.LimitedReader{R: lr.R, N: min(chunk, lr.N)}
		}
		want := part.N
		m, err := rf.ReadFrom(part)
		n += m
		if limited {
			lr.N -= m
		}
		if m > 0 && !c.local {
			c.progress.Store(time.Now().UnixNano())
		}
		if err != nil {
			return n, c.writeErr(err)
		}
		if m < want || limited && lr.N <= 0 {
			return n, nil
		}
	}
}

func (c *Conn) refresh() {
	now := time.Now()
	d := c.deadline.Load()
	// Setting a deadline costs a timer reset: not for every chunk, only
	// when it was set more than a second (or a quarter timeout) ago.
	if d != 0 && time.Unix(0, d).Sub(now) >= c.timeout-min(time.Second, c.timeout/4) {
		return
	}
	next := now.Add(c.timeout)
	c.deadline.Store(next.UnixNano())
	c.Conn.SetWriteDeadline(next)
}

func (c *Conn) writeErr(err error) error {
	var ne net.Error
	if !c.local && errors.As(err, &ne) && ne.Timeout() {
		c.l.cut.Add(1)
		c.l.warn()
	}
	return err
}

// SetWriteDeadline sets the deadline and remembers it, so that the next
// write knows whether to move it. Clearing it changes nothing: every write
// carries the rolling deadline anyway (net/http clears it before each
// request, and setting it twice a request is measurable at 60k requests/s).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	c.store(t)
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets both deadlines (and remembers the write one); clearing
// clears only the read deadline (see SetWriteDeadline).
func (c *Conn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		return c.Conn.SetReadDeadline(t)
	}
	c.store(t)
	return c.Conn.SetDeadline(t)
}

func (c *Conn) store(t time.Time) { c.deadline.Store(t.UnixNano()) }

// Close closes the connection and gives its place back.
func (c *Conn) Close() error {
	c.closed.Do(func() { c.l.release(c) })
	return c.Conn.Close()
}
