package p2p

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestIdentityPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if k1.Type() != crypto.Ed25519 {
		t.Errorf("key type %v", k1.Type())
	}
	k2, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := peer.IDFromPrivateKey(k1)
	id2, _ := peer.IDFromPrivateKey(k2)
	if id1 != id2 {
		t.Errorf("peer ID changed across loads: %s, %s", id1, id2)
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("state dir holds %d entries", len(ents))
	}
}

func TestIdentityConcurrentFirstStart(t *testing.T) {
	dir := t.TempDir()
	ids := make([]peer.ID, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrCreateIdentity(dir)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], _ = peer.IDFromPrivateKey(k)
		}()
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("racing first starts made different identities: %v", ids)
		}
	}
}

func TestIdentityRefused(t *testing.T) {
	k, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	good, _ := crypto.MarshalPrivateKey(k)
	rsaKey, _, _ := crypto.GenerateSecp256k1Key(rand.Reader)
	other, _ := crypto.MarshalPrivateKey(rsaKey)
	for _, tc := range []struct {
		name string
		data []byte
		mode os.FileMode
		want string
	}{
		{"world readable", good, 0o644, "mode 0644"},
		{"group readable", good, 0o640, "mode 0640"},
		{"malformed", []byte("not a key"), 0o600, "malformed"},
		{"empty", nil, 0o600, "malformed"},
		{"not ed25519", other, 0o600, "want ed25519"},
		{"huge", make([]byte, 10<<10), 0o600, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, IdentityFile)
			if err := os.WriteFile(path, tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tc.mode)
			_, err := LoadOrCreateIdentity(dir)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming %s and saying %q", err, path, tc.want)
			}
			// Never replaced.
			if b, _ := os.ReadFile(path); string(b) != string(tc.data) {
				t.Error("the refused key file was modified")
			}
		})
	}
}
