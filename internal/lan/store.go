package lan

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/compress"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
)

// Source is the name of this store's NAR URLs:
// nar/lan/<hash part>-<NarHash base-32>.nar (store.NarRef). They name
// content, not a location: any LAN peer holding the path with that NarHash
// can serve it, so a URL stays good when a peer changes address, and a
// broken transfer resumes from another peer.
const Source = "lan"

// Lookup tuning for a LAN, where a peer answers in milliseconds or is
// broken.
const (
	queryTimeout   = time.Second
	hedge          = 100 * time.Millisecond
	maxNarInfoSize = 64 << 10
	hitTTL         = time.Minute
	// missTTL is short: a miss answered from summaries costs nothing to
	// repeat, and a path a neighbour just registered must be found.
	missTTL = time.Second
	// A LAN peer that sends nothing for stallTimeout, or less than
	// minRate over rateWindow, is broken: the transfer moves on.
	stallTimeout = 2 * time.Second
	rateWindow   = 4 * time.Second
	minRate      = 64 << 10
	// closureTimeout bounds a closure answer, for which the lookups of a
	// path's references wait.
	closureTimeout = 500 * time.Millisecond
)

// Store finds paths on LAN peers. It implements store.Store.
type Store struct {
	disc     *Discovery
	wait     time.Duration
	client   *http.Client
	swarm    *swarm.Finder
	log      *slog.Logger
	lookups  store.Lookups[*swarm.Found]
	prefetch chan struct{} // bounds lookups started ahead of Nix

	// hints are narinfos closure answers named, by hash part, until Nix
	// asks for the path: its lookup then starts with that peer answering
	// from the narinfo (see seedClosure).
	hintsMu sync.Mutex
	hints   map[string]hint
}

// hint is a peer's narinfo of a path, from its closure answer.
type hint struct {
	seed *peer
	at   time.Time
}

// maxHints bounds the hints kept, about 1 KiB each: two whole closure
// answers (a large NixOS system's closure is 2,000–3,000 paths). Beyond
// it a path is looked up as without a closure answer.
const maxHints = 2 * cache.ClosureMaxPaths

// maxPrefetch bounds the lookups of references started ahead of Nix.
const maxPrefetch = 16

// NewStore returns a store that finds paths through disc: summary peers
// whose summary may hold a path are asked by unicast at once; peers that
// speak only the original format, while one is around, by broadcast, with
// wait for their answers. opt tunes the lookup kit (its Accept is the
// verifier).
func NewStore(disc *Discovery, wait time.Duration, opt swarm.Options, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opt.Log = log
	if opt.QueryTimeout == 0 {
		opt.QueryTimeout = queryTimeout
	}
	if opt.Hedge == 0 {
		opt.Hedge = hedge
	}
	if opt.HitTTL == 0 {
		opt.HitTTL = hitTTL
	}
	if opt.MissTTL == 0 {
		opt.MissTTL = missTTL
	}
	if opt.StallTimeout == 0 {
		opt.StallTimeout, opt.RateWindow, opt.MinRate = stallTimeout, rateWindow, minRate
	}
	return &Store{
		disc:     disc,
		wait:     wait,
		client:   disc.peers.client,
		swarm:    swarm.NewFinder(opt),
		log:      log,
		prefetch: make(chan struct{}, maxPrefetch),
	}
}

// Reputation is the table LAN peers are ranked with.
func (s *Store) Reputation() *swarm.Reputation { return s.swarm.Reputation() }

// NarInfo finds hash on the LAN and returns the first peer's narinfo the
// verifier accepted, with its URL rewritten to a nar/lan/ URL of this
// daemon.
func (s *Store) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	x, ok := s.lookups.Peek(hash)
	if !ok && !s.disc.peers.originalAround() && len(s.disc.peers.candidates(hash)) == 0 {
		// Most of what Nix asks: no summary may hold it, and no peer that
		// speaks only the original format is around. Answered from memory;
		// the broadcast only lets such a peer announce itself.
		s.disc.Probe(hash)
		return nil, fmt.Errorf("%s: no LAN peer's summary holds it: %w", hash, store.ErrNotFound)
	}
	if !ok {
		x = s.lookup(hash)
	}
	ni, err := x.NarInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("on the LAN: %w", err)
	}
	x.PrefetchNAR() // Nix asks for it next
	return store.PeerNarInfo(ni, Source), nil
}

