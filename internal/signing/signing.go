// Package signing handles Nix signing keys and narinfo signatures in Nix's own
// formats, on top of go-nix's narinfo and narinfo/signature packages.
//
// Key files are "name:base64(key)": a secret key holds 64 bytes (the ed25519
// seed followed by the public key, as Go's ed25519.PrivateKey), a public key
// 32. A signature is "name:base64(ed25519 signature)" over the fingerprint
//
//	1;<store path>;<NarHash as sha256:nixbase32>;<NarSize>;<references as full store paths, comma-joined>
//
// with the references sorted, as Nix (which keeps them in a set) does.
package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// DefaultStoreDir is the store directory of a standard Nix installation.
const DefaultStoreDir = "/nix/store"

// maxKeyFileSize bounds how much of a key file is read; a real one is < 200 bytes.
const maxKeyFileSize = 64 << 10

// LoadSecretKeyFile reads a Nix secret key file ("name:base64(64-byte ed25519
// key)", surrounding whitespace such as a trailing newline allowed), as written
// by `nix-store --generate-binary-cache-key` or WriteKeyPair. A file that
// group or others may access is refused (ErrKeyFileMode), like the peer
// identity key: whoever reads it can sign as this machine. Errors name the
// file and never echo key material.
func LoadSecretKeyFile(file string) (signature.SecretKey, error) {
	f, err := os.Open(file)
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: %w", file, unwrapPathError(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: %w", file, unwrapPathError(err))
	}
	if err := CheckSecretKeyMode(file, fi); err != nil {
		return signature.SecretKey{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: %w", file, unwrapPathError(err))
	}
	if len(data) > maxKeyFileSize {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: too large to be a key file", file)
	}
	sk, err := ParseSecretKey(string(data))
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: %w", file, err)
	}
	return sk, nil
}

// ErrKeyFileMode marks a secret key file that group or others may access.
var ErrKeyFileMode = errors.New("group or others may read it")

// CheckSecretKeyMode checks what fi (file's Stat) says about a secret key
// file: a regular file that neither group nor others may access. The error
// is one line naming the file and the fix.
func CheckSecretKeyMode(file string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("secret key file %s: not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("secret key file %s: mode %04o: %w; it must be 0600 (chmod 600 %s)", file, perm, ErrKeyFileMode, file)
	}
	return nil
}

// unwrapPathError drops the *fs.PathError wrapper (whose message repeats the
// file name we already print) and keeps its cause, e.g. "permission denied".
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// ParseSecretKey parses a secret key in Nix's "name:base64" form. Surrounding
// whitespace is ignored. Error messages never contain key material.
func ParseSecretKey(s string) (signature.SecretKey, error) {
	name, data, err := decodeKey(s)
	if err != nil {
		return signature.SecretKey{}, err
	}
	switch len(data) {
	case ed25519.PrivateKeySize:
	case ed25519.PublicKeySize:
		return signature.SecretKey{}, errors.New("holds a 32-byte public key, not a 64-byte secret key (use the secret key file)")
	default:
		return signature.SecretKey{}, fmt.Errorf("key data is %d bytes, want 64 for an ed25519 secret key", len(data))
	}
	// Nix stores seed||public key; a file whose halves disagree would sign
	// with one key and advertise another.
	if !bytes.Equal(ed25519.NewKeyFromSeed(data[:ed25519.SeedSize]), data) {
		return signature.SecretKey{}, errors.New("key data is corrupt: its public half does not belong to its private half")
	}
	sk, err := signature.LoadSecretKey(name + ":" + base64.StdEncoding.EncodeToString(data))
	if err != nil {
		// Not reachable after the checks above; go-nix's messages hold no key data.
		return signature.SecretKey{}, err
	}
	return sk, nil
}

// ParsePublicKey parses one public key in Nix's "name:base64(32 bytes)" form.
// The error quotes the key (a public key is not secret) unless the text turns
// out to be a secret key, whose data is then left out.
func ParsePublicKey(s string) (signature.PublicKey, error) {
	s = strings.TrimSpace(s)
	name, data, err := decodeKey(s)
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("public key %q: %w", s, err)
	}
	switch len(data) {
	case ed25519.PublicKeySize:
		return signature.PublicKey{Name: name, Data: ed25519.PublicKey(data)}, nil
	case ed25519.PrivateKeySize:
		return signature.PublicKey{}, fmt.Errorf("public key %q: this is a 64-byte secret key, not a public key (give the public key, never the secret one)", name+":…")
	default:
		return signature.PublicKey{}, fmt.Errorf("public key %q: key data is %d bytes, want 32", s, len(data))
	}
}

