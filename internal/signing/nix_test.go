package signing_test

// Interoperability with the real Nix: keys made by Nix load here, keys made
// here load in Nix, and since ed25519 signatures are deterministic, our
// signature of a path must be byte-equal to the one Nix makes with the same key.
//
// These tests need `nix` and `nix-store` on PATH (tested with Nix 2.8). They are
// skipped without them, unless CI=true, where that is a failure. They use only
// throw-away chroot stores under t.TempDir(), never the machine's store, so
// they need no root and no daemon.

import (
	"context"
	"encoding/json"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/peerix/peerix/internal/nixtest"
	"github.com/peerix/peerix/internal/signing"
)

func TestMain(m *testing.M) { nixtest.Main(m) }

// nixCmd runs a Nix tool (nixtest.Command) and returns its stdout.
func nixCmd(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	return string(nixtest.MustInput(t, stdin, name, args...))
}

// chrootStore is a throw-away Nix store holding three text paths, one of them
// referring to the other two (so the fingerprint has several references, whose
// names sort differently from their hashes). In /nix/store they are
// input-addressed (no CA field); in a custom store directory they are
// content-addressed.
type chrootStore struct {
	url      string // --store argument
	storeDir string // logical store directory
	top      string // store path with references
}

func newChrootStore(t *testing.T, customStoreDir bool) chrootStore {
	t.Helper()
	root := t.TempDir()
	s := chrootStore{url: root, storeDir: "/nix/store"}
	if customStoreDir {
		s.storeDir = filepath.Join(root, "store")
		s.url = "local?store=" + s.storeDir + "&state=" + filepath.Join(root, "state") + "&log=" + filepath.Join(root, "log")
	}
	out := nixCmd(t, nil, "nix-instantiate", "--store", s.url, "--eval", "--read-write-mode", "--json", "-E", `
		let a = builtins.toFile "zz-a" "hello";
		    b = builtins.toFile "aa-b" "x ${a}";
		in builtins.toFile "mm-c" "${b} ${a}"`)
	if err := json.Unmarshal([]byte(out), &s.top); err != nil {
		t.Fatalf("nix-instantiate output %q: %v", out, err)
	}
	if path.Dir(s.top) != s.storeDir {
		t.Fatalf("store path %s not in %s", s.top, s.storeDir)
	}
	if !customStoreDir {
		// builtins.toFile makes content-addressed paths, which Nix trusts
		// without any signature. Exported and imported into a fresh store
		// they lose their CA field and, like most paths, count as trusted
		// only through a signature.
		closure := strings.Fields(nixCmd(t, nil, "nix-store", "--store", s.url, "-qR", s.top))
		export := nixCmd(t, nil, "nix-store", append([]string{"--store", s.url, "--export"}, closure...)...)
		s.url = t.TempDir()
		nixCmd(t, []byte(export), "nix-store", "--store", s.url, "--import")
	}
	return s
}

type nixPathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
}

// pathInfos returns the closure of s.top as narinfos, with Nix's signatures.
func (s chrootStore) pathInfos(t *testing.T) []*narinfo.NarInfo {
	t.Helper()
	out := nixCmd(t, nil, "nix", "path-info", "--store", s.url, "--json", "-r", s.top)
	var infos []nixPathInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("path-info output %q: %v", out, err)
	}
	if len(infos) != 3 {
		t.Fatalf("want 3 paths, got %d", len(infos))
	}
	var nis []*narinfo.NarInfo
	for _, pi := range infos {
		h, err := nixhash.ParseAny(pi.NarHash, nil)
		if err != nil {
			t.Fatalf("narHash %q: %v", pi.NarHash, err)
		}
		ni := &narinfo.NarInfo{StorePath: pi.Path, NarHash: h, NarSize: pi.NarSize}
		for _, r := range pi.References {
			ni.References = append(ni.References, path.Base(r))
		}
		for _, sig := range pi.Signatures {
			sg, err := signature.ParseSignature(sig)
			if err != nil {
				t.Fatalf("signature %q: %v", sig, err)
			}
			ni.Signatures = append(ni.Signatures, sg)
		}
		nis = append(nis, ni)
	}
	return nis
}

