package signing_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

const (
	nixosPublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
	// go-nix's published test key pair (pkg/narinfo/signature/signature_test.go).
	test1PublicKey = "test1:tLAEn+EeaBUJYqEpTd2yeerr7Ic6+0vWe+aXL/vYUpE="
	test1SecretKey = "test1:jbX9NxZp8WB/coK8k7yLf0gNYmBbIbCrOFwgJgI7OV+0sASf4R5oFQlioSlN3bJ56uvshzr7S9Z75pcv+9hSkQ=="

	curlNarinfo     = "testdata/syd87l2rxw8cbsxmxl853h0r6pdwhwjr.narinfo"
	netToolsNarinfo = "testdata/00bgd045z0d4icpbc2yyz4gx48ak44la.narinfo"
)

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func parseNarinfo(t testing.TB, text string) *narinfo.NarInfo {
	t.Helper()
	ni, err := narinfo.Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse narinfo: %v", err)
	}
	return ni
}

func mustPub(t testing.TB, s string) []signature.PublicKey {
	t.Helper()
	keys, err := signing.ParsePublicKeys([]string{s})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestFingerprintMatchesNix(t *testing.T) {
	ni := parseNarinfo(t, readFile(t, curlNarinfo))
	// The fingerprint go-nix's test suite checks against Nix's.
	want := "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
	if got := signing.Fingerprint(ni); got != want {
		t.Fatalf("Fingerprint:\n got %s\nwant %s", got, want)
	}
	if got := ni.Fingerprint(); got != want {
		t.Fatalf("go-nix Fingerprint differs: %s", got)
	}
	if got := signing.FingerprintStoreDir(ni, "/nix/store/"); got != want {
		t.Fatalf("FingerprintStoreDir with trailing slash: %s", got)
	}

	// References are sorted and deduplicated, as Nix's StorePathSet.
	shuffled := *ni
	shuffled.References = []string{ni.References[3], ni.References[1], ni.References[0], ni.References[2], ni.References[1]}
	if got := signing.Fingerprint(&shuffled); got != want {
		t.Fatalf("Fingerprint of shuffled refs:\n got %s\nwant %s", got, want)
	}
	if !slicesEqual(shuffled.References, []string{ni.References[3], ni.References[1], ni.References[0], ni.References[2], ni.References[1]}) {
		t.Fatal("Fingerprint modified the narinfo's References")
	}

	// A base16 NarHash is printed in nixbase32.
	b16 := strings.Replace(readFile(t, netToolsNarinfo),
		"NarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6",
		"NarHash: sha256:"+hexOfNixbase32(t, "sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6"), 1)
	if !strings.Contains(signing.Fingerprint(parseNarinfo(t, b16)), ";sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6;") {
		t.Fatalf("base16 NarHash not normalised: %s", signing.Fingerprint(parseNarinfo(t, b16)))
	}

	// No references: the fingerprint ends in ';'.
	noRefs := *ni
	noRefs.References = nil
	if got := signing.Fingerprint(&noRefs); !strings.HasSuffix(got, ";196040;") {
		t.Fatalf("no refs: %s", got)
	}

	// Another store directory, taken from StorePath or given explicitly.
	other := *ni
	other.StorePath = "/opt/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"
	want2 := strings.ReplaceAll(want, "/nix/store/", "/opt/store/")
	if got := signing.Fingerprint(&other); got != want2 {
		t.Fatalf("other store dir:\n got %s\nwant %s", got, want2)
	}
	if got := signing.FingerprintStoreDir(&other, "/opt/store"); got != want2 {
		t.Fatalf("explicit store dir: %s", got)
	}

	// Never panics on an incomplete narinfo.
	_ = signing.Fingerprint(&narinfo.NarInfo{})
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func hexOfNixbase32(t *testing.T, h string) string {
	t.Helper()
	ni := parseNarinfo(t, "StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x\nNarHash: "+h+"\nNarSize: 1\n")
	const hexdigits = "0123456789abcdef"
	var b strings.Builder
	for _, c := range ni.NarHash.Digest() {
		b.WriteByte(hexdigits[c>>4])
		b.WriteByte(hexdigits[c&15])
	}
	return b.String()
}

// TestVerifyRealCacheNixosOrgSignature checks real cache.nixos.org narinfos
// against the real cache.nixos.org-1 key, and that any change breaks them.
func TestVerifyRealCacheNixosOrgSignature(t *testing.T) {
	nixos := mustPub(t, nixosPublicKey)
	for _, file := range []string{curlNarinfo, netToolsNarinfo} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			text := readFile(t, file)
			ni := parseNarinfo(t, text)
			if !signing.Verify(ni, nixos) {
				t.Fatalf("real cache.nixos.org-1 signature does not verify; fingerprint %s", signing.Fingerprint(ni))
			}
			// Among other keys, in any order.
			keys := append(mustPub(t, test1PublicKey), nixos...)
			if !signing.Verify(ni, keys) {
				t.Fatal("does not verify with the key among others")
			}

			narHashLine := lineWithPrefix(t, text, "NarHash: sha256:")
			refsLine := lineWithPrefix(t, text, "References: ")
			mutations := map[string]string{
				"NarHash one char":    strings.Replace(text, narHashLine, flipLastChar(narHashLine), 1),
				"reference one char":  strings.Replace(text, refsLine, strings.Replace(refsLine, "glibc-2.", "glibc-3.", 1), 1),
				"reference dropped":   strings.Replace(text, refsLine, "References: ", 1),
				"reference added":     strings.Replace(text, refsLine, refsLine+" 7gx4kiv5m0i7d7qkixq2cwzbr10lvxwd-evil", 1),
				"NarSize":             strings.Replace(text, "NarSize: ", "NarSize: 1", 1),
				"StorePath":           strings.Replace(text, "-bin\n", "-biN\n", 1),
				"StorePath net-tools": strings.Replace(text, "net-tools-1.60", "net-tools-1.61", 1),
			}
			for name, mutated := range mutations {
				if mutated == text {
					continue // mutation not applicable to this file
				}
				if signing.Verify(parseNarinfo(t, mutated), nixos) {
					t.Errorf("%s: still verifies after mutation", name)
				}
			}

			// A signature byte flipped.
			bad := parseNarinfo(t, text)
			for i := range bad.Signatures {
				bad.Signatures[i].Data = bytes.Clone(bad.Signatures[i].Data)
				bad.Signatures[i].Data[0] ^= 1
			}
			if signing.Verify(bad, nixos) {
				t.Error("verifies with a corrupted signature")
			}

			// Unrelated fields do not matter (they are not signed).
			unsigned := strings.Replace(text, "Compression: xz", "Compression: bzip2", 1)
			if !signing.Verify(parseNarinfo(t, unsigned), nixos) {
				t.Error("Compression change broke the signature; it is not part of the fingerprint")
			}
		})
	}

	ni := parseNarinfo(t, readFile(t, curlNarinfo))
	// Right name, wrong key data.
	wrong := []signature.PublicKey{{Name: "cache.nixos.org-1", Data: mustPub(t, test1PublicKey)[0].Data}}
	if signing.Verify(ni, wrong) {
		t.Error("verifies with the wrong key data under the right name")
	}
	// Right key data, wrong name.
	renamed := []signature.PublicKey{{Name: "cache.nixos.org-2", Data: mustPub(t, nixosPublicKey)[0].Data}}
	if signing.Verify(ni, renamed) {
		t.Error("verifies with the right key under another name")
	}
	// Malformed keys must not panic.
	if signing.Verify(ni, []signature.PublicKey{{Name: "cache.nixos.org-1", Data: []byte{1, 2, 3}}}) {
		t.Error("verifies with a 3-byte key")
	}
	if signing.Verify(ni, nil) {
		t.Error("verifies with no keys")
	}
	if signing.Verify(&narinfo.NarInfo{StorePath: ni.StorePath, Signatures: ni.Signatures}, mustPub(t, nixosPublicKey)) {
		t.Error("verifies without NarHash")
	}
	// A first key with a matching name but failing signature must not hide a
	// later valid one (go-nix's VerifyFirst would stop there).
	ni2 := parseNarinfo(t, readFile(t, curlNarinfo))
	forged, _ := signature.ParseSignature("cache.nixos.org-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64)))
	ni2.Signatures = append([]signature.Signature{forged}, ni2.Signatures...)
	if !signing.Verify(ni2, mustPub(t, nixosPublicKey)) {
		t.Error("an invalid signature before the valid one hid it")
	}
}