// ParsePublicKeys parses public keys in Nix's "name:base64" form. Like Nix's
// trusted-public-keys setting, an entry may hold several keys separated by
// whitespace; empty entries are ignored. The error quotes the offending key.
func ParsePublicKeys(keys []string) ([]signature.PublicKey, error) {
	var out []signature.PublicKey
	for _, entry := range keys {
		for _, k := range strings.Fields(entry) {
			pk, err := ParsePublicKey(k)
			if err != nil {
				return nil, err
			}
			out = append(out, pk)
		}
	}
	return out, nil
}

// decodeKey splits "name:base64" and decodes the data. Errors hold no key data.
func decodeKey(s string) (name string, data []byte, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil, errors.New("is empty")
	}
	if strings.IndexFunc(s, unicode.IsSpace) >= 0 {
		return "", nil, errors.New("must hold exactly one key, \"name:base64\", without inner whitespace")
	}
	name, b64, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, errors.New("not in Nix key format \"name:base64\" (no ':')")
	}
	if name == "" {
		return "", nil, errors.New("key name (before ':') is empty")
	}
	if b64 == "" {
		return "", nil, errors.New("key data (after ':') is empty")
	}
	data, err = base64.StdEncoding.DecodeString(b64)
	if err != nil {
		// Nix itself tolerates missing padding; so do we.
		data, err = base64.RawStdEncoding.DecodeString(b64)
	}
	if err != nil {
		return "", nil, errors.New("key data (after ':') is not valid base64")
	}
	return name, data, nil
}

// Fingerprint returns the string Nix signs for ni:
//
//	1;<store path>;<NarHash as sha256:nixbase32>;<NarSize>;<references as full store paths, comma-joined>
//
// The store directory that references are resolved against is the directory
// of ni.StorePath (a narinfo's references live in the same store as the path
// itself), or DefaultStoreDir if StorePath is not absolute. References are
// sorted and deduplicated, as Nix does. A missing NarHash gives an empty hash
// field (such a narinfo can be neither signed nor verified).
func Fingerprint(ni *narinfo.NarInfo) string {
	return FingerprintStoreDir(ni, "")
}

// FingerprintStoreDir is Fingerprint with an explicit store directory for the
// references; "" means derive it as Fingerprint does.
func FingerprintStoreDir(ni *narinfo.NarInfo, storeDir string) string {
	if storeDir == "" {
		storeDir = storeDirOf(ni.StorePath)
	}
	storeDir = strings.TrimRight(storeDir, "/")

	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(ni.StorePath)
	b.WriteByte(';')
	if ni.NarHash != nil {
		b.WriteString(ni.NarHash.Format(nixhash.NixBase32, true))
	}
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(ni.NarSize, 10))
	b.WriteByte(';')

	refs := slices.Clone(ni.References)
	slices.Sort(refs)
	refs = slices.Compact(refs)
	for i, r := range refs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(storeDir)
		b.WriteByte('/')
		b.WriteString(r)
	}
	return b.String()
}

func storeDirOf(storePath string) string {
	if strings.HasPrefix(storePath, "/") {
		if d := path.Dir(storePath); d != "/" {
			return d
		}
	}
	return DefaultStoreDir
}

// checkSignable reports why ni has no well-defined fingerprint, as Nix would
// refuse it (Nix only signs and verifies sha256 NAR hashes).
func checkSignable(ni *narinfo.NarInfo) error {
	if ni == nil {
		return errors.New("no narinfo")
	}
	if !strings.HasPrefix(ni.StorePath, "/") {
		return fmt.Errorf("narinfo StorePath %q is not an absolute store path", ni.StorePath)
	}
	if ni.NarHash == nil {
		return fmt.Errorf("narinfo for %s has no NarHash", ni.StorePath)
	}
	if ni.NarHash.Algo() != nixhash.SHA256 {
		return fmt.Errorf("narinfo for %s: NarHash must be sha256, is %s", ni.StorePath, ni.NarHash.Algo())
	}
	return nil
}

