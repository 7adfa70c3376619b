package lan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Holder answers whether this machine holds a path it may share.
type Holder func(ctx context.Context, hash string) bool

// Answer is one peer's response to a request of ours.
type Answer struct {
	From netip.Addr
	Response
}

// Discovery owns the UDP socket: it answers other peers' requests for paths
// this machine shares, and broadcasts this machine's own requests.
type Discovery struct {
	conn     *net.UDPConn
	port     int    // the UDP port requests are broadcast to
	httpPort uint16 // advertised in answers
	holds    Holder
	nets     *networks
	log      *slog.Logger

	mu      sync.Mutex
	pending map[uint32]chan<- Answer

	answering chan struct{} // bounds concurrent answers
}

// maxConcurrentAnswers bounds the lookups a burst of requests can start;
// requests beyond it are dropped, as UDP allows.
const maxConcurrentAnswers = 32

// Listen opens the UDP socket on port (all IPv4 addresses, broadcast
// enabled by Go's default socket options).
func Listen(port int, httpPort uint16, holds Holder, log *slog.Logger) (*Discovery, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, fmt.Errorf("LAN discovery on UDP port %d: %w", port, err)
	}
	return &Discovery{
		conn:      conn,
		port:      conn.LocalAddr().(*net.UDPAddr).Port,
		httpPort:  httpPort,
		holds:     holds,
		nets:      newNetworks(),
		log:       log,
		pending:   make(map[uint32]chan<- Answer),
		answering: make(chan struct{}, maxConcurrentAnswers),
	}, nil
}

// Port is the UDP port the socket is bound to.
func (d *Discovery) Port() int { return d.port }

// Serve reads datagrams until ctx ends. A malformed or foreign datagram is
// dropped silently; nothing a packet holds can stop the loop.
func (d *Discovery) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		d.conn.Close()
	}()
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
			d.answer(ctx, from, *m)
		case *Response:
			d.deliver(Answer{From: ip, Response: *m})
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
		resp := AppendResponse(nil, Response{ID: req.ID, HTTPPort: d.httpPort, Path: "local/" + req.Hash + ".narinfo"})
		if _, err := d.conn.WriteToUDPAddrPort(resp, to); err != nil {
			d.log.Debug("LAN answer", "to", to, "err", err)
		}
	}()
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
	id := rand.Uint32()
	d.mu.Lock()
	for d.pending[id] != nil {
		id = rand.Uint32()
	}
	d.pending[id] = raw
	d.mu.Unlock()

	req := AppendRequest(nil, Request{ID: id, Hash: hash})
	d.broadcast(req)
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.pending, id)
			d.mu.Unlock()
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

func (d *Discovery) broadcast(b []byte) {
	for _, nw := range d.nets.get() {
		to := netip.AddrPortFrom(nw.broadcast, uint16(d.port))
		if _, err := d.conn.WriteToUDPAddrPort(b, to); err != nil {
			d.log.Debug("LAN broadcast", "to", to, "err", err)
		}
	}
}
