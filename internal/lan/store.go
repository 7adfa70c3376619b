package lan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
)

// URLPrefix starts the NAR URLs this store hands to Nix:
// nar/lan/<hash part>-<NarHash base-32>.nar. They name content, not a
// location: any LAN peer holding the path with that NarHash can serve it, so
// a URL stays good when a peer changes address, and a broken transfer can
// resume from another peer.
const URLPrefix = "nar/lan/"

// Timing of lookups. Nix remembers a 404 for an hour, so a miss is declared
// only after peers had a fair chance to answer.
const (
	hitTTL         = time.Minute
	missTTL        = 2 * time.Second
	maxNarInfoSize = 64 << 10
	peerTimeout    = 5 * time.Second
	maxCandidates  = 8
	// maxLookups: past this many remembered lookups, stale ones are swept.
	maxLookups = 4096
)

// Store finds paths on LAN peers. It implements store.Store.
type Store struct {
	disc   *Discovery
	wait   time.Duration
	client *http.Client
	log    *slog.Logger

	mu      sync.Mutex
	lookups map[string]*lookup // by hash: in flight or recently finished
	sweepAt int                // table size that triggers the next sweep of stale lookups
}

// candidate is one peer that answered for a path, with its narinfo.
type candidate struct {
	base string // http://ip:port/
	ni   *narinfo.NarInfo
}

// lookup is one broadcast and what it found. Concurrent NarInfo calls for
// the same hash share it, so Nix's parallel queries never multiply
// broadcasts; finished lookups are kept for hitTTL/missTTL.
type lookup struct {
	done     chan struct{} // closed when the first good answer or the deadline arrives
	finished time.Time     // when done was closed

	mu         sync.Mutex
	candidates []candidate // first is the one whose narinfo was returned
}

// NewStore returns a store that asks the LAN through disc and waits up to
// wait for answers.
func NewStore(disc *Discovery, wait time.Duration, log *slog.Logger) *Store {
	transport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		ResponseHeaderTimeout: peerTimeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}
	return &Store{
		disc:    disc,
		wait:    wait,
		client:  &http.Client{Transport: transport},
		log:     log,
		lookups: make(map[string]*lookup),
	}
}

// NarInfo asks the LAN for hash and returns the first peer's narinfo that
// checks out, with its URL rewritten to a nar/lan/ URL of this daemon.
func (s *Store) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	l := s.find(hash)
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.candidates) == 0 {
		return nil, fmt.Errorf("%s on the LAN: %w", hash, store.ErrNotFound)
	}
	ni := *l.candidates[0].ni
	ni.URL = URLPrefix + hash + "-" + ni.NarHash.Format(nixhash.NixBase32, false) + ".nar"
	ni.Compression = "none"
	ni.FileHash, ni.FileSize = ni.NarHash, ni.NarSize
	return &ni, nil
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
	l := &lookup{done: make(chan struct{})}
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
	if len(l.candidates) > 0 {
		ttl = hitTTL
	}
	return time.Since(l.finished) < ttl
}

// run broadcasts the request and collects answers until the wait is over;
// the first good narinfo releases the waiting callers at once, later ones
// become fallbacks for the NAR transfer.
func (s *Store) run(hash string, l *lookup) {
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
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
	var wg sync.WaitGroup
	for a := range s.disc.Ask(ctx, hash) {
		wg.Add(1)
		go func(a Answer) {
			defer wg.Done()
			c, err := s.fetchNarInfo(ctx, hash, a)
			if err != nil {
				s.log.Debug("LAN peer's narinfo refused", "peer", a.From, "hash", hash, "err", err)
				return
			}
			l.mu.Lock()
			if len(l.candidates) < maxCandidates && (len(l.candidates) == 0 ||
				l.candidates[0].ni.NarHash.Format(nixhash.NixBase32, false) == c.ni.NarHash.Format(nixhash.NixBase32, false)) {
				l.candidates = append(l.candidates, c)
			}
			l.mu.Unlock()
			finish()
		}(a)
	}
	wg.Wait()
}