// Sign adds a signature by key to ni.Signatures. If ni already carries a valid
// signature by a key of the same name it is left as it is; a signature by that
// name which does not verify against key (a stale or forged one) is replaced,
// since Nix would otherwise see no valid signature by this name.
func Sign(ni *narinfo.NarInfo, key signature.SecretKey) error {
	if err := checkSignable(ni); err != nil {
		return err
	}
	// A zero SecretKey would make go-nix panic; its fields are unexported, so
	// check its length through its encoding.
	if name, data, err := decodeKey(key.String()); err != nil || name == "" || len(data) != ed25519.PrivateKeySize {
		return errors.New("sign: no valid secret key")
	}
	pub := key.ToPublicKey()
	fp := Fingerprint(ni)
	kept := ni.Signatures[:0:0]
	for _, s := range ni.Signatures {
		if s.Name != pub.Name {
			kept = append(kept, s)
			continue
		}
		if ed25519.Verify(pub.Data, []byte(fp), s.Data) {
			return nil
		}
	}
	sig, err := key.Sign(nil, fp)
	if err != nil {
		return fmt.Errorf("sign %s: %w", ni.StorePath, err)
	}
	ni.Signatures = append(kept, sig)
	return nil
}

// Verify reports whether ni carries a valid signature by one of keys. Only a
// signature whose name matches a key's name is checked against that key, as
// in Nix. A narinfo without a sha256 NarHash never verifies.
func Verify(ni *narinfo.NarInfo, keys []signature.PublicKey) bool {
	if checkSignable(ni) != nil || len(keys) == 0 || len(ni.Signatures) == 0 {
		return false
	}
	fp := []byte(Fingerprint(ni))
	for _, s := range ni.Signatures {
		if len(s.Data) != ed25519.SignatureSize {
			continue
		}
		for _, k := range keys {
			// ed25519.Verify panics on a public key of the wrong length.
			if k.Name == s.Name && len(k.Data) == ed25519.PublicKeySize && ed25519.Verify(k.Data, fp, s.Data) {
				return true
			}
		}
	}
	return false
}

// ValidateKeyName checks that name can name a key: non-empty, no ':', no
// whitespace or control characters (nix.conf separates keys by whitespace),
// and usable as a file name (no '/', not "." or "..").
func ValidateKeyName(name string) error {
	switch {
	case name == "":
		return errors.New("key name is empty")
	case name == "." || name == "..":
		return fmt.Errorf("key name %q is not allowed", name)
	case len(name) > 255:
		return errors.New("key name is longer than 255 bytes")
	case strings.ContainsAny(name, ":/\\"):
		return fmt.Errorf("key name %q must not contain ':', '/' or '\\'", name)
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("key name %q must not contain whitespace or control characters", name)
	}
	return nil
}

// GenerateKeyPair makes a new ed25519 key pair named name (conventionally
// "host.example.org-1") and returns both keys in Nix's "name:base64" form,
// exactly as `nix-store --generate-binary-cache-key` writes them.
func GenerateKeyPair(name string) (secret, public string, err error) {
	if err := ValidateKeyName(name); err != nil {
		return "", "", err
	}
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	return sk.String(), pk.String(), nil
}

// WriteKeyPair generates a key pair named name and writes the secret key to
// <outDir>/<name>.sec (mode 0600) and the public key to <outDir>/<name>.pub
// (mode 0644), without a trailing newline, as Nix does. outDir ("" = ".") is
// created if missing. It refuses to overwrite either file, and leaves no
// half-written pair behind on failure. It returns the two paths.
func WriteKeyPair(name, outDir string) (secPath, pubPath string, err error) {
	secret, public, err := GenerateKeyPair(name)
	if err != nil {
		return "", "", err
	}
	if outDir == "" {
		outDir = "."
	}
	secPath = filepath.Join(outDir, name+".sec")
	pubPath = filepath.Join(outDir, name+".pub")
	for _, p := range []string{secPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("%s already exists; refusing to overwrite it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("%s: %w", p, unwrapPathError(err))
		}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", "", fmt.Errorf("create %s: %w", outDir, unwrapPathError(err))
	}
	if err := writeNew(secPath, secret, 0o600); err != nil {
		return "", "", err
	}
	if err := writeNew(pubPath, public, 0o644); err != nil {
		os.Remove(secPath)
		return "", "", err
	}
	return secPath, pubPath, nil
}

// writeNew creates file (which must not exist) with exactly mode perm,
// whatever the umask, and writes content to it durably.
func writeNew(file, content string, perm os.FileMode) (err error) {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it", file)
		}
		return fmt.Errorf("create %s: %w", file, unwrapPathError(err))
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write %s: %w", file, unwrapPathError(cerr))
		}
		if err != nil {
			os.Remove(file)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", file, unwrapPathError(err))
	}
	if _, err := f.WriteString(content); err != nil {
		return fmt.Errorf("write %s: %w", file, unwrapPathError(err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", file, unwrapPathError(err))
	}
	return nil
}