func lineWithPrefix(t *testing.T, text, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no line %q", prefix)
	return ""
}

func flipLastChar(s string) string {
	c := s[len(s)-1]
	r := byte('0')
	if c == '0' {
		r = '1'
	}
	return s[:len(s)-1] + string(r)
}

func TestSignWithGoNixTestKey(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	if got := sk.ToPublicKey().String(); got != test1PublicKey {
		t.Fatalf("public key %s, want %s", got, test1PublicKey)
	}
	text := readFile(t, curlNarinfo)
	want := lineWithPrefix(t, text, "Sig: test1:")[len("Sig: "):]

	ni := parseNarinfo(t, text)
	ni.Signatures = nil
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if len(ni.Signatures) != 1 || ni.Signatures[0].String() != want {
		t.Fatalf("signature %v, want %s (ed25519 is deterministic)", ni.Signatures, want)
	}
	if !signing.Verify(ni, mustPub(t, test1PublicKey)) {
		t.Fatal("own signature does not verify")
	}

	// Signing again adds nothing.
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if len(ni.Signatures) != 1 {
		t.Fatalf("signed twice: %v", ni.Signatures)
	}

	// Existing signatures by other keys are kept, ours appended.
	ni = parseNarinfo(t, text)
	ni.Signatures = ni.Signatures[:1] // cache.nixos.org-1 only
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if len(ni.Signatures) != 2 || ni.Signatures[0].Name != "cache.nixos.org-1" || ni.Signatures[1].String() != want {
		t.Fatalf("signatures %v", ni.Signatures)
	}
	if !signing.Verify(ni, mustPub(t, nixosPublicKey)) {
		t.Fatal("upstream signature lost")
	}

	// Already signed by us: unchanged.
	ni = parseNarinfo(t, text)
	before := ni.String()
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if ni.String() != before {
		t.Fatalf("narinfo changed:\n%s", ni.String())
	}

	// A stale signature under our key name is replaced by a valid one.
	ni = parseNarinfo(t, text)
	stale, _ := signature.ParseSignature("test1:" + base64.StdEncoding.EncodeToString(make([]byte, 64)))
	ni.Signatures = []signature.Signature{ni.Signatures[0], stale}
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if len(ni.Signatures) != 2 || ni.Signatures[1].String() != want {
		t.Fatalf("stale signature not replaced: %v", ni.Signatures)
	}

	// Unsignable narinfos are refused, not signed with a meaningless fingerprint.
	for name, bad := range map[string]*narinfo.NarInfo{
		"nil":       nil,
		"no hash":   {StorePath: "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"},
		"no path":   {NarHash: parseNarinfo(t, text).NarHash},
		"sha1 hash": parseNarinfo(t, "StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-x\nNarHash: sha1:0000000000000000000000000000000000000000\n"),
	} {
		if err := signing.Sign(bad, sk); err == nil {
			t.Errorf("%s: Sign succeeded", name)
		}
	}
	// A zero key is an error, not a panic.
	if err := signing.Sign(parseNarinfo(t, text), signature.SecretKey{}); err == nil {
		t.Error("Sign with zero key succeeded")
	}
}

