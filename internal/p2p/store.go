package p2p

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
)

// URLPrefix starts the NAR URLs this store hands to Nix:
// nar/p2p/<hash part>-<NarHash base-32>.nar. They name content, not a peer:
// any holder of the path with that NarHash can serve it, so a broken
// transfer resumes from another holder.
const URLPrefix = "nar/p2p/"

// Finder is what the Store needs from the tracker: the live peers holding
// a store hash, with their addresses (direct and circuit).
type Finder interface {
	Find(ctx context.Context, hash string) ([]peer.AddrInfo, error)
}

// Timing and fan-out of lookups. Nix remembers a 404 for an hour, so a miss
// is declared only after the holders had a fair chance; but when the tracker
// knows no holder, the miss is immediate.
var (
	// hitTTL: how long a found path (its holders and narinfo) is reused.
	hitTTL = 30 * time.Second
	// missTTL: how long "nobody has it" is reused.
	missTTL = 5 * time.Second
	// findTimeout bounds the tracker's answer.
	findTimeout = 2 * time.Second
	// lookupTimeout bounds a whole narinfo lookup: tracker plus holders.
	lookupTimeout = 3 * time.Second
	// hedgeAfter: when a holder has not answered after this, the next one
	// is asked too.
	hedgeAfter = time.Second
)

const (
	// parallelQueries: holders asked at once, best reputation first.
	parallelQueries = 3
	// maxHolders: holders considered per path.
	maxHolders = 16
	// maxLookups: past this many remembered lookups, stale ones are swept.
	maxLookups = 4096
	// maxOpensPerHolder: how often one NAR transfer may go back to the same
	// holder (after a break, or to move to a direct connection).
	maxOpensPerHolder = 2
	// upgradeCheck: how often a NAR stream on a relayed connection looks
	// for a direct connection to move to.
	upgradeCheck = 250 * time.Millisecond
	// holderAddrTTL: how long tracker-given addresses stay in the peerstore.
	holderAddrTTL = 10 * time.Minute
)

// Store finds store paths on peers through the tracker and fetches them
// over the peer protocols. It implements store.Store.
type Store struct {
	h      host.Host
	finder Finder
	rep    *Reputation
	log    *slog.Logger

	transfers atomic.Int64 // for connection-protection tags
	lastWarn  atomic.Int64 // unix nanoseconds of the last tracker warning
	noHash    atomic.Bool  // SetHashNARs(false)
	index     atomic.Pointer[Index]

	mu      sync.Mutex
	lookups map[string]*lookup   // by hash: in flight or recently finished
	sweepAt int                  // table size that triggers the next sweep of stale lookups
	seen    map[peer.ID]seenPeer // holders the tracker named lately, for Peers
	recent  map[string]recentTransfer
}

type seenPeer struct {
	addrs []ma.Multiaddr
	at    time.Time
}

// lookup is one tracker query plus narinfo queries to the holders it named.
// Concurrent NarInfo and NAR calls for the same hash share it.
type lookup struct {
	done     chan struct{} // closed when a narinfo won or the lookup gave up
	finished time.Time

	mu        sync.Mutex
	holders   []peer.AddrInfo // what the tracker said, without ourselves
	ni        *narinfo.NarInfo
	confirmed []peer.ID        // holders whose narinfo had the winner's NarHash
	bad       map[peer.ID]bool // holders caught lying about this path
}

// NewStore returns a store that asks finder (the tracker) who holds a path
// and fetches it from them through h, ranking them with rep (shared with
// whoever else records peer outcomes; nil for a new table).
func NewStore(h host.Host, finder Finder, rep *Reputation, log *slog.Logger) *Store {
	if rep == nil {
		rep = NewReputation()
	}
	return &Store{
		h:       h,
		finder:  finder,
		rep:     rep,
		log:     log,
		lookups: make(map[string]*lookup),
		seen:    make(map[peer.ID]seenPeer),
		recent:  make(map[string]recentTransfer),
	}
}

// UseIndex makes NarInfo answer misses from ix (index.go) while it is
// current, instead of asking the tracker.
func (s *Store) UseIndex(ix *Index) { s.index.Store(ix) }

// errAbsent: a miss the index answered.
var errAbsent = fmt.Errorf("no peer holds it (local index): %w", store.ErrNotFound)