func (s *Store) lookup(hash string) *swarm.Found {
	return s.lookups.Get(hash, func() *swarm.Found {
		x := s.swarm.NewFound(hash)
		go s.run(hash, x, s.takeHint(hash))
		return x
	})
}

// addHint keeps seed's narinfo of hash for when Nix asks for the path.
func (s *Store) addHint(hash string, seed *peer) {
	s.hintsMu.Lock()
	defer s.hintsMu.Unlock()
	now := time.Now()
	if s.hints == nil {
		s.hints = map[string]hint{}
	}
	if len(s.hints) >= maxHints {
		for h, x := range s.hints {
			if now.Sub(x.at) >= hitTTL {
				delete(s.hints, h)
			}
		}
		if len(s.hints) >= maxHints {
			return
		}
	}
	s.hints[hash] = hint{seed: seed, at: now}
}

// takeHint returns the peer holding a fresh hint of hash, and forgets it.
func (s *Store) takeHint(hash string) *peer {
	s.hintsMu.Lock()
	defer s.hintsMu.Unlock()
	h, ok := s.hints[hash]
	if !ok {
		return nil
	}
	delete(s.hints, hash)
	if time.Since(h.at) >= hitTTL {
		return nil
	}
	return h.seed
}

// hinted reports whether a fresh hint of hash is kept.
func (s *Store) hinted(hash string) bool {
	s.hintsMu.Lock()
	defer s.hintsMu.Unlock()
	h, ok := s.hints[hash]
	return ok && time.Since(h.at) < hitTTL
}

