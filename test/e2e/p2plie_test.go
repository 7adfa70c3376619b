package e2e

// A lying peer over P2P, with real peerix daemons on every side: the liar
// is peerix serving a store whose Nix database and files were tampered
// with, so it lies exactly as a broken or hostile installation would.

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/peerix/peerix/internal/nixtest"
)

// p2pOnly starts `peerix serve --mode p2p --lan=false` of storeRoot on
// host h against the tracker at trackerURL, verbose, with a fresh state dir
// (a fresh identity and reputation table).
func p2pOnly(t *testing.T, h *nsHost, label, trackerURL, storeRoot string, flags ...string) *peerixProc {
	t.Helper()
	o := p2pDaemon(h, trackerURL, storeRoot, filepath.Join(t.TempDir(), "state"), append(flags, "--verbose")...)
	o.label = label
	for i, a := range o.args {
		if a == "--lan=true" {
			o.args[i] = "--lan=false"
		}
	}
	return startPeerix(t, o)
}

// lieInDB records a wrong NarHash (same size) for paths in a chroot store's
// Nix database (ValidPaths.hash, "sha256:<base16>"): peerix serving that
// store then hands out narinfos that contradict the upstream's.
func lieInDB(t *testing.T, storeRoot string, paths ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(storeRoot, "nix", "var", "nix", "db", "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, p := range paths {
		wrong := sha256.Sum256([]byte("a lie about " + p))
		res, err := db.Exec(`UPDATE ValidPaths SET hash = ? WHERE path = ?`, "sha256:"+hex.EncodeToString(wrong[:]), p)
		if err != nil {
			t.Fatalf("tampering with the NarHash of %s in %s: %v", p, storeRoot, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("tampering with the NarHash of %s in %s: %d rows changed, want 1", p, storeRoot, n)
		}
	}
}

// stopDaemon stops d with SIGTERM, so that the next daemon on its host can
// take its ports (one that could not would find d answering its
// readiness check in its place).
func stopDaemon(t *testing.T, d *peerixProc) {
	t.Helper()
	if _, err := d.stop(syscall.SIGTERM, stopTimeout); err != nil {
		t.Fatalf("stopping %s: %v", d, err)
	}
}

// logShows reports whether d's log shows s within 2 s (its output
// reaches the test through a pipe, a moment after the event).
func logShows(d *peerixProc, s string) bool {
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(d.log.String(), s); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// reputationOf returns d's record of peer id from /api/peers (nil if it
// lists no reputation for it).
func reputationOf(t *testing.T, d *peerixProc, id string) *apiReputation {
	t.Helper()
	for _, p := range d.apiPeers(t) {
		if p.PeerID == id {
			return p.Reputation
		}
	}
	return nil
}

// TestP2PLyingPeer: on a LAN with an upstream (U: nginx, a static cache
// signed by its own key, and the tracker), an honest holder A and a lying
// holder L hold the same closure; the consumer B's Nix substitutes it
// through B's peerix alone. All are real `peerix serve --mode p2p
// --lan=false` daemons. L's store is tampered with: (a) for most paths its
// database records a wrong NarHash, so its narinfos contradict the
// upstream's; (b) for the leaf the narinfo is right but a file on its disk
// was changed (same size), so its NAR fails the NarHash.
//
//   - With A and L both present, the closure reaches B's store byte-exact,
//     B's /api/peers shows L caught lying, and once caught L is asked for
//     nothing more (B's record of it does not move while B's Nix
//     substitutes other paths that L holds honestly).
//   - With L alone (A stopped), both lies are seen deterministically: the
//     leaf's narinfo is accepted but its NAR never reaches a client (404,
//     not one byte) and B's Nix does not substitute it; a path whose
//     narinfo L lies about is a miss.
//
// Realise times with and without L go to the log.
func TestP2PLyingPeer(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	t.Parallel()
	start := time.Now()
	fx := nixtest.Shared(t)
	root, leaf := fx.All, fx.Leaf
	closure := fx.Paths // the 13 fixtures of All's closure
	// Paths L holds honestly, for B's Nix after L was caught.
	later := fx.Outputs[:6]
	lies := slices.DeleteFunc(slices.Clone(closure), func(p string) bool { return p == leaf })

	keyDir := t.TempDir()
	upSK, upPub := filepath.Join(keyDir, "upstream.sec"), filepath.Join(keyDir, "upstream.pub")
	mustNix(t, "nix-store", "--generate-binary-cache-key", "upstream-p2plie", upSK, upPub)
	b, err := os.ReadFile(upPub)
	if err != nil {
		t.Fatal(err)
	}
	upKey := strings.TrimSpace(string(b))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	staticCache(t, cacheDir, upSK, append([]string{root}, later...)...)
	want := closureNarHashes(t, "auto", root)
	wantLater := closureNarHashes(t, "auto", later...)
	if len(want) != len(closure) {
		t.Fatalf("All's closure: %d NarHashes for %d paths", len(want), len(closure))
	}

	// A and L hold the same paths, unsigned (as if built there): B's
	// verifier vouches for their narinfos by the upstream's.
	aStore, lStore := initStore(t, "a-store"), initStore(t, "l-store")
	for _, s := range []string{aStore, lStore} {
		if err := nixtest.Copy(t.Context(), s, append([]string{root}, later...)...); err != nil {
			t.Fatal(err)
		}
	}
	lieInDB(t, lStore, lies...)
	tamper(t, lStore, leaf, "hello")
	for _, p := range lies[:1] {
		if got := nixtest.MustInfo(t, lStore, p).NarHash; got == nixtest.MustInfo(t, aStore, p).NarHash {
			t.Fatalf("L's database still has the right NarHash of %s: %s", p, got)
		}
	}
	t.Logf("%d paths, upstream cache and stores ready after %v; L lies about the NarHash of %d of them and sends a wrong NAR of %s",
		len(closure)+len(later), time.Since(start).Round(time.Millisecond), len(lies), leaf)

	lan := newLAN(t, "U", "A", "L", "B")
	U, A, L, B := lan.host("U"), lan.host("A"), lan.host("L"), lan.host("B")
	upstream, accessLog := startUpstream(t, U, cacheDir)
	tr := startPeerix(t, trackerServer(t, U, 30*time.Second))
	daemonB := func(label string) *peerixProc {
		t.Helper()
		return p2pOnly(t, B, label, tr.hostURL, initStore(t, "b-unused"),
			"--upstream", upstream, "--trusted-public-key", upKey)
	}
	da := p2pOnly(t, A, "A", tr.hostURL, aStore)
	waitHolder(t, tr, "A", da.peerID, hashPart(root))

	// Without the liar: the baseline.
	dB := daemonB("B (A alone)")
	without := realiseOn(t, B, "A alone", upKey, want, []string{root}, []string{dB.url})
	stopDaemon(t, dB)

	dl := p2pOnly(t, L, "L (liar)", tr.hostURL, lStore)
	waitHolder(t, tr, "L", dl.peerID, hashPart(root))
	waitHolder(t, tr, "L", dl.peerID, hashPart(leaf))

	t.Run("with the liar present, the closure arrives byte-exact and the liar is caught", func(t *testing.T) {
		// A fresh B: nothing known about A or L.
		d := daemonB("B (A and L)")
		defer stopDaemon(t, d)
		with := realiseOn(t, B, "A and the liar L", upKey, want, []string{root}, []string{d.url})
		t.Logf("realise through B's peerix: %v with the liar, %v without it (%+v)",
			with.Round(time.Millisecond), without.Round(time.Millisecond), (with - without).Round(time.Millisecond))
		for _, l := range d.logLines(20, "peer lied") {
			t.Logf("B log: %s", l)
		}
		rl, ra := reputationOf(t, d, dl.peerID), reputationOf(t, d, da.peerID)
		t.Logf("B's record of L: %+v; of A: %+v", rl, ra)
		switch {
		case rl == nil:
			t.Fatalf("B's /api/peers has no reputation for L (%s)", dl.peerID)
		case rl.Lies == 0:
			t.Fatalf("B's /api/peers shows L with lies 0: %+v", rl)
		case !rl.BackoffUntil.After(time.Now()):
			t.Errorf("L is not backed off after lying: %+v", rl)
		}
		if ra == nil || ra.Lies != 0 {
			t.Errorf("B's record of the honest A: %+v; want it known and no lies", ra)
		}
		if !logShows(d, "peer lied") {
			t.Error("B's peerix never logged the lie")
		}

		// Caught, L is asked for nothing more: B's Nix substitutes paths
		// that L holds honestly, and B's record of L does not move.
		realiseOn(t, B, "paths L holds honestly, after it was caught", upKey, wantLater, later, []string{d.url})
		after, ra2 := reputationOf(t, d, dl.peerID), reputationOf(t, d, da.peerID)
		if after == nil || after.Successes != rl.Successes || after.Failures != rl.Failures || after.Lies != rl.Lies {
			t.Errorf("B asked L again after catching it: its record went from %+v to %+v", rl, after)
		}
		if ra2 == nil || ra == nil || ra2.Successes <= ra.Successes {
			t.Errorf("B's record of A did not move (%+v, then %+v): were the later paths fetched from A?", ra, ra2)
		}
	})

	// L alone: every path B finds, it finds on L.
	stopDaemon(t, da)
	waitFor(t, "the tracker to list L alone as a holder", 10*time.Second, func() (bool, string) {
		ps, err := tr.find(hashPart(root))
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(ids(ps), []string{dl.peerID}), fmt.Sprintf("holders %v", ids(ps))
	})

	t.Run("with the liar alone, neither lie reaches Nix", func(t *testing.T) {
		d := daemonB("B (L alone)")
		defer stopDaemon(t, d)
		// (b) The leaf's narinfo is right, its NAR is not.
		h := hashPart(leaf)
		resp, body := clientGet(t, d.client, http.MethodGet, d.url+"/"+h+".narinfo")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /%s.narinfo through B (L's narinfo of the leaf is right): %s\n%s", h, resp.Status, body)
		}
		ni := parseNarInfo(t, body)
		if ni["NarHash"] != nixtest.MustInfo(t, aStore, leaf).NarHash {
			t.Fatalf("B's narinfo of the leaf names NarHash %s", ni["NarHash"])
		}
		status, digest, n, err := clientDigest(d.client, d.url+"/"+ni["URL"])
		t.Logf("GET /%s through B: status %d, %d bytes, sha256 %x, err %v", ni["URL"], status, n, digest, err)
		if status != http.StatusNotFound || n > 100 {
			t.Errorf("B's peerix answered the NAR only L can send (wrongly) with status %d and %d bytes; want 404, not a byte of the NAR", status, n)
		}
		if !logShows(d, "its NAR does not match the NarHash") {
			t.Errorf("B's peerix never blamed L for its NAR")
		}
		r := B.nix(t, "nix-store", "--store", initStore(t, "b-leaf"), "-r", leaf,
			"--option", "substituters", d.url,
			"--option", "trusted-public-keys", upKey,
			"--option", "require-sigs", "true",
			"--option", "download-attempts", "1")
		if r.err == nil {
			t.Errorf("Nix on B substituted %s from the liar alone:\n%v", leaf, r)
		}
		rl := reputationOf(t, d, dl.peerID)
		if rl == nil || rl.Lies == 0 {
			t.Fatalf("B's record of L after its wrong NAR: %+v; want lies > 0", rl)
		}
		before := *rl

		// (a) Paths only L holds, and lies about: misses. L, caught lying
		// about the NAR, is shunned: it is not even asked.
		for _, p := range []string{fx.Refs, root} {
			h := hashPart(p)
			resp, body := clientGet(t, d.client, http.MethodGet, d.url+"/"+h+".narinfo")
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /%s.narinfo through B, only L holds it and lies about its NarHash: %s, want 404\n%s", h, resp.Status, body)
			}
		}
		rl = reputationOf(t, d, dl.peerID)
		t.Logf("B's record of L: %+v", rl)
		if rl == nil || rl.Lies != before.Lies || rl.Successes != before.Successes || rl.Failures != before.Failures {
			t.Errorf("B's record of L changed from %+v to %+v: the shunned liar was asked again", before, rl)
		}
		for _, l := range d.logLines(10, "peer lied") {
			t.Logf("B log: %s", l)
		}
	})

	if nars := narRequests(t, accessLog); len(nars) != 0 {
		t.Errorf("NARs were downloaded from the upstream (only B's peerix asks it, for narinfos):\n%s", strings.Join(nars, "\n"))
	}
	dl.alive(t)
	tr.alive(t)
	t.Logf("TestP2PLyingPeer took %v", time.Since(start).Round(time.Millisecond))
}