// Reputation is the table the store ranks peers with.
func (s *Store) Reputation() *Reputation { return s.rep }

// NarInfo finds hash on peers and returns the first holder's narinfo that
// checks out, with its URL rewritten to a nar/p2p/ URL of this daemon.
func (s *Store) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("hash %q: %w", hash, store.ErrBadRequest)
	}
	if ix := s.index.Load(); ix != nil && ix.Absent(hash) {
		return nil, errAbsent
	}
	l := s.find(hash)
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ni == nil {
		return nil, fmt.Errorf("%s on peers: %w", hash, store.ErrNotFound)
	}
	ni := *l.ni
	ni.URL = NarURL(hash, ni.NarHash)
	ni.Compression = "none"
	ni.FileHash, ni.FileSize = ni.NarHash, ni.NarSize
	return &ni, nil
}

// NarURL is the nar/p2p/ URL of a path with the given NarHash.
func NarURL(hash string, narHash *nixhash.HashWithEncoding) string {
	return URLPrefix + hash + "-" + narHash.Format(nixhash.NixBase32, false) + ".nar"
}

// ParseURL splits a nar/p2p/ URL into hash part and NarHash.
func ParseURL(u string) (hash, narHash string, err error) {
	rest, ok := strings.CutPrefix(u, URLPrefix)
	if ok {
		rest, ok = strings.CutSuffix(rest, ".nar")
	}
	if !ok || len(rest) != store.HashLen+1+narHashLen || rest[store.HashLen] != '-' ||
		!store.ValidHash(rest[:store.HashLen]) || !validNarHash(rest[store.HashLen+1:]) {
		return "", "", fmt.Errorf("P2P NAR URL %q: %w", u, store.ErrBadRequest)
	}
	return rest[:store.HashLen], rest[store.HashLen+1:], nil
}

// CheckNarInfo accepts a peer's narinfo only for the asked path,
// uncompressed, with a sha256 NarHash and a size.
func CheckNarInfo(ni *narinfo.NarInfo, hash string) error {
	name, ok := strings.CutPrefix(ni.StorePath, "/nix/store/")
	if !ok || len(name) <= store.HashLen+1 || name[:store.HashLen] != hash || name[store.HashLen] != '-' ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("narinfo is for %q, not %s", ni.StorePath, hash)
	}
	if ni.Compression != "" && ni.Compression != "none" {
		return fmt.Errorf("narinfo compression %q: only none is taken", ni.Compression)
	}
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || ni.NarSize == 0 || ni.NarSize > 1<<62 {
		return errors.New("narinfo lacks a sha256 NarHash or NarSize")
	}
	return nil
}

// find returns the lookup for hash, starting one if none is fresh.
func (s *Store) find(hash string) *lookup {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.lookups[hash]; l != nil && l.fresh() {
		return l
	}
	if len(s.lookups) >= max(s.sweepAt, maxLookups) {
		for h, l := range s.lookups {
			if !l.fresh() {
				delete(s.lookups, h)
			}
		}
		// Sweep again only after the table doubled: a burst of fresh
		// lookups must not make every new one walk the whole table.
		s.sweepAt = 2 * len(s.lookups)
	}
	l := &lookup{done: make(chan struct{}), bad: make(map[peer.ID]bool)}
	s.lookups[hash] = l
	go s.run(hash, l)
	return l
}

