package nixtest

// Chroot stores and what Nix says about the paths in them. A chroot store
// is a directory DIR that Nix takes for --store: its database is
// DIR/nix/var/nix/db/db.sqlite and its files are under DIR/nix/store. The
// functions also take any other store --store takes, the machine's
// ("/" or "local") or a binary cache URL, where Nix can do the same there.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// InitStore returns an empty chroot store (`nix-store --init`) named name
// in a directory that is removed when t ends (TempStore).
func InitStore(t testing.TB, name string) string {
	t.Helper()
	dir := TempStore(t, name)
	Must(t, "nix-store", "--store", dir, "--init")
	return dir
}

// Copy copies paths, with their closures, from the machine's store into
// the store to, unsigned (`nix copy --no-check-sigs`). A chroot store is
// made if there is none.
func Copy(ctx context.Context, to string, paths ...string) error {
	_, err := Output(ctx, "nix", append([]string{"copy", "--no-check-sigs", "--to", to}, paths...)...)
	return err
}

// AddFile adds a file holding data to store under name (`nix-store --add`):
// a content-addressed path, with no deriver.
func AddFile(ctx context.Context, store, name string, data []byte) (string, error) {
	dir, err := os.MkdirTemp("", "peerix-nixtest-add-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return "", err
	}
	out, err := Output(ctx, "nix-store", "--store", store, "--add", file)
	return strings.TrimSpace(string(out)), err
}

// Key is a signing key pair made by Nix.
type Key struct {
	Name       string
	SecretFile string // as --key-file and secret-key= take it
	Public     string // as trusted-public-keys takes it: "name:base64"
}

// GenerateKey makes a key pair named name, its files in dir
// (`nix-store --generate-binary-cache-key`).
func GenerateKey(ctx context.Context, dir, name string) (Key, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Key{}, err
	}
	k := Key{Name: name, SecretFile: filepath.Join(dir, name+".sec")}
	pubFile := filepath.Join(dir, name+".pub")
	if _, err := Output(ctx, "nix-store", "--generate-binary-cache-key", name, k.SecretFile, pubFile); err != nil {
		return Key{}, err
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return Key{}, err
	}
	k.Public = strings.TrimSpace(string(pub))
	return k, nil
}

// Sign adds key's signature of paths to store's database
// (`nix store sign`).
func Sign(ctx context.Context, store string, key Key, paths ...string) error {
	_, err := Output(ctx, "nix", append([]string{"store", "sign", "--store", store, "--key-file", key.SecretFile}, paths...)...)
	return err
}

// PathInfo is what Nix says about a valid path of a store.
type PathInfo struct {
	NarHash    string   // sha256:<nix base-32>, as narinfos and `nix-store -q --hash` write it
	NarSize    uint64   //
	References []string // full store paths, sorted
	Deriver    string   // full store path, or ""
	Signatures []string // sorted
	CA         string
}

// Info returns what Nix says about path in store (`nix path-info --json`).
func Info(ctx context.Context, store, path string) (PathInfo, error) {
	out, err := Output(ctx, "nix", "path-info", "--store", store, "--json", path)
	if err != nil {
		return PathInfo{}, err
	}
	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Deriver    string   `json:"deriver"`
		Signatures []string `json:"signatures"`
		CA         string   `json:"ca"`
	}
	if err := json.Unmarshal(out, &infos); err != nil || len(infos) != 1 || infos[0].Path != path {
		return PathInfo{}, fmt.Errorf("nix path-info --store %s --json %s printed %q (%v)", store, path, out, err)
	}
	in := infos[0]
	// Nix 2.8 writes SRI hashes here.
	h, err := nixhash.ParseAny(in.NarHash, nil)
	if err != nil {
		return PathInfo{}, fmt.Errorf("nix path-info: narHash %q of %s: %v", in.NarHash, path, err)
	}
	info := PathInfo{
		NarHash:    h.Format(nixhash.NixBase32, true),
		NarSize:    in.NarSize,
		References: slices.Sorted(slices.Values(in.References)),
		Deriver:    in.Deriver,
		Signatures: slices.Sorted(slices.Values(in.Signatures)),
		CA:         in.CA,
	}
	return info, nil
}

// MustInfo is Info that fails the test on error.
func MustInfo(t testing.TB, store, path string) PathInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	info, err := Info(ctx, store, path)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// dumpArgs dumps a path of a store: `nix store dump-path --store` reads the
// chroot store, where `nix-store --store DIR --dump PATH` reads the file
// system at PATH, that is the machine's store.
func dumpArgs(store, path string) []string {
	return []string{"store", "dump-path", "--store", store, path}
}

// MustDump returns the NAR of path in store, as Nix writes it; if Nix
// fails, so does the test.
func MustDump(t testing.TB, store, path string) []byte {
	t.Helper()
	return Must(t, "nix", dumpArgs(store, path)...)
}

// DumpTo writes the NAR of path in store to w.
func DumpTo(ctx context.Context, w io.Writer, store, path string) error {
	cmd := Command(ctx, "nix", dumpArgs(store, path)...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	return nil
}

// DumpDigest returns the hex SHA-256 digest and the size of the NAR of path
// in store, without holding the NAR.
func DumpDigest(ctx context.Context, store, path string) (string, int64, error) {
	h := sha256.New()
	c := &countingWriter{w: h}
	if err := DumpTo(ctx, c, store, path); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), c.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// HashPart returns the 32-character hash part of a store path.
func HashPart(storePath string) string {
	return filepath.Base(storePath)[:32]
}
