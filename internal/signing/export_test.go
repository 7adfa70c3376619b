package signing

import (
	"sync/atomic"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/store"
)

// NewCountingStore is NewStore remembering at most max signatures, and a
// function returning how many signatures it has made so far.
func NewCountingStore(next store.Store, key signature.SecretKey, max int) (store.Store, func() int64) {
	s := newStore(next, key, max)
	var n atomic.Int64
	sign := s.sign
	s.sign = func(fp string) (signature.Signature, error) {
		n.Add(1)
		return sign(fp)
	}
	return s, n.Load
}

// Memoised is how many signatures a store made by NewStore remembers.
func Memoised(st store.Store) int {
	s := st.(*signingStore)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.sigs)
}