func (l *lookup) fresh() bool {
	select {
	case <-l.done:
	default:
		return true // in flight
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ttl := missTTL
	if l.ni != nil {
		ttl = hitTTL
	}
	return time.Since(l.finished) < ttl
}

// run asks the tracker for holders, then the holders for the narinfo,
// parallelQueries at a time in reputation order; the first valid narinfo
// releases the waiting callers, answers still in flight become fallbacks
// for the NAR transfer.
func (s *Store) run(hash string, l *lookup) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	var once sync.Once
	finish := func() {
		once.Do(func() {
			l.mu.Lock()
			l.finished = time.Now()
			l.mu.Unlock()
			close(l.done)
		})
	}
	defer finish()

	holders, err := s.holders(ctx, hash)
	if err != nil {
		if s.warnEvery(30 * time.Second) {
			s.log.Warn("tracker lookup failed; answering not found", "hash", hash, "err", err)
		} else {
			s.log.Debug("tracker lookup failed; answering not found", "hash", hash, "err", err)
		}
		return
	}
	l.mu.Lock()
	l.holders = holders
	l.mu.Unlock()
	if len(holders) == 0 {
		return
	}
	ids := s.rank(holders)

	sem := make(chan struct{}, parallelQueries)
	var wg sync.WaitGroup
	var won atomic.Bool
	waited := false
	for _, id := range ids {
		if !waited && !s.rep.Available(id) {
			// The rest are backed off: ask them only as a last resort,
			// when the others could not answer.
			wg.Wait()
			waited = true
		}
		if won.Load() {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil || won.Load() {
			break
		}
		wg.Add(1)
		go func(id peer.ID) {
			defer wg.Done()
			// A holder slow to answer frees its slot after hedgeAfter, so
			// the next one is asked meanwhile: a peer that never answers
			// costs the lookup a second, not its whole deadline.
			release := sync.OnceFunc(func() { <-sem })
			hedge := time.AfterFunc(hedgeAfter, release)
			defer func() { hedge.Stop(); release() }()
			ni := s.queryHolder(ctx, id, hash, l)
			if ni == nil {
				return
			}
			l.mu.Lock()
			switch {
			case l.ni == nil:
				l.ni = ni
				l.confirmed = append(l.confirmed, id)
			case ni.NarHash.Format(nixhash.NixBase32, false) == l.ni.NarHash.Format(nixhash.NixBase32, false):
				l.confirmed = append(l.confirmed, id)
			}
			l.mu.Unlock()
			won.Store(true)
			finish()
		}(id)
	}
	wg.Wait()
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
		if ai.ID == "" || ai.ID == s.h.ID() ||
			len(ai.Addrs) == 0 && s.h.Network().Connectedness(ai.ID) != network.Connected {
			continue
		}
		if len(s.seen) >= maxLookups {
			for id, sp := range s.seen {
				if now.Sub(sp.at) > 10*time.Minute {
					delete(s.seen, id)
				}
			}
		}
		if len(s.seen) < maxLookups {
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
	ids := make([]peer.ID, len(holders))
	for i, ai := range holders {
		ids[i] = ai.ID
		s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, holderAddrTTL)
	}
	return s.rep.Rank(ids)
}

// queryHolder asks one holder for the narinfo and records the outcome.
func (s *Store) queryHolder(ctx context.Context, id peer.ID, hash string, l *lookup) *narinfo.NarInfo {
	s.waitHolePunch(ctx)
	start := time.Now()
	ni, err := QueryNarInfo(ctx, s.h, id, hash)
	if err == nil {
		if cerr := CheckNarInfo(ni, hash); cerr != nil {
			err = fmt.Errorf("%w: %v", errLie, cerr)
		}
	}
	if err != nil {
		s.recordFailure(id, err)
		if errors.Is(err, errLie) {
			l.mu.Lock()
			l.bad[id] = true
			l.mu.Unlock()
		}
		s.log.Debug("holder's narinfo unusable", "peer", id, "hash", hash, "err", err)
		return nil
	}
	s.rep.Success(id, time.Since(start))
	return ni
}

// errLie marks answers that contradict what was asked: a narinfo of another
// path, a NAR of another size or hash.
var errLie = errors.New("peer's answer does not match the request")

// recordFailure counts a failed exchange against the peer, by kind. "Not
// found" and "refused" are honest answers, and a failure caused by our own
// context ending early (a caller went away) is nobody's fault.
func (s *Store) recordFailure(id peer.ID, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrRefused), errors.Is(err, errUpgrade):
		return
	case errors.Is(err, errLie):
		s.rep.Fail(id, FailHashMismatch)
	case errors.Is(err, ErrProtocol):
		s.rep.Fail(id, FailProtocol)
	case errors.As(err, new(*RemoteError)):
		s.rep.Fail(id, FailRemote)
	case errors.Is(err, context.Canceled):
		// our caller went away
		return
	default:
		// unreachable, reset, or no answer in time
		s.rep.Fail(id, FailUnreachable)
	}
}

