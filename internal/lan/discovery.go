package lan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Holder answers whether this machine holds a path it may share.
type Holder func(ctx context.Context, hash string) bool

// Answer is one peer's response to a request of ours.
type Answer struct {
	From netip.Addr
	Response
}

// Discovery owns the UDP socket: it answers other peers' requests for paths
// this machine shares, broadcasts this machine's beacon (and, while a peer
// speaking only the original format is around, its requests), and keeps
// the table of neighbours and their summaries.
type Discovery struct {
	conn     *net.UDPConn
	port     int    // the UDP port requests are broadcast to
	httpPort uint16 // advertised in answers and beacons
	holds    Holder
	version  func() (epoch, gen uint64)
	nets     *networks
	peers    *neighbours
	log      *slog.Logger

	mu      sync.Mutex
	pending map[uint32]chan<- Answer

	answering chan struct{} // bounds concurrent answers
	probes    *rate.Limiter // broadcasts that only look for original peers
	hellos    *rate.Limiter // beacons sent back to hellos
}

// maxConcurrentAnswers bounds the lookups a burst of requests can start;
// requests beyond it are dropped, as UDP allows.
const maxConcurrentAnswers = 32

// Options configure a Discovery.
type Options struct {
	Port     int    // UDP port (--lan-port); 0: any free one
	HTTPPort uint16 // this daemon's HTTP port, advertised
	Holds    Holder // whether this machine shares a path
	// Summary returns the version of the summary this daemon publishes at
	// /local/summary (zeros while none is built); its beacons carry it.
	Summary func() (epoch, gen uint64)
	// Client fetches neighbours' summaries; nil: a client with LAN timeouts.
	Client *http.Client
	Log    *slog.Logger
}

// Listen opens the UDP socket on opt.Port (all IPv4 addresses, broadcast
// enabled by Go's default socket options).
func Listen(opt Options) (*Discovery, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: opt.Port})
	if err != nil {
		return nil, fmt.Errorf("LAN discovery on UDP port %d: %w", opt.Port, err)
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Client == nil {
		opt.Client = newHTTPClient()
	}
	if opt.Summary == nil {
		opt.Summary = func() (uint64, uint64) { return 0, 0 }
	}
	d := &Discovery{
		conn:      conn,
		port:      conn.LocalAddr().(*net.UDPAddr).Port,
		httpPort:  opt.HTTPPort,
		holds:     opt.Holds,
		version:   opt.Summary,
		nets:      newNetworks(),
		log:       opt.Log,
		pending:   make(map[uint32]chan<- Answer),
		answering: make(chan struct{}, maxConcurrentAnswers),
		probes:    rate.NewLimiter(10, 20),
		hellos:    rate.NewLimiter(20, 20),
	}
	d.peers = newNeighbours(opt.Client, func(msg string, args ...any) { d.log.Info(msg, args...) })
	return d, nil
}

// maxConnsPerPeer bounds the connections this daemon opens to one LAN
// peer: a burst of Nix's lookups and downloads queues here rather than
// running into the peer's per-client cap (32 connections, fewer under a
// low descriptor limit: internal/connlimit), which sheds what is beyond.
const maxConnsPerPeer = 16

// newHTTPClient is the client LAN peers are asked with: short timeouts,
// since a LAN peer answers in milliseconds or not at all.
func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
		ResponseHeaderTimeout: 5 * time.Second,
		MaxConnsPerHost:       maxConnsPerPeer,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}}
}

// Port is the UDP port the socket is bound to.
func (d *Discovery) Port() int { return d.port }

// Run serves the socket until ctx ends: it answers requests, takes
// answers and beacons, broadcasts this daemon's beacon (a hello first, a
// goodbye last) and follows the neighbours' summaries. A malformed or
// foreign datagram is dropped silently; nothing a packet holds can stop
// the loop. Run returns when every goroutine it started has stopped.
func (d *Discovery) Run(ctx context.Context) error {
	// The table takes beacons before the first one can arrive: a
	// neighbour answers our hello within a millisecond.
	d.peers.start(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { d.beacons(ctx) })
	err := d.read(ctx)
	d.conn.Close()
	wg.Wait()
	d.peers.wait()
	return err
}

// beacons broadcasts this daemon's beacon every beaconEvery (a hello
// first, so that neighbours answer at once) and a goodbye at the end.
func (d *Discovery) beacons(ctx context.Context) {
	d.broadcast(d.beacon(true, false))
	t := time.NewTicker(beaconEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.broadcast(d.beacon(false, true))
			return
		case <-t.C:
			d.broadcast(d.beacon(false, false))
			d.peers.expire()
		}
	}
}

