package signing

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"slices"
	"sync"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/store"
)

// maxMemoised bounds the signatures a signing store remembers: about 150
// bytes each (a fingerprint digest, a 64-byte signature, map overhead), so
// at most ~10 MB.
const maxMemoised = 64 << 10

// maxSigned bounds the signed copies remembered: one a path, which keeps
// the copy and the narinfo it was made from alive (about 2 KiB).
const maxSigned = 16 << 10

// signingStore is a Store whose narinfos carry, in addition to the signatures
// they already have (served as they are), one by the daemon's own key.
//
// An ed25519 signature costs tens of microseconds, far more than the rest of
// a narinfo request, and Nix asks for the same narinfos again and again. The
// signature depends only on the key and the fingerprint, so signatures are
// memoised by (a digest of) the fingerprint.
type signingStore struct {
	next    store.Store
	key     signature.SecretKey
	keyName string
	keyOK   bool

	// sign makes a signature; a field so tests can count the calls.
	sign func(fingerprint string) (signature.Signature, error)

	mu   sync.RWMutex
	sigs map[[sha256.Size]byte]signature.Signature
	max  int

	// signed is the signed copy of each narinfo next handed out, for as
	// long as next hands out the same one: a request for an unchanged path
	// costs a map lookup, not a fingerprint, a digest and a copy.
	signed *store.NarInfoMemo[*narinfo.NarInfo]
}

// NewStore wraps next so that every narinfo it answers is signed with key
// (see Sign). The narinfo next returns is not modified, so next may cache it.
// A narinfo that cannot be signed (no sha256 NarHash) is passed on unsigned.
// NARs pass through unchanged. Signatures are memoised per fingerprint, so
// a path costs one ed25519 signature, not one per request.
func NewStore(next store.Store, key signature.SecretKey) store.Store {
	return newStore(next, key, maxMemoised)
}

func newStore(next store.Store, key signature.SecretKey, max int) *signingStore {
	s := &signingStore{next: next, key: key, sigs: make(map[[sha256.Size]byte]signature.Signature), max: max,
		signed: store.NewNarInfoMemo[*narinfo.NarInfo](maxSigned)}
	// A zero or malformed key would make go-nix panic; check it once here
	// rather than on every request (Sign checks it on every call).
	if name, data, err := decodeKey(key.String()); err == nil && name != "" && len(data) == ed25519.PrivateKeySize {
		s.keyOK, s.keyName = true, name
	}
	s.sign = func(fp string) (signature.Signature, error) { return s.key.Sign(nil, fp) }
	return s
}

func (s *signingStore) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	ni, err := s.next.NarInfo(ctx, hash)
	if err != nil || ni == nil {
		return ni, err
	}
	if !s.keyOK {
		return ni, nil
	}
	if signed, ok := s.signed.Get(hash, ni); ok {
		return signed, nil
	}
	signed := s.signedCopy(ni)
	s.signed.Put(hash, ni, signed)
	return signed, nil
}

// signedCopy is ni with the store's signature, or ni itself if it cannot
// be signed.
func (s *signingStore) signedCopy(ni *narinfo.NarInfo) *narinfo.NarInfo {
	if checkSignable(ni) != nil {
		return ni
	}
	sig, ok := s.signature(Fingerprint(ni))
	if !ok {
		return ni
	}
	signed := *ni
	// What Sign does, without verifying: ed25519 signatures are
	// deterministic, so a valid signature by our key is byte-equal to ours;
	// any other one under our name is stale or forged and is replaced.
	signed.Signatures = make([]signature.Signature, 0, len(ni.Signatures)+1)
	for _, s2 := range ni.Signatures {
		if s2.Name != s.keyName {
			signed.Signatures = append(signed.Signatures, s2)
		} else if slices.Equal(s2.Data, sig.Data) {
			signed.Signatures = slices.Clone(ni.Signatures)
			return &signed
		}
	}
	signed.Signatures = append(signed.Signatures, sig)
	return &signed
}

// signature returns the signature of fingerprint fp by the store's key,
// from the memo if it is there.
func (s *signingStore) signature(fp string) (signature.Signature, bool) {
	k := sha256.Sum256([]byte(fp))
	s.mu.RLock()
	sig, ok := s.sigs[k]
	s.mu.RUnlock()
	if ok {
		return sig, true
	}
	sig, err := s.sign(fp)
	if err != nil {
		return signature.Signature{}, false
	}
	s.mu.Lock()
	if len(s.sigs) >= s.max {
		// Drop an arbitrary eighth; map iteration order is random enough.
		n := max(1, s.max/8)
		for k := range s.sigs {
			if n == 0 {
				break
			}
			delete(s.sigs, k)
			n--
		}
	}
	s.sigs[k] = sig
	s.mu.Unlock()
	return sig, true
}

func (s *signingStore) NAR(ctx context.Context, url string, offset int64) (*store.NAR, error) {
	return s.next.NAR(ctx, url, offset)
}