// waitHolePunch waits for our DCUtR handler when the host knows it is
// behind NAT (see Host.WaitHolePunch).
func (s *Store) waitHolePunch(ctx context.Context) {
	if w, ok := s.h.(interface{ WaitHolePunch(context.Context) }); ok {
		w.WaitHolePunch(ctx)
	}
}

// NAR streams the NAR from holders with the URL's NarHash, best first,
// resuming from the next holder at the byte reached when a transfer breaks.
// A transfer from offset 0 is hashed as it streams; on a mismatch the last
// bytes are withheld and the read fails, so Nix never gets a complete wrong
// NAR, and the holders that sent it lose reputation.
func (s *Store) NAR(ctx context.Context, u string, offset int64) (*store.NAR, error) {
	hash, narHash, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("offset %d: %w", offset, store.ErrOffset)
	}
	l := s.find(hash)
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	cands, size := l.candidates(narHash)
	cands = s.orderCandidates(l, cands)
	if len(cands) == 0 {
		return nil, fmt.Errorf("%s with NarHash %s on peers: %w", hash, narHash, store.ErrNotFound)
	}
	if size >= 0 && offset > size {
		return nil, fmt.Errorf("offset %d of %d: %w", offset, size, store.ErrOffset)
	}
	t := &transfer{s: s, l: l, hash: hash, narHash: narHash, size: size, cands: cands, opens: make(map[peer.ID]int)}
	first, err := t.open(ctx, offset)
	if err != nil {
		return nil, err
	}
	if offset > t.size {
		first.Close()
		return nil, fmt.Errorf("offset %d of %d: %w", offset, t.size, store.ErrOffset)
	}
	open := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		if first != nil {
			f := first
			first = nil
			return f, nil
		}
		return t.open(ctx, off)
	}
	body, err := store.Resuming(ctx, t.size, offset, open)
	if err != nil {
		return nil, err
	}
	s.remember(u, t)
	if offset == 0 && !s.noHash.Load() {
		want, err := nixhash.ParseNixBase32("sha256:" + narHash)
		if err != nil {
			body.Close()
			return nil, fmt.Errorf("NarHash %s: %w", narHash, store.ErrBadRequest)
		}
		body = &verifier{ReadCloser: body, t: t, want: want.Digest(), h: sha256.New()}
	}
	return &store.NAR{Size: t.size, ReadCloser: body}, nil
}

// candidates returns the holders that may have the NAR with narHash:
// those whose narinfo confirmed it first, then the others the tracker
// named, minus the ones caught lying; and the NAR's size if a narinfo told
// it (-1 otherwise).
func (l *lookup) candidates(narHash string) ([]peer.ID, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	size := int64(-1)
	var out []peer.ID
	if l.ni != nil && l.ni.NarHash.Format(nixhash.NixBase32, false) == narHash {
		size = int64(l.ni.NarSize)
		for _, id := range l.confirmed {
			if !l.bad[id] {
				out = append(out, id)
			}
		}
	}
	for _, ai := range l.holders {
		if !l.bad[ai.ID] && !slices.Contains(out, ai.ID) {
			out = append(out, ai.ID)
		}
	}
	return out, size
}

// orderCandidates ranks confirmed holders first, then the rest, each group
// by reputation.
func (s *Store) orderCandidates(l *lookup, cands []peer.ID) []peer.ID {
	l.mu.Lock()
	conf := slices.Clone(l.confirmed)
	l.mu.Unlock()
	var a, b []peer.ID
	for _, id := range cands {
		if slices.Contains(conf, id) {
			a = append(a, id)
		} else {
			b = append(b, id)
		}
	}
	return append(s.rep.Rank(a), s.rep.Rank(b)...)
}

// transfer is one NAR transfer over possibly several holders.
type transfer struct {
	s             *Store
	l             *lookup
	hash, narHash string
	size          int64 // -1 until known

	mu      sync.Mutex
	cands   []peer.ID
	opens   map[peer.ID]int
	prefer  peer.ID   // a holder to go back to first (it got a direct connection)
	sources []peer.ID // who sent bytes, for blame on a hash mismatch
}

