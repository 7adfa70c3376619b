package trust

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// Verifier defaults.
const (
	DefaultUpstreamHitTTL   = time.Hour
	DefaultUpstreamMissTTL  = 10 * time.Minute
	DefaultUpstreamErrorTTL = 5 * time.Second
	DefaultFetchTimeout     = 10 * time.Second
	defaultVerifierEntries  = 16 << 10
)

// VerifierOptions configure a Verifier.
type VerifierOptions struct {
	// NoVerify (--no-verify) turns verification off: Wrap returns the
	// remote store as it is. NewVerifier logs a loud warning.
	NoVerify bool
	// TrustedPublicKeys ("name:base64"; an entry may hold several,
	// whitespace-separated, as in nix.conf): a peer's narinfo with a valid
	// signature by one of them is accepted as it is. The daemon passes
	// --trusted-public-key, else Nix's own (NixTrustedPublicKeys).
	TrustedPublicKeys []string

	// Upstream is the upstream cache's base URL; "" means DefaultUpstream.
	// A peer's narinfo without a trusted signature is accepted when its
	// NarHash, NarSize and references equal the upstream's narinfo's.
	Upstream string
	// UpstreamKeyName and UpstreamPublicKey choose the key the upstream's
	// narinfos must be signed with (see UpstreamKey); with none known they
	// are believed on the strength of the configured URL.
	UpstreamKeyName   string
	UpstreamPublicKey string

	// HTTPClient fetches upstream narinfos; nil means a client with
	// sensible timeouts.
	HTTPClient *http.Client
	// Concurrency bounds upstream requests in flight; 0 means 8.
	Concurrency int
	// FetchTimeout bounds one upstream request; 0 means 10 s.
	FetchTimeout time.Duration
	// How long upstream answers are kept in memory: a narinfo (0: 1 h),
	// "not there" (0: 10 min), a failure (0: 5 s).
	HitTTL, MissTTL, ErrorTTL time.Duration
	// UnhealthyAfter is how many upstream failures in a row make Health
	// report it unreachable; 0 means 3.
	UnhealthyAfter int
	// MaxCacheEntries bounds the upstream narinfos kept; 0 means 16 Ki.
	MaxCacheEntries int

	// OnBadNAR is called (from the reading goroutine) with the NAR URL when
	// a peer's NAR does not match its verified narinfo: wrong hash, too long
	// or too short. The daemon costs the peers that sent it reputation.
	OnBadNAR func(url string)
	// HashOfURL tells which path a NAR URL of the remote store names; nil
	// means HashFromURL (nar/lan/<hash>-…, nar/p2p/<hash>-…).
	HashOfURL func(url string) (string, error)

	Log *slog.Logger
}

// VerifierStats counts the verifier's decisions since start.
type VerifierStats struct {
	// Narinfos accepted because of a trusted signature, because they match
	// the upstream's, and refused (neither; malformed; upstream unknown).
	VerifiedBySignature uint64 `json:"verified_by_signature"`
	VerifiedByUpstream  uint64 `json:"verified_by_upstream"`
	Rejected            uint64 `json:"rejected"`
	// UpstreamErrors counts narinfos refused because the upstream could
	// not be asked (also in Rejected).
	UpstreamErrors uint64 `json:"upstream_errors"`
	// NARs that streamed to their end and matched, and those that did not.
	NARsVerified uint64 `json:"nars_verified"`
	BadNARs      uint64 `json:"bad_nars"`
}

// upstreamInfo is what the upstream said about a path: its narinfo, nil if
// it has none (or an invalid one), or why it could not be asked.
type upstreamInfo struct {
	ni  *narinfo.NarInfo
	err error
}

// Verifier decides whether what peers offer may be handed to Nix. Its
// methods are safe for concurrent use.
type Verifier struct {
	noVerify  bool
	trusted   []signature.PublicKey
	upstream  string
	key       *signature.PublicKey
	client    *http.Client
	timeout   time.Duration
	hitTTL    time.Duration
	missTTL   time.Duration
	errTTL    time.Duration
	onBad     func(string)
	hashOfURL func(string) (string, error)
	log       *slog.Logger

	cancel context.CancelFunc
	infos  *memo[upstreamInfo]
	health *healthTracker

	bySig, byUpstream, rejected, upErrors, narsOK, badNARs atomic.Uint64
}