func (d *Discovery) beacon(hello, bye bool) []byte {
	epoch, gen := d.version()
	return AppendBeacon(nil, Beacon{HTTPPort: d.httpPort, Epoch: epoch, Gen: gen, Hello: hello, Bye: bye})
}

// read is the socket's read loop.
func (d *Discovery) read(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { d.conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, MaxDatagram+1)
	for {
		n, from, err := d.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			d.log.Debug("LAN read", "err", err)
			continue
		}
		if n > MaxDatagram {
			continue
		}
		ip := from.Addr().Unmap()
		if d.nets.own(ip) || !d.nets.neighbour(ip) {
			continue
		}
		msg, err := Decode(buf[:n])
		if err != nil {
			d.log.Debug("LAN datagram dropped", "from", from, "err", err)
			continue
		}
		switch m := msg.(type) {
		case *Request:
			d.peers.heardOriginal(ip)
			d.answer(ctx, from, *m)
		case *Response:
			d.peers.heardOriginal(ip)
			d.deliver(Answer{From: ip, Response: *m})
		case *Beacon:
			d.peers.beacon(ip, *m)
			if m.Hello && d.hellos.Allow() {
				d.send(d.beacon(false, false), from)
			}
		}
	}
}

// answer looks the path up off the read loop and replies unicast if it is
// held and shareable; otherwise it stays silent, as the original does.
func (d *Discovery) answer(ctx context.Context, to netip.AddrPort, req Request) {
	select {
	case d.answering <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-d.answering }()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if !d.holds(ctx, req.Hash) {
			return
		}
		d.send(AppendResponse(nil, Response{ID: req.ID, HTTPPort: d.httpPort, Path: "local/" + req.Hash + ".narinfo"}), to)
	}()
}

func (d *Discovery) send(b []byte, to netip.AddrPort) {
	if _, err := d.conn.WriteToUDPAddrPort(b, to); err != nil {
		d.log.Debug("LAN send", "to", to, "err", err)
	}
}

func (d *Discovery) deliver(a Answer) {
	d.mu.Lock()
	ch := d.pending[a.ID]
	d.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- a:
	default: // the asker has enough answers queued
	}
}

// resendAfter: UDP may lose a broadcast; one repeat makes a lost request
// rare without flooding the LAN.
const resendAfter = 150 * time.Millisecond

// Ask broadcasts a request for hash and delivers the answers, one per
// responder, until ctx ends; then the channel is closed.
func (d *Discovery) Ask(ctx context.Context, hash string) <-chan Answer {
	raw := make(chan Answer, 16)
	out := make(chan Answer, 16)
	id := d.register(raw)
	req := AppendRequest(nil, Request{ID: id, Hash: hash})
	d.broadcast(req)
	go func() {
		defer func() {
			d.unregister(id)
			close(out)
		}()
		resend := time.NewTimer(resendAfter)
		defer resend.Stop()
		seen := map[netip.AddrPort]bool{}
		for {
			select {
			case <-ctx.Done():
				return
			case <-resend.C:
				d.broadcast(req)
			case a := <-raw:
				key := netip.AddrPortFrom(a.From, a.HTTPPort)
				if seen[key] {
					continue
				}
				seen[key] = true
				select {
				case out <- a:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// Probe broadcasts a request for hash without waiting for answers, at a
// bounded rate: while no peer speaking only the original format is known,
// lookups do not wait for broadcast answers, but an original peer that
// holds something asked for answers, and from then on it is waited for.
func (d *Discovery) Probe(hash string) {
	if !d.probes.Allow() {
		return
	}
	d.broadcast(AppendRequest(nil, Request{ID: rand.Uint32(), Hash: hash}))
}

func (d *Discovery) register(ch chan<- Answer) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := rand.Uint32()
	for d.pending[id] != nil {
		id = rand.Uint32()
	}
	d.pending[id] = ch
	return id
}

func (d *Discovery) unregister(id uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.pending, id)
}

func (d *Discovery) broadcast(b []byte) {
	for _, nw := range d.nets.get() {
		d.send(b, netip.AddrPortFrom(nw.broadcast, uint16(d.port)))
	}
}

// Neighbours lists the peerix peers heard on the LAN.
func (d *Discovery) Neighbours() []NeighbourStatus { return d.peers.list() }