// open opens the NAR at off from the best holder not yet exhausted.
func (t *transfer) open(ctx context.Context, off int64) (io.ReadCloser, error) {
	var errs []error
	for {
		id, ok := t.next()
		if !ok {
			break
		}
		body, err := t.openFrom(ctx, id, off)
		if err == nil {
			return body, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", id.ShortString(), err))
	}
	return nil, fmt.Errorf("no peer could send %s: %w (%w)", t.hash, store.ErrNotFound, errors.Join(errs...))
}

// next picks the next holder to try: the preferred one, else the first
// in rank order that has opens left (holders never tried come first).
func (t *transfer) next() (peer.ID, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.prefer; p != "" {
		t.prefer = ""
		if t.opens[p] < maxOpensPerHolder {
			t.opens[p]++
			return p, true
		}
	}
	for round := 0; round < maxOpensPerHolder; round++ {
		for _, id := range t.cands {
			if t.opens[id] == round {
				t.l.mu.Lock()
				bad := t.l.bad[id]
				t.l.mu.Unlock()
				if bad {
					continue
				}
				t.opens[id]++
				return id, true
			}
		}
	}
	return "", false
}

func (t *transfer) openFrom(ctx context.Context, id peer.ID, off int64) (io.ReadCloser, error) {
	s := t.s
	s.waitHolePunch(ctx)
	start := time.Now()
	size, body, err := OpenNAR(ctx, s.h, id, t.hash, t.narHash, off)
	if err == nil {
		t.mu.Lock()
		switch {
		case t.size < 0:
			t.size = size
		case size != t.size:
			err = fmt.Errorf("%w: NAR of %d bytes, %d expected", errLie, size, t.size)
		}
		t.mu.Unlock()
		if err != nil {
			body.Close()
		}
	}
	if err != nil {
		s.recordFailure(id, err)
		if errors.Is(err, errLie) {
			t.l.mu.Lock()
			t.l.bad[id] = true
			t.l.mu.Unlock()
		}
		s.log.Debug("holder's NAR unusable", "peer", id, "hash", t.hash, "offset", off, "err", err)
		return nil, err
	}
	s.rep.Success(id, time.Since(start))
	tag := "peerix-nar-" + strconv.FormatInt(s.transfers.Add(1), 10)
	s.h.ConnManager().Protect(id, tag)
	t.mu.Lock()
	if !slices.Contains(t.sources, id) {
		t.sources = append(t.sources, id)
	}
	t.mu.Unlock()
	src := &source{t: t, id: id, body: body, tag: tag, ctx: ctx}
	if nb, ok := body.(*narBody); ok {
		src.relayed = isCircuit(nb.st.Conn().RemoteMultiaddr())
	}
	return src, nil
}

// errUpgrade ends a NAR stream on a relayed connection once a direct one
// exists, so that the transfer resumes over the direct one.
var errUpgrade = errors.New("moving to a direct connection")

// source is one holder's part of a transfer.
type source struct {
	t         *transfer
	id        peer.ID
	body      io.ReadCloser
	tag       string
	ctx       context.Context
	relayed   bool
	lastCheck time.Time
	done      bool
}

func (src *source) Read(p []byte) (int, error) {
	if src.relayed {
		if now := time.Now(); now.Sub(src.lastCheck) >= upgradeCheck {
			src.lastCheck = now
			if ConnectionTo(src.t.s.h, src.id).Direct {
				src.t.mu.Lock()
				src.t.prefer = src.id
				src.t.mu.Unlock()
				src.t.s.log.Debug("NAR transfer moves to a direct connection", "peer", src.id, "hash", src.t.hash)
				src.done = true
				return 0, errUpgrade
			}
		}
	}
	n, err := src.body.Read(p)
	if err != nil && !src.done {
		src.done = true
		if !errors.Is(err, io.EOF) && src.ctx.Err() == nil {
			src.t.s.recordFailure(src.id, err)
			src.t.s.log.Debug("NAR transfer from a holder broke", "peer", src.id, "hash", src.t.hash, "err", err)
		}
	}
	return n, err
}

func (src *source) Close() error {
	src.t.s.h.ConnManager().Unprotect(src.id, src.tag)
	return src.body.Close()
}

// verifier hashes a whole NAR as it streams and fails the read that would
// complete it if the hash is wrong.
type verifier struct {
	io.ReadCloser
	t    *transfer
	want []byte
	h    interface {
		io.Writer
		Sum([]byte) []byte
	}
	pos    int64
	failed error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.failed != nil {
		return 0, v.failed
	}
	n, err := v.ReadCloser.Read(p)
	v.h.Write(p[:n])
	v.pos += int64(n)
	if v.pos == v.t.size && n > 0 {
		if !bytes.Equal(v.h.Sum(nil), v.want) {
			v.failed = v.blame()
			return 0, v.failed
		}
	}
	return n, err
}

// blame counts the mismatch against every holder that sent part of the
// NAR (which one lied cannot be told) and keeps them out of this path's
// later transfers.
func (v *verifier) blame() error {
	srcs := v.t.blame()
	v.t.s.log.Warn("NAR from peers does not match its NarHash; aborted", "hash", v.t.hash, "peers", srcs)
	return fmt.Errorf("NAR %s from %v does not match NarHash %s", v.t.hash, srcs, v.t.narHash)
}

// blame counts a bad NAR against the holders that sent it and keeps them
// out of this path's later transfers; it returns them.
func (t *transfer) blame() []peer.ID {
	t.mu.Lock()
	srcs := slices.Clone(t.sources)
	t.mu.Unlock()
	t.l.mu.Lock()
	for _, id := range srcs {
		t.l.bad[id] = true
	}
	t.l.mu.Unlock()
	for _, id := range srcs {
		t.s.rep.Fail(id, FailHashMismatch)
	}
	return srcs
}

// SetHashNARs turns the store's own NarHash check of transfers from offset
// 0 on or off (on by default). Turn it off when a verifier in front of the
// store hashes every NAR anyway (internal/trust does), and give the
// verifier's OnBadNAR ReportBadNAR, so a bad NAR still costs its senders.
func (s *Store) SetHashNARs(on bool) { s.noHash.Store(!on) }

// ReportBadNAR blames the holders that sent the latest transfer of url (a
// nar/p2p/ URL) for a NAR that did not match its narinfo: they lose
// reputation and are not asked for that path again while its lookup lasts.
func (s *Store) ReportBadNAR(url string) {
	s.mu.Lock()
	r, ok := s.recent[url]
	s.mu.Unlock()
	if !ok {
		return
	}
	srcs := r.t.blame()
	s.log.Warn("NAR from peers reported bad; they lose reputation", "url", url, "peers", srcs)
}

// recentTransfer is the latest transfer of a URL, for ReportBadNAR.
type recentTransfer struct {
	t  *transfer
	at time.Time
}

// remember keeps t as the latest transfer of url.
func (s *Store) remember(url string, t *transfer) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recent) >= maxLookups {
		for u, r := range s.recent {
			if now.Sub(r.at) > 10*time.Minute {
				delete(s.recent, u)
			}
		}
		if len(s.recent) >= maxLookups {
			clear(s.recent)
		}
	}
	s.recent[url] = recentTransfer{t: t, at: now}
}