// NewVerifier makes a verifier. A malformed key is an error.
func NewVerifier(opts VerifierOptions) (*Verifier, error) {
	v := &Verifier{
		noVerify:  opts.NoVerify,
		upstream:  strings.TrimRight(opts.Upstream, "/"),
		client:    opts.HTTPClient,
		timeout:   orDuration(opts.FetchTimeout, DefaultFetchTimeout),
		hitTTL:    orDuration(opts.HitTTL, DefaultUpstreamHitTTL),
		missTTL:   orDuration(opts.MissTTL, DefaultUpstreamMissTTL),
		errTTL:    orDuration(opts.ErrorTTL, DefaultUpstreamErrorTTL),
		onBad:     opts.OnBadNAR,
		hashOfURL: opts.HashOfURL,
		log:       opts.Log,
	}
	if v.upstream == "" {
		v.upstream = DefaultUpstream
	}
	if v.hashOfURL == nil {
		v.hashOfURL = HashFromURL
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	v.log = v.log.With("part", "verifier")
	var err error
	if v.trusted, err = signing.ParsePublicKeys(opts.TrustedPublicKeys); err != nil {
		return nil, fmt.Errorf("trusted public keys: %w", err)
	}
	if v.key, err = UpstreamKey(v.upstream, opts.UpstreamKeyName, opts.UpstreamPublicKey, opts.TrustedPublicKeys); err != nil {
		return nil, err
	}
	conc := orInt(opts.Concurrency, DefaultConcurrency)
	if v.client == nil {
		v.client = newHTTPClient(conc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.infos = newMemo[upstreamInfo](ctx, conc, orInt(opts.MaxCacheEntries, defaultVerifierEntries))
	v.health = &healthTracker{upstream: v.upstream, what: "verifier", threshold: orInt(opts.UnhealthyAfter, DefaultUnhealthyAfter), log: v.log}
	if v.noVerify {
		v.log.Warn("VERIFICATION OFF (--no-verify): narinfos and NARs from peers reach Nix unchecked; " +
			"any peer can hand this machine's Nix whatever it likes, as far as Nix's own signature checks allow")
	} else if v.key == nil {
		v.log.Warn("no public key known for the upstream: its narinfos are believed unsigned", "upstream", v.upstream)
	}
	return v, nil
}

// Close stops upstream requests in flight.
func (v *Verifier) Close() error {
	v.cancel()
	return nil
}

// Wrap returns remote as Nix may see it: a narinfo only if it verifies
// (else store.ErrNotFound, a miss, never an error that becomes 5xx), and
// NARs hashed as they stream. With NoVerify it returns remote unchanged.
func (v *Verifier) Wrap(remote store.Store) store.Store {
	if v.noVerify {
		return remote
	}
	return &verifiedStore{v: v, next: remote}
}

// Health reports whether the upstream answers the verifier's requests.
func (v *Verifier) Health() Health { return v.health.health() }

// Stats returns the verifier's counters.
func (v *Verifier) Stats() VerifierStats {
	return VerifierStats{
		VerifiedBySignature: v.bySig.Load(),
		VerifiedByUpstream:  v.byUpstream.Load(),
		Rejected:            v.rejected.Load(),
		UpstreamErrors:      v.upErrors.Load(),
		NARsVerified:        v.narsOK.Load(),
		BadNARs:             v.badNARs.Load(),
	}
}

type verifiedStore struct {
	v    *Verifier
	next store.Store
}

func (s *verifiedStore) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	return s.verify(ctx, hash, true)
}

// verify returns the remote's narinfo for hash if it verifies; count says
// whether to count the decision (NAR requests re-verify without counting).
func (s *verifiedStore) verify(ctx context.Context, hash string, count bool) (*narinfo.NarInfo, error) {
	v := s.v
	ni, err := s.next.NarInfo(ctx, hash)
	if err != nil {
		return nil, err
	}
	reject := func(why string, args ...any) (*narinfo.NarInfo, error) {
		if count {
			v.rejected.Add(1)
		}
		msg := fmt.Sprintf(why, args...)
		v.log.Debug("peer's narinfo refused", "hash", hash, "why", msg)
		return nil, fmt.Errorf("%s: peer's narinfo refused: %s: %w", hash, msg, store.ErrNotFound)
	}
	if err := checkNarInfoFor(ni, hash); err != nil {
		return reject("%v", err)
	}
	if signing.Verify(ni, v.trusted) {
		if count {
			v.bySig.Add(1)
		}
		return ni, nil
	}
	up, err := v.upstreamNarInfo(ctx, hash)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		if count {
			v.upErrors.Add(1)
		}
		return reject("no trusted signature, and the upstream could not be asked: %v", err)
	}
	if up == nil {
		return reject("no trusted signature, and the upstream has no valid narinfo for it")
	}
	if why := differs(ni, up); why != "" {
		v.log.Warn("peer's narinfo differs from the upstream's", "hash", hash, "differs", why)
		return reject("differs from the upstream's narinfo: %s", why)
	}
	if count {
		v.byUpstream.Add(1)
	}
	// The upstream's signatures cover the same fingerprint (path, NarHash,
	// NarSize, references): pass them on, so that Nix, which trusts the
	// upstream's key, accepts the path even if the peer's record lacks them.
	out := *ni
	out.Signatures = slices.Clone(ni.Signatures)
	for _, sig := range up.Signatures {
		if !slices.ContainsFunc(out.Signatures, func(s signature.Signature) bool {
			return s.Name == sig.Name && bytes.Equal(s.Data, sig.Data)
		}) {
			out.Signatures = append(out.Signatures, sig)
		}
	}
	return &out, nil
}

// differs tells how a peer's narinfo differs from the upstream's in what
// Nix's fingerprint covers, or "" if it does not.
func differs(peer, up *narinfo.NarInfo) string {
	switch {
	case peer.StorePath != up.StorePath:
		return "StorePath"
	case !bytes.Equal(peer.NarHash.Digest(), up.NarHash.Digest()):
		return "NarHash"
	case peer.NarSize != up.NarSize:
		return "NarSize"
	}
	a, b := slices.Clone(peer.References), slices.Clone(up.References)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(slices.Compact(a), slices.Compact(b)) {
		return "References"
	}
	return ""
}

// upstreamNarInfo returns the upstream's narinfo for hash, nil if it has
// none, or an error if it could not be asked.
func (v *Verifier) upstreamNarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	info, _, err := v.infos.get(ctx, hash, func(ctx context.Context) (upstreamInfo, time.Duration) {
		info := v.fetch(ctx, hash)
		switch {
		case info.err != nil:
			return info, v.errTTL
		case info.ni == nil:
			return info, v.missTTL
		}
		return info, v.hitTTL
	})
	if err != nil {
		return nil, err
	}
	return info.ni, info.err
}

