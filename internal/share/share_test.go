package share_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/share"
	"github.com/peerix/peerix/internal/summary"
)

// fakeStore is a Nix database: paths in registration order.
type fakeStore struct {
	mu    sync.Mutex
	paths []string // id = index + 1
}

func (s *fakeStore) add(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := sha256.Sum256([]byte(name))
	hash := nixbase32.EncodeToString(sum[:20])
	s.paths = append(s.paths, "/nix/store/"+hash+"-"+name)
	return hash
}

func (s *fakeStore) PathsSince(ctx context.Context, after int64, fn func(int64, string) error) error {
	s.mu.Lock()
	paths := append([]string(nil), s.paths...)
	s.mu.Unlock()
	for i := after; i < int64(len(paths)); i++ {
		if err := fn(i+1, paths[i]); err != nil {
			return err
		}
	}
	return nil
}

func has(t *testing.T, p *summary.Publisher, hash string) bool {
	t.Helper()
	head, body, err := p.Poll(t.Context(), 0, 0, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	u, err := summary.ReadUpdate(bytes.NewReader(append(head, body...)))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := summary.ParseHash(hash)
	return u.Filter.Has(h)
}

func TestInventoryFollowsTheStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := &fakeStore{}
		public := st.add("public")
		private := st.add("secret-key")
		inv := share.New(share.Options{
			Paths:     st,
			Shareable: func(_ context.Context, hash string) bool { return hash != private },
		})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); inv.Run(ctx) }()
		defer func() { cancel(); <-done }()
		<-inv.Ready()
		if !inv.Has(public) || inv.Has(private) || inv.Len() != 1 {
			t.Fatalf("after the first scan: public %v, private %v, %d shared", inv.Has(public), inv.Has(private), inv.Len())
		}
		if !has(t, inv.Summary(), public) || has(t, inv.Summary(), private) {
			t.Fatal("the summary does not match the shared set")
		}
		_, gen0, _ := inv.Summary().Version()

		added := st.add("built-later")
		time.Sleep(1100 * time.Millisecond)
		synctest.Wait()
		if !inv.Has(added) || !has(t, inv.Summary(), added) {
			t.Fatal("a path registered after the scan is not shared within a poll")
		}
		if _, gen, _ := inv.Summary().Version(); gen != gen0+1 {
			t.Errorf("generation %d, want %d", gen, gen0+1)
		}
	})
}
