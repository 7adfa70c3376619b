package p2p

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
	"github.com/peerix/peerix/internal/swarm"
)

// Source is the name of this store's NAR URLs:
// nar/p2p/<hash part>-<NarHash base-32>.nar (store.NarRef). They name
// content, not a peer: any holder of the path with that NarHash can serve
// it, so a broken transfer resumes from another holder.
const Source = "p2p"

// Finder is what the Store needs from the tracker: the live peers holding
// a store hash, with their addresses (direct and circuit).
type Finder interface {
	Find(ctx context.Context, hash string) ([]peer.AddrInfo, error)
}

// Timing of lookups; variables for tests.
var (
	// findTimeout bounds the tracker's answer.
	findTimeout = 2 * time.Second
	// lookupTimeout bounds a whole narinfo lookup: tracker plus holders,
	// their narinfo checked by trust included.
	lookupTimeout = 4 * time.Second
)

const (
	// maxHolders: holders considered per path.
	maxHolders = 16
	// maxSeen bounds the table of holders the tracker named lately.
	maxSeen = 4096
	// upgradeCheck: how often a NAR stream on a relayed connection looks
	// for a direct connection to move to.
	upgradeCheck = 250 * time.Millisecond
	// holderAddrTTL: how long tracker-given addresses stay in the peerstore.
	holderAddrTTL = 10 * time.Minute
)

// Store finds store paths on peers through the tracker and fetches them
// over the peer protocols; the swarm kit chooses among holders and
// verifies what they send. It implements store.Store.
type Store struct {
	h      host.Host
	finder Finder
	swarm  *swarm.Finder
	log    *slog.Logger

	transfers atomic.Int64 // for connection-protection tags
	lastWarn  atomic.Int64 // unix nanoseconds of the last tracker warning
	index     atomic.Pointer[summary.Follower]
	lookups   store.Lookups[*swarm.Found]

	mu   sync.Mutex
	seen map[peer.ID]seenPeer // holders the tracker named lately, for Peers
}

type seenPeer struct {
	addrs []ma.Multiaddr
	at    time.Time
}

// NewStore returns a store that asks finder (the tracker) who holds a path
// and fetches it from them through h; opt tunes the lookup kit (its
// Accept is the verifier).
func NewStore(h host.Host, finder Finder, opt swarm.Options, log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	opt.Log = log
	return &Store{
		h:      h,
		finder: finder,
		swarm:  swarm.NewFinder(opt),
		log:    log,
		seen:   make(map[peer.ID]seenPeer),
	}
}

// UseIndex makes NarInfo answer misses from ix (the tracker's hash index)
// while it is current, instead of asking the tracker.
func (s *Store) UseIndex(ix *summary.Follower) { s.index.Store(ix) }

// errAbsent: a miss the index answered.
var errAbsent = fmt.Errorf("no peer holds it (local index): %w", store.ErrNotFound)

// Reputation is the table the store ranks peers with.
func (s *Store) Reputation() *swarm.Reputation { return s.swarm.Reputation() }

// NarInfo finds hash on peers and returns the first holder's narinfo that
// the verifier accepted, with its URL rewritten to a nar/p2p/ URL of this
// daemon.
func (s *Store) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	if ix := s.index.Load(); ix != nil && ix.Absent(hash) {
		return nil, errAbsent
	}
	x := s.lookup(hash)
	ni, err := x.NarInfo(ctx)
	if err != nil {
		return nil, err
	}
	x.PrefetchNAR() // Nix asks for it next
	return store.PeerNarInfo(ni, Source), nil
}

// lookup returns the fresh lookup of hash, starting one if there is none.
func (s *Store) lookup(hash string) *swarm.Found {
	return s.lookups.Get(hash, func() *swarm.Found {
		x := s.swarm.NewFound(hash)
		go s.run(hash, x)
		return x
	})
}

// run asks the tracker for holders and lets the kit ask them.
func (s *Store) run(hash string, x *swarm.Found) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	holders, err := s.holders(ctx, hash)
	if err != nil {
		if s.warnEvery(30 * time.Second) {
			s.log.Warn("tracker lookup failed; answering not found", "hash", hash, "err", err)
		} else {
			s.log.Debug("tracker lookup failed; answering not found", "hash", hash, "err", err)
		}
	}
	ch := make(chan swarm.Holder, len(holders))
	for _, id := range s.rank(holders) {
		ch <- &holder{s: s, id: id}
	}
	close(ch)
	s.swarm.Run(ctx, x, ch)
}

// warnEvery reports whether a warning is due: at most one per interval.
func (s *Store) warnEvery(interval time.Duration) bool {
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	return now-last >= int64(interval) && s.lastWarn.CompareAndSwap(last, now)
}