func (v *Verifier) fetch(ctx context.Context, hash string) upstreamInfo {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	ni, err := v.doFetch(ctx, hash)
	if err != nil {
		v.health.fail(err)
		v.log.Debug("upstream narinfo fetch failed", "hash", hash, "err", err)
		return upstreamInfo{err: err}
	}
	v.health.ok()
	if ni != nil && v.key != nil && !signing.Verify(ni, []signature.PublicKey{*v.key}) {
		v.log.Warn("upstream narinfo not validly signed by the upstream key; ignored", "hash", hash, "key", v.key.Name)
		return upstreamInfo{}
	}
	return upstreamInfo{ni: ni}
}

func (v *Verifier) doFetch(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.upstream+"/"+hash+".narinfo", nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer drainClose(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("GET %s: HTTP %d", req.URL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamNarInfo+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	ni, err := parseUpstreamNarInfo(body, hash)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	return ni, nil
}

// NAR streams a peer's NAR, hashed as it goes, against the narinfo the
// verifier accepted for the path its URL names. The bytes that complete the
// NAR are handed out only after the hash and length checked out: on a
// mismatch the reader fails with them still held back (so Nix never has a
// complete wrong NAR; the HTTP layer aborts the connection on a read error),
// OnBadNAR is called and the NAR counted as bad.
//
// A stream asked for at offset > 0 (a resumed download) is opened at 0 and
// its first offset bytes are hashed and dropped before anything is handed
// out: the prefix travels twice, the guarantee holds. Nix resumes only
// uncompressed NARs, rarely, so the cost is rare too.
func (s *verifiedStore) NAR(ctx context.Context, url string, offset int64) (*store.NAR, error) {
	v := s.v
	hash, err := v.hashOfURL(url)
	if err != nil {
		return nil, err
	}
	ni, err := s.verify(ctx, hash, false)
	if err != nil {
		return nil, err
	}
	if !urlNames(url, hash, ni) {
		return nil, fmt.Errorf("NAR %s is not the one the peers' narinfo names now (%s): %w", url, ni.URL, store.ErrNotFound)
	}
	size := int64(ni.NarSize)
	if offset < 0 || offset > size {
		return nil, fmt.Errorf("offset %d outside NAR of %d bytes: %w", offset, size, store.ErrOffset)
	}
	n, err := s.next.NAR(ctx, url, 0)
	if err != nil {
		return nil, err
	}
	r := &verifyingReader{
		src:  n.ReadCloser,
		h:    sha256.New(),
		want: ni.NarHash.Digest(),
		size: size,
		skip: offset,
		bad:  func(why string) { v.badNAR(url, why) },
		good: func() { v.narsOK.Add(1) },
	}
	if n.Size != size {
		r.Close()
		v.badNAR(url, fmt.Sprintf("peer offers %d bytes, the narinfo says %d", n.Size, size))
		return nil, fmt.Errorf("NAR %s: size %d, narinfo says %d: %w", url, n.Size, size, store.ErrNotFound)
	}
	return &store.NAR{Size: size, ReadCloser: r}, nil
}

// urlNames tells whether a NAR URL names the NAR of the verified narinfo
// ni: it is ni's URL, or its last segment is "<hash>-<NarHash>.nar" with
// ni's NarHash (a union of LAN and P2P may name the same NAR nar/lan/... in
// one answer and nar/p2p/... in the next).
func urlNames(url, hash string, ni *narinfo.NarInfo) bool {
	if url == ni.URL {
		return true
	}
	_, last, _ := cutLast("/"+url, "/")
	return last == hash+"-"+ni.NarHash.Format(nixhash.NixBase32, false)+".nar"
}

func (v *Verifier) badNAR(url, why string) {
	v.badNARs.Add(1)
	v.log.Warn("peer's NAR does not match its verified narinfo; transfer aborted", "url", url, "why", why)
	if v.onBad != nil {
		v.onBad(url)
	}
}

// ErrBadNAR is what a NAR stream fails with when the NAR does not match its
// narinfo.
var ErrBadNAR = errors.New("NAR does not match its narinfo")

// verifyingReader hashes the NAR [0, size) from src and hands out
// [skip, size), holding back the read that completes the NAR until the
// SHA-256 and the length have been checked.
type verifyingReader struct {
	src             io.ReadCloser
	h               hash.Hash
	want            []byte
	size, pos, skip int64
	bad             func(why string)
	good            func()

	err  error // sticky
	done bool  // all of it read and verified
	once sync.Once
}

func (r *verifyingReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.pos < r.skip {
		if err := r.skipPrefix(); err != nil {
			r.err = err
			return 0, err
		}
	}
	if r.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if rest := r.size - r.pos; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.src.Read(p)
	r.h.Write(p[:n])
	r.pos += int64(n)
	if r.pos == r.size {
		// p[:n] completes the NAR: hand it out only if all of it checks out.
		if err := r.finish(); err != nil {
			r.err = err
			return 0, err
		}
		return n, nil
	}
	if err != nil {
		r.err = r.short(err)
		return n, r.err
	}
	return n, nil
}

// skipPrefix reads, hashes and drops [pos, skip).
func (r *verifyingReader) skipPrefix() error {
	buf := make([]byte, 32<<10)
	for r.pos < r.skip {
		p := buf
		if rest := r.skip - r.pos; int64(len(p)) > rest {
			p = p[:rest]
		}
		n, err := r.src.Read(p)
		r.h.Write(p[:n])
		r.pos += int64(n)
		if r.pos == r.size {
			return r.finish()
		}
		if err != nil && r.pos < r.skip {
			return r.short(err)
		}
	}
	return nil
}

// short handles a source that stopped before the NAR's end: a clean EOF
// means the peer sent a NAR shorter than its narinfo says (bad); any other
// error is a broken transfer, passed on.
func (r *verifyingReader) short(err error) error {
	if errors.Is(err, io.EOF) {
		r.reportBad(fmt.Sprintf("NAR ended after %d of %d bytes", r.pos, r.size))
		return fmt.Errorf("%w: ended after %d of %d bytes", ErrBadNAR, r.pos, r.size)
	}
	return err
}

// finish checks, with all size bytes read, that the source has no more and
// that the hash is the narinfo's.
func (r *verifyingReader) finish() error {
	var one [1]byte
	for tries := 0; ; tries++ {
		n, err := r.src.Read(one[:])
		if n > 0 {
			r.reportBad(fmt.Sprintf("NAR longer than its %d bytes", r.size))
			return fmt.Errorf("%w: longer than %d bytes", ErrBadNAR, r.size)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("NAR source failed after the last byte: %w", err)
		}
		if tries == 100 {
			return errors.New("NAR source does not end after the last byte")
		}
	}
	if sum := r.h.Sum(nil); !bytes.Equal(sum, r.want) {
		r.reportBad("NarHash mismatch")
		return fmt.Errorf("%w: NarHash mismatch", ErrBadNAR)
	}
	r.done = true
	r.good()
	return nil
}

func (r *verifyingReader) reportBad(why string) {
	r.once.Do(func() { r.bad(why) })
}

func (r *verifyingReader) Close() error {
	return r.src.Close()
}
