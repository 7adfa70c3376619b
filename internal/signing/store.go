package signing

import (
	"context"
	"slices"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/store"
)

// signingStore is a Store whose narinfos carry, in addition to the signatures
// they already have (served as they are), one by the daemon's own key.
type signingStore struct {
	next store.Store
	key  signature.SecretKey
}

// NewStore wraps next so that every narinfo it answers is signed with key
// (see Sign). The narinfo next returns is not modified, so next may cache it.
// A narinfo that cannot be signed (no sha256 NarHash) is passed on unsigned.
// NARs pass through unchanged.
func NewStore(next store.Store, key signature.SecretKey) store.Store {
	return &signingStore{next: next, key: key}
}

func (s *signingStore) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	ni, err := s.next.NarInfo(ctx, hash)
	if err != nil || ni == nil {
		return ni, err
	}
	signed := *ni
	signed.Signatures = slices.Clone(ni.Signatures)
	if Sign(&signed, s.key) != nil {
		return ni, nil
	}
	return &signed, nil
}

func (s *signingStore) NAR(ctx context.Context, url string, offset int64) (*store.NAR, error) {
	return s.next.NAR(ctx, url, offset)
}