// holders asks the tracker and remembers the peers for Peers.
func (s *Store) holders(ctx context.Context, hash string) ([]peer.AddrInfo, error) {
	fctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	found, err := s.finder.Find(fctx, hash)
	if err != nil {
		return nil, err
	}
	var out []peer.AddrInfo
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ai := range found {
		if f, ok := s.h.(interface {
			FilterAddrs([]ma.Multiaddr) []ma.Multiaddr
		}); ok {
			// Addresses are judged before they reach the peerstore: a
			// tracker entry must not make us dial our own ports.
			if kept := f.FilterAddrs(ai.Addrs); len(kept) != len(ai.Addrs) {
				s.log.Debug("holder addresses dropped by class", "peer", ai.ID, "kept", kept, "named", ai.Addrs)
				ai.Addrs = kept
			}
		}
		if ai.ID == "" || ai.ID == s.h.ID() ||
			len(ai.Addrs) == 0 && s.h.Network().Connectedness(ai.ID) != network.Connected {
			continue
		}
		if len(s.seen) >= maxSeen {
			for id, sp := range s.seen {
				if now.Sub(sp.at) > 10*time.Minute {
					delete(s.seen, id)
				}
			}
		}
		if len(s.seen) < maxSeen {
			s.seen[ai.ID] = seenPeer{addrs: ai.Addrs, at: now}
		}
		out = append(out, ai)
		if len(out) == maxHolders {
			break
		}
	}
	return out, nil
}

// rank orders holders by reputation and adds their addresses to the
// peerstore, so that streams to them can dial.
func (s *Store) rank(holders []peer.AddrInfo) []peer.ID {
	ids := make([]string, len(holders))
	for i, ai := range holders {
		ids[i] = ai.ID.String()
		s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, holderAddrTTL)
	}
	out := make([]peer.ID, 0, len(ids))
	for _, id := range s.swarm.Reputation().Rank(ids) {
		out = append(out, peer.ID(mustDecode(id)))
	}
	return out
}

func mustDecode(s string) peer.ID {
	id, _ := peer.Decode(s)
	return id
}

// NAR streams the NAR of a nar/p2p/ URL from the holders of its NarHash
// (the swarm kit spools and verifies it before Nix gets a byte).
func (s *Store) NAR(ctx context.Context, u string, offset int64) (*store.NAR, error) {
	ref, err := store.ParseNarURL(u)
	if err != nil {
		return nil, err
	}
	if ref.Source != Source {
		return nil, fmt.Errorf("NAR URL %q is not a P2P one: %w", u, store.ErrBadRequest)
	}
	return s.lookup(ref.Hash).OpenNAR(ctx, ref.NarHash, offset)
}

// waitHolePunch waits for our DCUtR handler when the host knows it is
// behind NAT (see Host.WaitHolePunch).
func (s *Store) waitHolePunch(ctx context.Context) {
	if w, ok := s.h.(interface{ WaitHolePunch(context.Context) }); ok {
		w.WaitHolePunch(ctx)
	}
}

// holder is a peer the tracker named, as the swarm kit asks it.
type holder struct {
	s  *Store
	id peer.ID
}

func (p *holder) ID() string { return p.id.String() }

func (p *holder) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	p.s.waitHolePunch(ctx)
	return QueryNarInfo(ctx, p.s.h, p.id, hash)
}

// OpenNAR opens the NAR by content, on the best connection to the peer;
// a stream on a relayed connection moves to a direct one as soon as hole
// punching made one (open streams do not move by themselves).
func (p *holder) OpenNAR(ctx context.Context, nar swarm.NAR, offset, end int64) (io.ReadCloser, error) {
	p.s.waitHolePunch(ctx)
	b := &upgradingBody{p: p, ctx: ctx, nar: nar, pos: offset, end: end}
	if err := b.open(); err != nil {
		return nil, err
	}
	tag := "peerix-nar-" + strconv.FormatInt(p.s.transfers.Add(1), 10)
	p.s.h.ConnManager().Protect(p.id, tag)
	b.unprotect = func() { p.s.h.ConnManager().Unprotect(p.id, tag) }
	return b, nil
}

// upgradingBody is one holder's NAR stream; it reopens on a direct
// connection at the byte reached once one exists.
type upgradingBody struct {
	p         *holder
	ctx       context.Context
	nar       swarm.NAR
	pos, end  int64
	wire      int64 // wire bytes of bodies closed so far
	body      io.ReadCloser
	relayed   bool
	lastCheck time.Time
	unprotect func()
	closed    atomic.Bool
	mu        sync.Mutex
}

