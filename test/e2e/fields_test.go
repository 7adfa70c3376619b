package e2e

// Fields outside the fingerprint: Nix's signature (and the verifier's
// match with the upstream) covers a narinfo's StorePath, NarHash, NarSize
// and References only. A peer that serves the right NAR with a narinfo
// whose covered fields are the upstream's, but with a forged Deriver, an
// added CA and a System line, must not get those into the Nix database of
// the machine that substitutes from it.

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// forgedNarInfo is the upstream's narinfo of a path with its covered
// fields kept, unsigned, served as nar/<hash>.nar, and extra lines added.
func forgedNarInfo(t *testing.T, upstream []byte, hash string, extra ...string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(upstream)), "\n") {
		k, _, _ := strings.Cut(l, ":")
		switch k {
		case "Sig", "Deriver", "URL", "Compression", "FileHash", "FileSize", "CA", "System":
			continue
		}
		lines = append(lines, l)
	}
	ni := parseNarInfo(t, upstream)
	lines = append(lines, "URL: nar/"+hash+".nar", "Compression: none",
		"FileHash: "+ni["NarHash"], "FileSize: "+ni["NarSize"])
	forged := strings.Join(append(lines, extra...), "\n") + "\n"
	if regexp.MustCompile(`(?m)^Sig:`).MatchString(forged) {
		t.Fatal("the forged narinfo carries a signature")
	}
	return forged
}

// TestForgedFieldsNeverReachNix: U is the upstream (nginx, a static cache
// signed by its own key, with each path's true Deriver), F a hostile LAN
// peer (written from docs/protocol.md) that holds two paths: for each the
// right NAR and a narinfo with the upstream's NarHash, NarSize and
// references, no signature (so B's verifier vouches for it by the
// upstream's), a forged Deriver and a System line; for the second also an
// added CA. The real Nix on B substitutes each through B's peerix,
// trusting only U's key. B's Nix database must record the upstream's
// Deriver and no CA.
func TestForgedFieldsNeverReachNix(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	fx := nixtest.Shared(t)
	cases := []struct {
		name string
		path string
		ca   bool
	}{
		{"forged Deriver and System", fx.Outputs[22], false},
		{"forged Deriver, CA and System", fx.Outputs[23], true},
	}

	keyDir := t.TempDir()
	upSK, upPub := filepath.Join(keyDir, "upstream.sec"), filepath.Join(keyDir, "upstream.pub")
	mustNix(t, "nix-store", "--generate-binary-cache-key", "upstream-fields", upSK, upPub)
	b, err := os.ReadFile(upPub)
	if err != nil {
		t.Fatal(err)
	}
	upKey := strings.TrimSpace(string(b))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	staticCache(t, cacheDir, upSK, cases[0].path, cases[1].path)

	narInfos, nars := map[string]string{}, map[string][]byte{}
	upDeriver, forgedDeriver, forgedCA := map[string]string{}, map[string]string{}, map[string]string{}
	for _, c := range cases {
		h := hashPart(c.path)
		up, err := os.ReadFile(filepath.Join(cacheDir, h+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		if upDeriver[h] = parseNarInfo(t, up)["Deriver"]; upDeriver[h] == "" {
			t.Fatalf("the upstream's narinfo of %s names no Deriver; the test needs one:\n%s", c.path, up)
		}
		forgedDeriver[h] = randomNix32(32) + "-evil.drv"
		extra := []string{"Deriver: " + forgedDeriver[h], "System: evil-os"}
		if c.ca {
			forgedCA[h] = "fixed:r:sha256:1" + randomNix32(51)
			extra = append(extra, "CA: "+forgedCA[h])
		}
		narInfos[h] = forgedNarInfo(t, up, h, extra...)
		var nar bytes.Buffer
		if err := nixtest.DumpTo(t.Context(), &nar, "auto", c.path); err != nil {
			t.Fatal(err)
		}
		nars["/nar/"+h+".nar"] = nar.Bytes()
	}

	lan := newLAN(t, "U", "F", "B")
	U, F, B := lan.host("U"), lan.host("F"), lan.host("B")
	upstream, _ := startUpstream(t, U, cacheDir)
	peer := startFakePeer(t, F, &fakePeer{
		narInfo: func(hash string) string { return narInfos[hash] },
		nar: func(w http.ResponseWriter, r *http.Request) {
			nar, ok := nars[r.URL.Path]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/x-nix-nar")
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(nar))
		},
	})
	d := startPeerix(t, lanDaemon(t, B, initStore(t, "b-unused"), "--upstream", upstream, "--trusted-public-key", upKey))
	peer.waitKnown(t, d)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := hashPart(c.path)
			nars := peer.nars.Load()
			bStore := initStore(t, "b-store")
			r := B.nix(t, "nix-store", "--store", bStore, "-r", c.path,
				"--option", "substituters", d.url,
				"--option", "trusted-public-keys", upKey,
				"--option", "require-sigs", "true",
				"--option", "download-attempts", "1")
			if r.err != nil {
				t.Fatalf("Nix on B could not substitute %s through B's peerix from F:\n%v", c.path, r)
			}
			if peer.nars.Load() == nars {
				t.Fatalf("B's Nix got %s, but not from F (F served no NAR)", c.path)
			}
			info := nixtest.MustInfo(t, bStore, c.path)
			t.Logf("B's Nix database: deriver %q, CA %q (F said %q and %q; the upstream %q)",
				info.Deriver, info.CA, forgedDeriver[h], forgedCA[h], upDeriver[h])
			if info.Deriver != "/nix/store/"+upDeriver[h] && info.Deriver != "" {
				t.Errorf("B's Nix recorded deriver %q; want the upstream's /nix/store/%s (or none)", info.Deriver, upDeriver[h])
			}
			if info.CA != "" {
				t.Errorf("B's Nix recorded CA %q, which only F claimed", info.CA)
			}
		})
	}
	d.alive(t)
}