func TestLoadSecretKeyFileBad(t *testing.T) {
	dir := t.TempDir()
	good := test1SecretKey
	seed := make([]byte, 32)
	seed[0] = 7
	priv := ed25519.NewKeyFromSeed(seed)
	mismatched := bytes.Clone(priv)
	mismatched[40] ^= 1
	secretB64 := good[len("test1:"):]

	tests := []struct {
		name    string
		content string
		wantErr string
	}{
		{"empty", "", "is empty"},
		{"whitespace only", " \n\t\n", "is empty"},
		{"no colon", "test1" + secretB64, "no ':'"},
		{"empty name", ":" + secretB64, "name"},
		{"empty data", "test1:", "empty"},
		{"bad base64", "test1:" + secretB64[:20] + "!!" + secretB64[22:], "not valid base64"},
		{"wrong length", "test1:" + base64.StdEncoding.EncodeToString(make([]byte, 48)), "48 bytes"},
		{"public key given as secret", test1PublicKey + "\n", "public key"},
		{"halves disagree", "test1:" + base64.StdEncoding.EncodeToString(mismatched), "corrupt"},
		{"two keys", good + "\n" + good + "\n", "exactly one key"},
		{"secret and public", good + " " + test1PublicKey, "exactly one key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".sec")
			if err := os.WriteFile(file, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := signing.LoadSecretKeyFile(file)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.Contains(msg, file) {
				t.Errorf("error does not name the file: %s", msg)
			}
			if !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error %q does not contain %q", msg, tt.wantErr)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			// Never echo key material (any 8-char run of the base64 data).
			for _, material := range []string{secretB64, base64.StdEncoding.EncodeToString(mismatched), test1PublicKey[len("test1:"):]} {
				for i := 0; i+8 <= len(material); i++ {
					if strings.Contains(msg, material[i:i+8]) {
						t.Fatalf("error echoes key material: %s", msg)
					}
				}
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		file := filepath.Join(dir, "nope.sec")
		_, err := signing.LoadSecretKeyFile(file)
		if err == nil || !strings.Contains(err.Error(), file) || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		file := filepath.Join(dir, "big.sec")
		if err := os.WriteFile(file, bytes.Repeat([]byte("a"), 64<<10+1), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := signing.LoadSecretKeyFile(file); err == nil || !strings.Contains(err.Error(), "too large") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("readable by group or others", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o660} {
			file := filepath.Join(dir, fmt.Sprintf("mode%04o.sec", mode))
			if err := os.WriteFile(file, []byte(good+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, mode); err != nil {
				t.Fatal(err)
			}
			_, err := signing.LoadSecretKeyFile(file)
			if !errors.Is(err, signing.ErrKeyFileMode) {
				t.Fatalf("mode %04o: err = %v, want ErrKeyFileMode", mode, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, "chmod 600 "+file) || strings.Contains(msg, "\n") || strings.Contains(msg, secretB64[:8]) {
				t.Errorf("mode %04o: error %q: want one line naming the fix, no key material", mode, msg)
			}
		}
		if _, err := signing.LoadSecretKeyFile(dir); err == nil {
			t.Error("a directory was loaded as a key file")
		}
	})
	t.Run("trailing whitespace ok", func(t *testing.T) {
		file := filepath.Join(dir, "ok.sec")
		if err := os.WriteFile(file, []byte(good+"\r\n\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		sk, err := signing.LoadSecretKeyFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if sk.String() != good {
			t.Fatal("key changed")
		}
	})
	t.Run("unpadded base64 ok", func(t *testing.T) {
		sk, err := signing.ParseSecretKey(strings.TrimRight(good, "="))
		if err != nil || sk.String() != good {
			t.Fatalf("sk=%v err=%v", sk.String() == good, err)
		}
	})
}

func TestParsePublicKeys(t *testing.T) {
	keys, err := signing.ParsePublicKeys([]string{nixosPublicKey, "  ", test1PublicKey + " " + nixosPublicKey + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys[0].String() != nixosPublicKey || keys[1].String() != test1PublicKey || keys[2].Name != "cache.nixos.org-1" {
		t.Fatalf("keys %v", keys)
	}
	if keys, err := signing.ParsePublicKeys(nil); err != nil || len(keys) != 0 {
		t.Fatalf("nil: %v %v", keys, err)
	}

	for _, tt := range []struct{ key, want string }{
		{"cache.nixos.org-1", `"cache.nixos.org-1"`},
		{":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", `":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="`},
		{"x:6NCHdD59X431o0gWyp%MrAURkbJ16ZPMQFGspcDShjY=", `"x:6NCHdD59X431o0gWyp%MrAURkbJ16ZPMQFGspcDShjY="`},
		{"x:AAAA", `"x:AAAA"`},
	} {
		_, err := signing.ParsePublicKeys([]string{nixosPublicKey, tt.key})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want it to quote the key", tt.key, err)
		}
	}

	// A secret key pasted as a public key is refused without echoing it.
	_, err = signing.ParsePublicKeys([]string{test1SecretKey})
	if err == nil || !strings.Contains(err.Error(), "secret key") || strings.Contains(err.Error(), test1SecretKey[6:20]) {
		t.Fatalf("err = %v", err)
	}
}

func TestGenerateKeyPair(t *testing.T) {
	sec, pub, err := signing.GenerateKeyPair("peerix.example.org-1")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := signing.ParseSecretKey(sec)
	if err != nil {
		t.Fatal(err)
	}
	if sk.String() != sec {
		t.Fatal("secret key does not round-trip")
	}
	// Public key derived in Go equals what go-nix derives from the secret.
	if got := sk.ToPublicKey().String(); got != pub {
		t.Fatalf("derived public key %s != %s", got, pub)
	}
	if !strings.HasPrefix(sec, "peerix.example.org-1:") || !strings.HasPrefix(pub, "peerix.example.org-1:") {
		t.Fatal("names missing")
	}
	ni := parseNarinfo(t, readFile(t, curlNarinfo))
	if err := signing.Sign(ni, sk); err != nil {
		t.Fatal(err)
	}
	if !signing.Verify(ni, mustPub(t, pub)) {
		t.Fatal("does not verify")
	}
	sec2, _, _ := signing.GenerateKeyPair("peerix.example.org-1")
	if sec2 == sec {
		t.Fatal("two generated keys are equal")
	}

	for _, bad := range []string{"", "a:b", "a b", "a/b", ".", "..", "a\nb", "a\x00b", strings.Repeat("x", 256)} {
		if _, _, err := signing.GenerateKeyPair(bad); err == nil {
			t.Errorf("signing.GenerateKeyPair(%q) succeeded", bad)
		}
	}
}

func TestWriteKeyPair(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir")
	secPath, pubPath, err := signing.WriteKeyPair("host-1", dir)
	if err != nil {
		t.Fatal(err)
	}
	if secPath != filepath.Join(dir, "host-1.sec") || pubPath != filepath.Join(dir, "host-1.pub") {
		t.Fatalf("paths %s %s", secPath, pubPath)
	}
	for p, mode := range map[string]os.FileMode{secPath: 0o600, pubPath: 0o644} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), mode)
		}
	}
	sk, err := signing.LoadSecretKeyFile(secPath)
	if err != nil {
		t.Fatal(err)
	}
	pub := readFile(t, pubPath)
	if strings.ContainsAny(pub, "\n ") {
		t.Errorf("public key file has whitespace: %q", pub)
	}
	if sk.ToPublicKey().String() != pub {
		t.Fatal("public key file does not match the secret key")
	}

	// Refuses to overwrite either file, and leaves existing ones untouched.
	secBefore := readFile(t, secPath)
	if _, _, err := signing.WriteKeyPair("host-1", dir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrite: err = %v", err)
	}
	if readFile(t, secPath) != secBefore || readFile(t, pubPath) != pub {
		t.Fatal("existing key files changed")
	}
	if err := os.WriteFile(filepath.Join(dir, "host-2.pub"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := signing.WriteKeyPair("host-2", dir); err == nil {
		t.Fatal("overwrote an existing .pub")
	}
	if _, err := os.Stat(filepath.Join(dir, "host-2.sec")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("left a .sec behind")
	}
	if _, _, err := signing.WriteKeyPair("../evil", dir); err == nil {
		t.Fatal("accepted a name with '/'")
	}
}

type fakeStore struct {
	ni  *narinfo.NarInfo
	err error
}

func (f fakeStore) NarInfo(context.Context, string) (*narinfo.NarInfo, error) { return f.ni, f.err }
func (f fakeStore) NAR(context.Context, string, int64) (*store.NAR, error) {
	return &store.NAR{Size: 3, ReadCloser: io.NopCloser(strings.NewReader("nar"))}, nil
}

func TestNewStore(t *testing.T) {
	sk, err := signing.ParseSecretKey(test1SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	text := readFile(t, curlNarinfo)
	orig := parseNarinfo(t, text)
	orig.Signatures = orig.Signatures[:1] // cache.nixos.org-1 only
	before := orig.String()

	s := signing.NewStore(fakeStore{ni: orig}, sk)
	got, err := s.NarInfo(context.Background(), "syd87l2rxw8cbsxmxl853h0r6pdwhwjr")
	if err != nil {
		t.Fatal(err)
	}
	if orig.String() != before {
		t.Fatal("the wrapped store's narinfo was modified")
	}
	if len(got.Signatures) != 2 || !signing.Verify(got, mustPub(t, test1PublicKey)) || !signing.Verify(got, mustPub(t, nixosPublicKey)) {
		t.Fatalf("signatures %v", got.Signatures)
	}

	// Errors pass through.
	s = signing.NewStore(fakeStore{err: store.ErrNotFound}, sk)
	if _, err := s.NarInfo(context.Background(), "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	// Unsignable narinfos pass through unsigned.
	bare := &narinfo.NarInfo{StorePath: orig.StorePath}
	s = signing.NewStore(fakeStore{ni: bare}, sk)
	if got, err := s.NarInfo(context.Background(), "x"); err != nil || len(got.Signatures) != 0 {
		t.Fatalf("got %v, %v", got, err)
	}
	// NARs pass through.
	nar, err := s.NAR(context.Background(), "nar/x.nar", 0)
	if err != nil || nar.Size != 3 {
		t.Fatalf("nar %v, %v", nar, err)
	}
	nar.Close()
}