func (b *upgradingBody) open() error {
	size, body, err := OpenNAR(b.ctx, b.p.s.h, b.p.id, b.nar.Hash, b.nar.NarHash, b.pos, b.end-b.pos, true)
	if err != nil {
		return err
	}
	if size != b.nar.Size {
		body.Close()
		return fmt.Errorf("%w: NAR of %d bytes, %d expected", swarm.ErrLie, size, b.nar.Size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		body.Close()
		return errors.New("closed")
	}
	b.body = body
	b.relayed = false
	if r, ok := body.(interface{ Relayed() bool }); ok {
		b.relayed = r.Relayed()
	}
	return nil
}

func (b *upgradingBody) Read(p []byte) (int, error) {
	if b.relayed {
		if now := time.Now(); now.Sub(b.lastCheck) >= upgradeCheck {
			b.lastCheck = now
			if ConnectionTo(b.p.s.h, b.p.id).Direct {
				b.p.s.log.Debug("NAR transfer moves to a direct connection", "peer", b.p.id, "hash", b.nar.Hash)
				b.mu.Lock()
				old := b.body
				b.mu.Unlock()
				b.wire += wireBytes(old)
				old.Close()
				if err := b.open(); err != nil {
					return 0, err
				}
			}
		}
	}
	b.mu.Lock()
	body := b.body
	b.mu.Unlock()
	n, err := body.Read(p)
	b.pos += int64(n)
	return n, err
}

// WireBytes is how many bytes came over the wire so far.
func (b *upgradingBody) WireBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.wire + wireBytes(b.body)
}

func wireBytes(r io.Reader) int64 {
	if w, ok := r.(interface{ WireBytes() int64 }); ok {
		return w.WireBytes()
	}
	return 0
}

func (b *upgradingBody) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.unprotect()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.body.Close()
}

// PeerStatus describes a peer for /api/peers.
type PeerStatus struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	Connection
	Reputation swarm.PeerReputation `json:"reputation"`
	// LastFound: when the tracker last named the peer as a holder.
	LastFound time.Time `json:"last_found,omitzero"`
}

// Peers lists the peers the store knows: those the tracker named as
// holders lately, those with a reputation, and those connected that speak
// the peerix protocols; best reputation first.
func (s *Store) Peers() []PeerStatus {
	ids := map[string]bool{}
	s.mu.Lock()
	seen := make(map[peer.ID]seenPeer, len(s.seen))
	for id, sp := range s.seen {
		seen[id] = sp
		ids[id.String()] = true
	}
	s.mu.Unlock()
	rep := s.swarm.Reputation()
	for _, id := range rep.Known() {
		if _, err := peer.Decode(id); err == nil {
			ids[id] = true
		}
	}
	for _, id := range s.h.Network().Peers() {
		if ok, _ := s.h.Peerstore().SupportsProtocols(id, NarInfoProtocol); len(ok) > 0 {
			ids[id.String()] = true
		}
	}
	delete(ids, s.h.ID().String())
	list := make([]string, 0, len(ids))
	for id := range ids {
		list = append(list, id)
	}
	slices.Sort(list)
	list = rep.Rank(list)
	out := make([]PeerStatus, 0, len(list))
	for _, sid := range list {
		id := mustDecode(sid)
		ps := PeerStatus{PeerID: sid, Connection: ConnectionTo(s.h, id)}
		ps.Reputation, _ = rep.Get(sid)
		addrs := seen[id].addrs
		if len(addrs) == 0 {
			addrs = s.h.Peerstore().Addrs(id)
		}
		for _, a := range addrs {
			ps.Addrs = append(ps.Addrs, a.String())
		}
		if ps.Addrs == nil {
			ps.Addrs = []string{}
		}
		ps.LastFound = seen[id].at
		out = append(out, ps)
	}
	return out
}

// AddrInfo builds a peer's address info from the strings a tracker keeps:
// multiaddrs, direct or through a relay (".../p2p/<relay>/p2p-circuit"),
// with or without a trailing /p2p/<peer id>. Unparsable addresses and ones
// that name another peer are skipped.
func AddrInfo(peerID string, addrs []string) (peer.AddrInfo, error) {
	id, err := peer.Decode(peerID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("peer id %q: %w", peerID, err)
	}
	ai := peer.AddrInfo{ID: id}
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if rest, last := ma.SplitLast(a); last != nil && last.Protocol().Code == ma.P_P2P {
			if last.Value() != id.String() {
				continue
			}
			a = rest
		}
		if len(a) == 0 {
			continue
		}
		ai.Addrs = append(ai.Addrs, a)
	}
	return ai, nil
}

var _ store.Store = (*Store)(nil)
