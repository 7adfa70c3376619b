package trust

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
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
	noVerify bool
	trusted  []signature.PublicKey
	upstream string
	key      *signature.PublicKey
	client   *http.Client
	timeout  time.Duration
	hitTTL   time.Duration
	missTTL  time.Duration
	errTTL   time.Duration
	log      *slog.Logger

	cancel context.CancelFunc
	infos  *memo[upstreamInfo]
	health *healthTracker

	bySig, byUpstream, rejected, upErrors atomic.Uint64
}

// NewVerifier makes a verifier. A malformed key is an error.
func NewVerifier(opts VerifierOptions) (*Verifier, error) {
	v := &Verifier{
		noVerify: opts.NoVerify,
		upstream: strings.TrimRight(opts.Upstream, "/"),
		client:   opts.HTTPClient,
		timeout:  orDuration(opts.FetchTimeout, DefaultFetchTimeout),
		hitTTL:   orDuration(opts.HitTTL, DefaultUpstreamHitTTL),
		missTTL:  orDuration(opts.MissTTL, DefaultUpstreamMissTTL),
		errTTL:   orDuration(opts.ErrorTTL, DefaultUpstreamErrorTTL),
		log:      opts.Log,
	}
	if v.upstream == "" {
		v.upstream = DefaultUpstream
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

// Health reports whether the upstream answers the verifier's requests.
func (v *Verifier) Health() Health { return v.health.health() }

// Stats returns the verifier's counters.
func (v *Verifier) Stats() VerifierStats {
	return VerifierStats{
		VerifiedBySignature: v.bySig.Load(),
		VerifiedByUpstream:  v.byUpstream.Load(),
		Rejected:            v.rejected.Load(),
		UpstreamErrors:      v.upErrors.Load(),
	}
}

// Accept decides whether a peer's narinfo for hash may reach Nix: it must
// carry a valid signature by a trusted key, or match the upstream's
// narinfo in everything Nix's fingerprint covers. It returns the narinfo to
// hand Nix: the fingerprint's fields, the signatures, and the fields the
// fingerprint does not cover (Deriver, CA) only from the upstream, never
// from the peer. A narinfo that contradicts the upstream's is an error
// wrapping swarm.ErrLie (the peer lied); one that merely cannot be
// verified (no trusted signature, the upstream lacks the path or could not
// be asked) is an error wrapping store.ErrNotFound: Nix must see a miss,
// never an error that switches the substituter off. With NoVerify every
// well-formed narinfo is accepted as it is.
func (v *Verifier) Accept(ctx context.Context, hash string, ni *narinfo.NarInfo) (*narinfo.NarInfo, error) {
	if err := store.CheckNarInfo(ni, hash); err != nil {
		v.rejected.Add(1)
		return nil, fmt.Errorf("%s: %w: %v", hash, swarm.ErrLie, err)
	}
	if v.noVerify {
		return ni, nil
	}
	if signing.Verify(ni, v.trusted) {
		v.bySig.Add(1)
		return verifiedFields(ni, nil), nil
	}
	up, err := v.upstreamNarInfo(ctx, hash)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		v.upErrors.Add(1)
		v.rejected.Add(1)
		return nil, fmt.Errorf("%s: no trusted signature, and the upstream could not be asked: %v: %w", hash, err, store.ErrNotFound)
	}
	if up == nil {
		v.rejected.Add(1)
		return nil, fmt.Errorf("%s: no trusted signature, and the upstream has no valid narinfo for it: %w", hash, store.ErrNotFound)
	}
	if why := differs(ni, up); why != "" {
		v.rejected.Add(1)
		return nil, fmt.Errorf("%s: %w: %s differs from the upstream's narinfo", hash, swarm.ErrLie, why)
	}
	v.byUpstream.Add(1)
	return verifiedFields(ni, up), nil
}

// verifiedFields is the narinfo Nix gets for a verified peer narinfo ni:
// path, NarHash, NarSize and references (what the fingerprint covers), the
// signatures (ni's and, if up is given, the upstream's, which cover the same
// fingerprint, so that Nix, trusting the upstream's key, accepts the path
// even if the peer's record lacks them), and Deriver, CA and System only
// from up: the peer's were never verified.
func verifiedFields(ni, up *narinfo.NarInfo) *narinfo.NarInfo {
	out := &narinfo.NarInfo{
		StorePath:   ni.StorePath,
		URL:         ni.URL,
		Compression: "none",
		FileHash:    ni.NarHash,
		FileSize:    ni.NarSize,
		NarHash:     ni.NarHash,
		NarSize:     ni.NarSize,
		References:  slices.Clone(ni.References),
		Signatures:  slices.Clone(ni.Signatures),
	}
	if up == nil {
		return out
	}
	out.Deriver, out.System, out.CA = up.Deriver, up.System, up.CA
	for _, sig := range up.Signatures {
		if !slices.ContainsFunc(out.Signatures, func(s signature.Signature) bool {
			return s.Name == sig.Name && bytes.Equal(s.Data, sig.Data)
		}) {
			out.Signatures = append(out.Signatures, sig)
		}
	}
	return out
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
