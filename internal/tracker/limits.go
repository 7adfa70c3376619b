package tracker

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
)

// Limits are the tracker's quotas and rate limits (docs/protocol.md,
// "Quotas and rate limits"). A zero field takes its default; a negative
// one means no limit. Sources on loopback (tests, a load generator on the
// tracker's machine) are exempt from the per-network ones.
type Limits struct {
	// PeersPerNet: live peers registered from one source network (an
	// IPv4 /24 or an IPv6 /48); a new registration beyond is refused.
	// Default 256.
	PeersPerNet int
	// HashesPerPeer: hashes the tracker holds for one peer. Default
	// 200,000 (a NixOS workstation shares 20,000 to 60,000).
	HashesPerPeer int64
	// HashesPerNet: hashes of all live peers of one source network
	// together. Default 1,000,000.
	HashesPerNet int64

	// Request rates, in tokens per second with a burst. A request costs
	// one token, a packages request one more per 1,000 hashes (before the
	// body is read, per 40,000 bytes of it).
	//
	// NetRead: reads (/v1/find, /v1/peers, /v1/info) per source network;
	// default 200/s, burst 2,000. The long polls of /v1/index are not
	// counted: a peer keeps one pending.
	NetReadRate  float64
	NetReadBurst int
	// NetWrite: signed writes per source network; default 100/s, burst
	// 5,000 (a few hundred peers behind one NAT address starting at once).
	NetWriteRate  float64
	NetWriteBurst int
	// PeerWrite: signed writes per peer identity, counted only once the
	// signature verified; default 5/s, burst 500 (a full set of
	// HashesPerPeer hashes, sent in parts, with room to retry).
	PeerWriteRate  float64
	PeerWriteBurst int

	// BodyBudget: bytes of request bodies read and being processed at
	// once (each counted as its Content-Length, or MaxBodySize when not
	// given); a write that finds no room within BodyWait is answered 503
	// with Retry-After. Default 64 MiB: bodies cannot pile up in memory
	// behind a slow database.
	BodyBudget int64
	BodyWait   time.Duration
}

// DefaultLimits are the limits a tracker runs with.
func DefaultLimits() Limits {
	return Limits{
		PeersPerNet:    256,
		HashesPerPeer:  200_000,
		HashesPerNet:   1_000_000,
		NetReadRate:    200,
		NetReadBurst:   2000,
		NetWriteRate:   100,
		NetWriteBurst:  5000,
		PeerWriteRate:  5,
		PeerWriteBurst: 500,
		BodyBudget:     64 << 20,
		BodyWait:       5 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	def := func(v *int, dv int) {
		if *v == 0 {
			*v = dv
		}
	}
	def64 := func(v *int64, dv int64) {
		if *v == 0 {
			*v = dv
		}
	}
	deff := func(v *float64, dv float64) {
		if *v == 0 {
			*v = dv
		}
	}
	def(&l.PeersPerNet, d.PeersPerNet)
	def64(&l.HashesPerPeer, d.HashesPerPeer)
	def64(&l.HashesPerNet, d.HashesPerNet)
	deff(&l.NetReadRate, d.NetReadRate)
	def(&l.NetReadBurst, d.NetReadBurst)
	deff(&l.NetWriteRate, d.NetWriteRate)
	def(&l.NetWriteBurst, d.NetWriteBurst)
	deff(&l.PeerWriteRate, d.PeerWriteRate)
	def(&l.PeerWriteBurst, d.PeerWriteBurst)
	def64(&l.BodyBudget, d.BodyBudget)
	if l.BodyWait == 0 {
		l.BodyWait = d.BodyWait
	}
	return l
}

// NoLimits turns every quota and rate limit off (tests of other things).
func NoLimits() Limits {
	return Limits{PeersPerNet: -1, HashesPerPeer: -1, HashesPerNet: -1,
		NetReadRate: -1, NetWriteRate: -1, PeerWriteRate: -1, BodyBudget: -1}
}

// positive turns "negative: no limit" into the registry's "0: no limit".
func positive[T int | int64](v T) T { return max(v, 0) }

// source is where a request came from, as quotas and holder selection see
// it.
type source struct {
	ip netip.Addr
	// net is the source network: the /24 of an IPv4 address, the /48 of
	// an IPv6 one; "" for loopback, which is exempt from network quotas.
	net string
}

// sourceOf reads the request's TCP peer address ("ip:port"). Behind a
// reverse proxy every request comes from the proxy: run the tracker
// without one, or every peer shares the proxy's network.
func sourceOf(remoteAddr string) source {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return source{net: "unknown"}
	}
	ip = ip.Unmap().WithZone("")
	s := source{ip: ip}
	switch {
	case ip.IsLoopback():
	case ip.Is4():
		s.net = netip.PrefixFrom(ip, 24).Masked().String()
	default:
		s.net = netip.PrefixFrom(ip, 48).Masked().String()
	}
	return s
}

// buckets are token buckets by key (a source network, a peer ID), at most
// maxBuckets of them: when full, the idle ones (full buckets) are dropped,
// then, if none is idle, an arbitrary one. A nil *buckets allows all.
type buckets struct {
	rate  rate.Limit
	burst int

	mu sync.Mutex
	m  map[string]*rate.Limiter
}

// maxBuckets bounds each buckets' memory (about 200 bytes a bucket).
const maxBuckets = 1 << 16

func newBuckets(perSecond float64, burst int) *buckets {
	if perSecond < 0 {
		return nil
	}
	return &buckets{rate: rate.Limit(perSecond), burst: max(burst, 1), m: make(map[string]*rate.Limiter)}
}

// take takes cost tokens from key's bucket. If there are not enough it
// takes none and says how long until there would be.
func (b *buckets) take(key string, cost int, now time.Time) (ok bool, retry time.Duration) {
	if b == nil {
		return true, 0
	}
	cost = max(min(cost, b.burst), 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[key]
	if l == nil {
		if len(b.m) >= maxBuckets {
			b.gc(now)
		}
		l = rate.NewLimiter(b.rate, b.burst)
		b.m[key] = l
	}
	r := l.ReserveN(now, cost)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// gc drops idle buckets; if none is, an arbitrary one. b.mu is held.
func (b *buckets) gc(now time.Time) {
	for k, l := range b.m {
		if l.TokensAt(now) >= float64(b.burst) {
			delete(b.m, k)
		}
	}
	for k := range b.m {
		if len(b.m) < maxBuckets {
			break
		}
		delete(b.m, k)
	}
}

// bodyBudget bounds the request bodies in memory; nil allows all.
type bodyBudget struct {
	sem  *semaphore.Weighted
	size int64
	wait time.Duration
}

func newBodyBudget(size int64, wait time.Duration) *bodyBudget {
	if size < 0 {
		return nil
	}
	return &bodyBudget{sem: semaphore.NewWeighted(size), size: size, wait: wait}
}

// acquire waits (bounded) for room for n bytes and returns the release, or
// false when there was none in time.
func (b *bodyBudget) acquire(ctx context.Context, n int64) (func(), bool) {
	if b == nil {
		return func() {}, true
	}
	n = min(max(n, 1), b.size)
	ctx, cancel := context.WithTimeout(ctx, b.wait)
	defer cancel()
	if b.sem.Acquire(ctx, n) != nil {
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { b.sem.Release(n) }) }, true
}