// run offers the lookup kit the summary peers that may hold hash (seed,
// if given, first: a peer whose closure answer named the path) and, while
// an original peer is around, whoever answers a broadcast within the
// wait. With none of either, the miss is immediate.
func (s *Store) run(hash string, x *swarm.Found, seed *peer) {
	waitOriginal := s.disc.peers.originalAround()
	budget := queryTimeout
	if waitOriginal {
		budget += s.wait
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	cands := s.disc.peers.candidates(hash)
	holders := make(chan swarm.Holder, len(cands)+17)
	if seed != nil {
		holders <- seed // the kit asks each holder once: seed's own entry below is skipped
	}
	for _, addr := range cands {
		holders <- s.summaryPeer(addr, hash)
	}
	go s.ahead(x)
	if !waitOriginal {
		s.disc.Probe(hash)
		close(holders)
		s.swarm.Run(ctx, x, holders)
		return
	}
	go func() {
		defer close(holders)
		wctx, cancel := context.WithTimeout(ctx, s.wait)
		defer cancel()
		for a := range s.disc.Ask(wctx, hash) {
			holders <- &peer{s: s, addr: netip.AddrPortFrom(a.From, a.HTTPPort), narInfoPath: a.Path}
		}
	}()
	s.swarm.Run(ctx, x, holders)
}

// summaryPeer is the summary peer at addr as a holder of hash.
func (s *Store) summaryPeer(addr netip.AddrPort, hash string) *peer {
	return &peer{s: s, addr: addr, narInfoPath: "local/" + hash + ".narinfo", summary: true}
}

// ahead starts, once x found its path, the lookups of the path's
// references that a neighbour's summary may hold: Nix asks for them next
// and then finds them answered. The summary peer that sent the path is
// asked for the narinfos of its whole closure in one request; each seeds
// a lookup whose first holder answers from it. The lookups of the direct
// references are in the table meanwhile, started when that answer came,
// so that Nix, asking for them at once, waits for it rather than asking
// the peer again. Without a closure answer (an original peer, an older
// peerix) the references are looked up one by one, at most maxPrefetch at
// a time. References already looked up, or that no summary holds, cost
// nothing.
func (s *Store) ahead(x *swarm.Found) {
	<-x.Decided()
	ni, err := x.NarInfo(context.Background())
	if err != nil {
		return
	}
	missing := s.notLookedUp(ni.References)
	if len(missing) == 0 {
		return
	}
	if p, ok := x.Holder().(*peer); ok && p.summary {
		s.seedClosure(p, x.Hash(), missing)
		return
	}
	for _, hash := range missing {
		s.prefetch <- struct{}{}
		y := s.lookup(hash)
		go func() {
			<-y.Decided()
			<-s.prefetch
		}()
	}
}

// notLookedUp returns the hash parts of refs (store path names) that no
// fresh lookup covers and a neighbour's summary may hold.
func (s *Store) notLookedUp(refs []string) []string {
	var out []string
	for _, ref := range refs {
		if len(ref) < store.HashLen {
			continue
		}
		hash := ref[:store.HashLen]
		if _, ok := s.lookups.Peek(hash); ok || s.hinted(hash) || len(s.disc.peers.candidates(hash)) == 0 {
			continue
		}
		out = append(out, hash)
	}
	return out
}

// seedClosure puts lookups of refs (hash parts: the references Nix asks
// for next) in the table and asks p for the narinfos of root's closure.
// Each of refs then starts, with p answering from its narinfo as its
// first holder if the answer named it; every other path named becomes a
// hint, which starts a lookup the same way only when Nix asks for the
// path (most of a closure is often in Nix's store already: those are
// never verified nor fetched). A narinfo from a closure answer is checked
// and verified like any other answer.
func (s *Store) seedClosure(p *peer, root string, refs []string) {
	held := map[string]*swarm.Found{}
	for _, hash := range refs {
		s.lookups.Get(hash, func() *swarm.Found {
			y := s.swarm.NewFound(hash)
			held[hash] = y
			return y
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), closureTimeout)
	nis, err := p.closure(ctx, root)
	cancel()
	if err != nil {
		s.log.Debug("closure not answered; its paths are asked one by one", "peer", p.ID(), "hash", root, "err", err)
	}
	seeds := make(map[string]*peer, len(nis))
	for _, ni := range nis {
		hash, ok := store.HashOfPath(ni.StorePath)
		if !ok || seeds[hash] != nil {
			continue // the lookup kit would refuse it anyway
		}
		seed := s.summaryPeer(p.addr, hash)
		seed.known = ni
		seeds[hash] = seed
		if held[hash] == nil {
			if _, ok := s.lookups.Peek(hash); !ok {
				s.addHint(hash, seed)
			}
		}
	}
	// The hints are in place before any held lookup starts, so that each
	// one's own ahead finds its references hinted.
	for hash, y := range held {
		go s.run(hash, y, seeds[hash])
	}
}

// NAR streams the NAR of a nar/lan/ URL from the peers holding its
// NarHash (the lookup kit spools and verifies it before Nix gets a byte).
func (s *Store) NAR(ctx context.Context, u string, offset int64) (*store.NAR, error) {
	ref, err := store.ParseNarURL(u)
	if err != nil {
		return nil, err
	}
	if ref.Source != Source {
		return nil, fmt.Errorf("NAR URL %q is not a LAN one: %w", u, store.ErrBadRequest)
	}
	return s.lookup(ref.Hash).OpenNAR(ctx, ref.NarHash, offset)
}

// peer is a LAN peer as the lookup kit asks it: over HTTP, the narinfo at
// the path it named (or the summary route's), the NAR at the URL in its
// narinfo, resolved against its root as the original peerix does.
type peer struct {
	s           *Store
	addr        netip.AddrPort
	narInfoPath string
	summary     bool             // a summary peer: it has the closure route
	known       *narinfo.NarInfo // its narinfo, from its closure answer: not asked again
}

func (p *peer) ID() string { return holderID(p.addr) }

func (p *peer) base() string { return "http://" + p.addr.String() + "/" }

func (p *peer) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if p.known != nil {
		return p.known, nil
	}
	body, err := p.get(ctx, p.narInfoPath, "narinfo", maxNarInfoSize)
	if err != nil {
		return nil, err
	}
	ni, err := store.ParseNarInfo(body)
	if err != nil {
		return nil, fmt.Errorf("%w: narinfo: %v", swarm.ErrProtocol, err)
	}
	return ni, nil
}

// closure asks the peer for the narinfos of the closure of the path with
// hash part hash (the path itself left out), in one answer (cache's
// closure route). The answer stops at the first narinfo past
// ClosureMaxBytes.
func (p *peer) closure(ctx context.Context, hash string) ([]*narinfo.NarInfo, error) {
	body, err := p.get(ctx, "local/"+hash+cache.ClosureSuffix, "closure", cache.ClosureMaxBytes+maxNarInfoSize)
	if err != nil {
		return nil, err
	}
	return parseClosure(body)
}

// get fetches a small answer (what, at most limit bytes) from the peer's
// path: 404 is an honest "not here", any other status but 200 the peer's
// error.
func (p *peer) get(ctx context.Context, path, what string, limit int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base()+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s: %w", what, store.ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: %s: HTTP %d", swarm.ErrRemote, what, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(body) > limit {
		return nil, fmt.Errorf("%w: %s over %d bytes", swarm.ErrProtocol, what, limit)
	}
	return body, nil
}

// parseClosure parses a closure answer: narinfos separated by blank lines.
func parseClosure(body []byte) ([]*narinfo.NarInfo, error) {
	var out []*narinfo.NarInfo
	for len(body) > 0 {
		entry, rest, _ := bytes.Cut(body, []byte("\n\n"))
		body = rest
		if len(out) == cache.ClosureMaxPaths {
			return nil, fmt.Errorf("%w: closure of over %d paths", swarm.ErrProtocol, cache.ClosureMaxPaths)
		}
		ni, err := store.ParseNarInfo(entry)
		if err != nil {
			return nil, fmt.Errorf("%w: closure entry %d: %v", swarm.ErrProtocol, len(out), err)
		}
		out = append(out, ni)
	}
	return out, nil
}

func (p *peer) OpenNAR(ctx context.Context, nar swarm.NAR, offset, end int64) (io.ReadCloser, error) {
	u := nar.URL
	if u == "" {
		u = store.NarRef{Hash: nar.Hash, NarHash: nar.NarHash}.URL()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base()+u, nil)
	if err != nil {
		return nil, err
	}
	ranged := offset > 0 || end < nar.Size
	if ranged {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-"+strconv.FormatInt(end-1, 10))
	}
	// The holder compresses block by block where that is faster.
	req.Header.Set(cache.AcceptEncodingHeader, cache.BlocksEncoding)
	resp, err := p.s.client.Do(req)
	if err != nil {
		return nil, err
	}
	want := http.StatusOK
	if ranged {
		want = http.StatusPartialContent
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("NAR: %w", store.ErrNotFound)
	case resp.StatusCode != want:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: NAR: HTTP %d", swarm.ErrRemote, resp.StatusCode)
	case resp.Header.Get(cache.EncodingHeader) == cache.BlocksEncoding:
		return &blocksBody{Reader: compress.NewReader(resp.Body), body: resp.Body}, nil
	case resp.ContentLength >= 0 && resp.ContentLength != end-offset:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: NAR: %d bytes offered, %d expected", swarm.ErrLie, resp.ContentLength, end-offset)
	}
	return resp.Body, nil
}

// blocksBody is a NAR body in the block format: the NAR bytes, and how
// many came over the wire (WireBytes; the swarm kit stops reading at the
// range's end).
type blocksBody struct {
	*compress.Reader
	body io.Closer
}

func (b *blocksBody) Close() error { return b.body.Close() }

var (
	_ store.Store  = (*Store)(nil)
	_ swarm.Holder = (*peer)(nil)
)