// fetchNarInfo gets and checks a responder's narinfo.
func (s *Store) fetchNarInfo(ctx context.Context, hash string, a Answer) (candidate, error) {
	base := "http://" + netip.AddrPortFrom(a.From, a.HTTPPort).String() + "/"
	// The narinfo fetch may outlive the broadcast wait a little: an answer
	// that arrived in time deserves its round trip.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), peerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+a.Path, nil)
	if err != nil {
		return candidate{}, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return candidate{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return candidate{}, fmt.Errorf("narinfo: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxNarInfoSize+1))
	if err != nil {
		return candidate{}, err
	}
	if len(body) > maxNarInfoSize {
		return candidate{}, errors.New("narinfo too large")
	}
	ni, err := narinfo.Parse(strings.NewReader(string(body)))
	if err != nil {
		return candidate{}, fmt.Errorf("narinfo: %w", err)
	}
	if err := checkPeerNarInfo(ni, hash); err != nil {
		return candidate{}, err
	}
	return candidate{base: base, ni: ni}, nil
}

// checkPeerNarInfo accepts a narinfo only for the asked path, uncompressed,
// with a sha256 NarHash, a size, and a relative NAR URL of plain segments.
func checkPeerNarInfo(ni *narinfo.NarInfo, hash string) error {
	name, ok := strings.CutPrefix(ni.StorePath, "/nix/store/")
	if !ok || len(name) <= store.HashLen+1 || name[:store.HashLen] != hash || name[store.HashLen] != '-' {
		return fmt.Errorf("narinfo is for %q, not %s", ni.StorePath, hash)
	}
	if ni.Compression != "" && ni.Compression != "none" {
		return fmt.Errorf("narinfo compression %q: only none is taken", ni.Compression)
	}
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || ni.NarSize == 0 {
		return errors.New("narinfo lacks a sha256 NarHash or NarSize")
	}
	if !validRelativeURL(ni.URL) {
		return fmt.Errorf("narinfo URL %q", ni.URL)
	}
	return nil
}

func validRelativeURL(u string) bool {
	if u == "" || strings.HasPrefix(u, "/") || len(u) > 512 {
		return false
	}
	for _, seg := range strings.Split(u, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/-_.+=", c) >= 0) {
			return false
		}
	}
	return true
}

// ParseURL splits a nar/lan/ URL into hash part and NarHash.
func ParseURL(u string) (hash, narHash string, err error) {
	rest, ok := strings.CutPrefix(u, URLPrefix)
	if ok {
		rest, ok = strings.CutSuffix(rest, ".nar")
	}
	if !ok || len(rest) != store.HashLen+1+52 || rest[store.HashLen] != '-' ||
		!store.ValidHash(rest[:store.HashLen]) || !store.ValidBase32(rest[store.HashLen+1:]) {
		return "", "", fmt.Errorf("LAN NAR URL %q: %w", u, store.ErrBadRequest)
	}
	return rest[:store.HashLen], rest[store.HashLen+1:], nil
}

// NAR streams the NAR from the peers that answered for the path with the
// same NarHash, resuming from the next one if a transfer breaks.
func (s *Store) NAR(ctx context.Context, u string, offset int64) (*store.NAR, error) {
	hash, narHash, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	l := s.find(hash)
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	first, ok := l.candidate(0, narHash, -1)
	if !ok {
		return nil, fmt.Errorf("%s with NarHash %s on the LAN: %w", hash, narHash, store.ErrNotFound)
	}
	size := int64(first.ni.NarSize)
	if offset > size {
		return nil, fmt.Errorf("offset %d of %d: %w", offset, size, store.ErrOffset)
	}
	next := 0
	open := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		var errs []error
		for {
			// The candidates are read anew each time: the first good
			// answer releases Nix, which asks for the NAR at once, so
			// peers whose narinfo came later join as fallbacks here.
			c, ok := l.candidate(next, narHash, size)
			if !ok {
				break
			}
			next++
			body, err := s.openNAR(ctx, c, off, size)
			if err == nil {
				return body, nil
			}
			s.log.Debug("LAN peer's NAR failed", "peer", c.base, "hash", hash, "err", err)
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return nil, fmt.Errorf("no further LAN peer holds %s: %w", hash, store.ErrNotFound)
		}
		return nil, fmt.Errorf("no LAN peer could send %s: %w (%w)", hash, store.ErrNotFound, errors.Join(errs...))
	}
	body, err := store.Resuming(ctx, size, offset, open)
	if err != nil {
		return nil, err
	}
	return &store.NAR{Size: size, ReadCloser: body}, nil
}

// candidate returns the i-th peer that answered with NarHash narHash (and,
// unless size is negative, that NarSize). Candidates are only ever
// appended, so an index stays valid while more answers arrive.
func (l *lookup) candidate(i int, narHash string, size int64) (candidate, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.candidates {
		if c.ni.NarHash.Format(nixhash.NixBase32, false) != narHash || (size >= 0 && int64(c.ni.NarSize) != size) {
			continue
		}
		if i == 0 {
			return c, true
		}
		i--
	}
	return candidate{}, false
}

// openNAR requests the NAR from one peer, resolving the narinfo's URL
// against the peer's root as the original peerix does.
func (s *Store) openNAR(ctx context.Context, c candidate, offset, size int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+c.ni.URL, nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	want := http.StatusOK
	if offset > 0 {
		want = http.StatusPartialContent
	}
	if resp.StatusCode != want {
		resp.Body.Close()
		return nil, fmt.Errorf("NAR: HTTP %d", resp.StatusCode)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size-offset {
		resp.Body.Close()
		return nil, fmt.Errorf("NAR: %d bytes offered, %d expected", resp.ContentLength, size-offset)
	}
	return resp.Body, nil
}
