package p2p

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// IdentityFile is the name of the peer identity key in the state directory.
const IdentityFile = "identity.key"

// maxIdentitySize bounds what is read: a marshalled ed25519 key is 68 bytes.
const maxIdentitySize = 4 << 10

// LoadOrCreateIdentity returns the peer's ed25519 key from
// <stateDir>/identity.key (libp2p's crypto.MarshalPrivateKey form), creating
// it (mode 0600, written atomically) on first start, so the peer ID stays
// the same across restarts. A key file that group or others may access, or
// that does not hold an ed25519 key, is refused with an error naming it.
func LoadOrCreateIdentity(stateDir string) (crypto.PrivKey, error) {
	path := filepath.Join(stateDir, IdentityFile)
	key, err := loadIdentity(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key, _, err = crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	b, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	created, err := createExclusive(path, b)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	if !created {
		// Another process created it first: use theirs.
		return loadIdentity(path)
	}
	return key, nil
}

func loadIdentity(path string) (crypto.PrivKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("peer identity %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("peer identity %s: mode %04o lets group or others read it; it must be 0600 (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxIdentitySize+1))
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: %w", path, err)
	}
	if len(b) > maxIdentitySize {
		return nil, fmt.Errorf("peer identity %s: too large to be a key", path)
	}
	key, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("peer identity %s: malformed key (remove the file to create a new identity): %w", path, err)
	}
	if key.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("peer identity %s: a %s key, want ed25519", path, key.Type())
	}
	return key, nil
}

// createExclusive writes b to path atomically with mode 0600: to a
// temporary file in the same directory, synced, then linked into place,
// which fails if path exists (created reports false then).
func createExclusive(path string, b []byte) (created bool, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	syncDir(dir)
	return true, nil
}

// syncDir makes a rename or link in dir durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