// checkSameSignatures signs every path of s with key (whose Nix signature is
// already on the paths) and requires byte-equal signatures, and Nix's
// signatures to verify with pub.
func checkSameSignatures(t *testing.T, s chrootStore, key signature.SecretKey, pub []signature.PublicKey) {
	t.Helper()
	nis := s.pathInfos(t)
	sawRefs := false
	for _, ni := range nis {
		if len(ni.References) > 1 {
			sawRefs = true
		}
		if len(ni.Signatures) != 1 {
			t.Fatalf("%s: want 1 Nix signature, got %v", ni.StorePath, ni.Signatures)
		}
		nixSig := ni.Signatures[0].String()
		if !signing.Verify(ni, pub) {
			t.Errorf("%s: Nix's signature does not verify; fingerprint %s", ni.StorePath, signing.Fingerprint(ni))
		}
		if got := signing.FingerprintStoreDir(ni, s.storeDir); got != signing.Fingerprint(ni) {
			t.Errorf("store dir not derived from StorePath: %s", got)
		}

		// Our signature, references in reverse order, equals Nix's.
		ours := &narinfo.NarInfo{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize}
		for i := len(ni.References) - 1; i >= 0; i-- {
			ours.References = append(ours.References, ni.References[i])
		}
		if err := signing.Sign(ours, key); err != nil {
			t.Fatal(err)
		}
		if len(ours.Signatures) != 1 || ours.Signatures[0].String() != nixSig {
			t.Errorf("%s: our signature %v != Nix's %s", ni.StorePath, ours.Signatures, nixSig)
		}
	}
	if !sawRefs {
		t.Fatal("no path with several references was checked")
	}
}

// TestNixGeneratedKey: a key pair made by nix-store loads here, derives the
// same public key, and signs exactly as Nix does, in /nix/store and in a
// store with another store directory.
func TestNixGeneratedKey(t *testing.T) {
	nixtest.Require(t)
	dir := t.TempDir()
	secFile, pubFile := filepath.Join(dir, "test1.sec"), filepath.Join(dir, "test1.pub")
	nixCmd(t, nil, "nix-store", "--store", filepath.Join(dir, "s"), "--generate-binary-cache-key", "test1", secFile, pubFile)

	sk, err := signing.LoadSecretKeyFile(secFile)
	if err != nil {
		t.Fatal(err)
	}
	pubText := readFile(t, pubFile)
	if got := sk.ToPublicKey().String(); got != strings.TrimSpace(pubText) {
		t.Fatalf("derived public key %s, Nix wrote %s", got, pubText)
	}
	pub, err := signing.ParsePublicKeys([]string{pubText})
	if err != nil {
		t.Fatal(err)
	}

	// Round trip on a real narinfo.
	ni := parseNarinfo(t, readFile(t, curlNarinfo))
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if !signing.Verify(ni, pub) {
		t.Fatal("own signature with Nix's key does not verify")
	}
	if !signing.Verify(ni, mustPub(t, nixosPublicKey)) {
		t.Fatal("upstream signature lost")
	}

	for _, custom := range []bool{false, true} {
		name := "/nix/store"
		if custom {
			name = "custom store dir"
		}
		t.Run(name, func(t *testing.T) {
			s := newChrootStore(t, custom)
			nixCmd(t, nil, "nix", "store", "sign", "--store", s.url, "--key-file", secFile, "-r", s.top)
			checkSameSignatures(t, s, sk, pub)
		})
	}
}

// TestGeneratedKeyAcceptedByNix: a key pair written by WriteKeyPair is read by
// Nix, which derives the same public key, signs with it exactly as we do, and
// trusts those signatures with our .pub.
func TestGeneratedKeyAcceptedByNix(t *testing.T) {
	nixtest.Require(t)
	secFile, pubFile, err := signing.WriteKeyPair("peerix-test-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pubText := readFile(t, pubFile)
	secText := readFile(t, secFile)

	derived := nixCmd(t, []byte(secText), "nix", "key", "convert-secret-to-public")
	if strings.TrimSpace(derived) != pubText {
		t.Fatalf("Nix derives %q from our secret key, our .pub says %q", derived, pubText)
	}

	sk, err := signing.LoadSecretKeyFile(secFile)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, pubText)
	s := newChrootStore(t, false)
	nixCmd(t, nil, "nix", "store", "sign", "--store", s.url, "--key-file", secFile, "-r", s.top)
	checkSameSignatures(t, s, sk, pub)

	// Nix trusts the signatures with our public key...
	nixCmd(t, nil, "nix", "store", "verify", "--store", s.url, "--no-contents",
		"--option", "trusted-public-keys", pubText, "-r", s.top)
	// ...and not with another one (the check above is not vacuous).
	_, otherPub, err := signing.GenerateKeyPair("peerix-test-1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := nixtest.Output(context.Background(), "nix", "store", "verify", "--store", s.url, "--no-contents",
		"--option", "trusted-public-keys", otherPub, "-r", s.top); err == nil {
		t.Fatalf("nix store verify accepted signatures under an unrelated key:\n%s", out)
	}
}
