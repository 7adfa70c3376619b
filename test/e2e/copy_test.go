package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// TestNixCopyFromLocalCache copies the whole fixture closure out of a
// `peerix serve --mode local` with `nix copy`, signatures required, and checks
// that every path arrives byte for byte with the same references.
func TestNixCopyFromLocalCache(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	key := keygen(t, "peerix-e2e-1")
	d := startPeerix(t, localDaemon(t, fx.src, "--signing-key-file", key.secretFile))

	dst := storeDir(t, "dst")
	args := append([]string{"copy", "--from", d.url + "/local", "--to", dst,
		"--option", "require-sigs", "true",
		"--option", "trusted-public-keys", key.public,
	}, fx.paths...)
	if r := nix3(t, args...); r.err != nil {
		t.Fatalf("nix copy from peerix failed:\n%v", r)
	}
	assertSameClosure(t, fx, dst)
}

// TestNixCopyRejectsWrongKey: with a key Nix does not trust, nothing may land
// in the destination store.
func TestNixCopyRejectsWrongKey(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	key := keygen(t, "peerix-e2e-2")
	other := keygen(t, "peerix-e2e-2")
	if other.public == key.public {
		t.Fatalf("two runs of peerix keygen made the same key %s", key.public)
	}
	d := startPeerix(t, localDaemon(t, fx.src, "--signing-key-file", key.secretFile))

	dst := storeDir(t, "dst")
	args := append([]string{"copy", "--from", d.url + "/local", "--to", dst,
		"--option", "require-sigs", "true",
		"--option", "trusted-public-keys", other.public,
	}, fx.paths...)
	r := nix3(t, args...)
	if r.err == nil {
		t.Fatalf("nix copy succeeded although no path is signed by the trusted key:\n%v", r)
	}
	// Make sure it failed for the right reason, not because peerix broke.
	if !strings.Contains(strings.ToLower(string(r.stderr)), "signature") {
		t.Errorf("nix copy failed, but not for a missing signature:\n%v", r)
	}
	for _, p := range fx.paths {
		if isValid(t, dst, p) {
			t.Errorf("%s is valid in the destination store despite an untrusted signature", p)
		}
	}
	d.alive(t)
}

// TestNixStoreRealiseSubstitutes substitutes the fixture root the way a user's
// Nix does, with peerix as its only substituter, and checks the closure that
// arrives.
func TestNixStoreRealiseSubstitutes(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	key := keygen(t, "peerix-e2e-3")
	d := startPeerix(t, localDaemon(t, fx.src, "--signing-key-file", key.secretFile))

	dst := storeDir(t, "dst2")
	r := runNix(t, "nix-store", "--store", dst, "-r", fx.root,
		"--option", "substituters", d.url+"/local",
		"--option", "trusted-public-keys", key.public,
		"--option", "require-sigs", "true",
	)
	if r.err != nil {
		t.Fatalf("nix-store -r with peerix as substituter failed:\n%v", r)
	}
	if got := strings.TrimSpace(string(r.stdout)); got != fx.root {
		t.Errorf("nix-store -r printed %q, want %q", got, fx.root)
	}
	assertSameClosure(t, fx, dst)
}

// assertSameClosure checks every fixture path in dst against the source
// store: same NAR (by SHA-256) and same references.
func assertSameClosure(t *testing.T, fx *fixtureSet, dst string) {
	t.Helper()
	for _, p := range fx.paths {
		want := fx.facts[p]
		digest, size, err := dumpDigest(context.Background(), dst, p)
		if err != nil {
			t.Errorf("%s did not arrive: %v", p, err)
			continue
		}
		if digest != want.narDigest || size != want.narSize {
			t.Errorf("%s: NAR in destination is %d bytes sha256 %s; source has %d bytes sha256 %s",
				p, size, digest, want.narSize, want.narDigest)
		}
		if refs := references(t, dst, p); !slices.Equal(refs, want.refs) {
			t.Errorf("%s: references in destination %q; source has %q", p, refs, want.refs)
		}
	}
}