// PeerStatus describes a peer for /api/peers.
type PeerStatus struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	Connection
	Reputation PeerReputation `json:"reputation"`
	// LastFound: when the tracker last named the peer as a holder.
	LastFound time.Time `json:"last_found,omitzero"`
}

// Peers lists the peers the store knows: those the tracker named as
// holders lately, those with a reputation, and those connected that speak
// the peerix protocols; best reputation first.
func (s *Store) Peers() []PeerStatus {
	ids := map[peer.ID]bool{}
	s.mu.Lock()
	seen := make(map[peer.ID]seenPeer, len(s.seen))
	for id, sp := range s.seen {
		seen[id] = sp
		ids[id] = true
	}
	s.mu.Unlock()
	for _, id := range s.rep.Known() {
		ids[id] = true
	}
	for _, id := range s.h.Network().Peers() {
		if ok, _ := s.h.Peerstore().SupportsProtocols(id, NarInfoProtocol); len(ok) > 0 {
			ids[id] = true
		}
	}
	list := make([]peer.ID, 0, len(ids))
	for id := range ids {
		if id != s.h.ID() {
			list = append(list, id)
		}
	}
	slices.Sort(list)
	list = s.rep.Rank(list)
	out := make([]PeerStatus, 0, len(list))
	for _, id := range list {
		ps := PeerStatus{PeerID: id.String(), Connection: ConnectionTo(s.h, id)}
		ps.Reputation, _ = s.rep.Get(id)
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
