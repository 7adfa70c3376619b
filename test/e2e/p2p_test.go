package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// P2P mode end to end on the test machine's loopback: a dozen `peerix
// serve` daemons and one `peerix tracker`, all real processes.

const (
	// dozenPeers is how many daemons TestP2PTrackerDozen runs.
	dozenPeers = 12
	// dozenTTL is the tracker's --peer-ttl there: short, so SIGKILLed peers
	// expire within the test.
	dozenTTL = 3 * time.Second
	// deregisterDeadline: a peer stopped with SIGTERM must be gone from the
	// tracker within this (counted from the signal).
	deregisterDeadline = 2 * time.Second
)

// TestP2PTrackerDozen: twelve peers on loopback register with one tracker
// and are all found as holders of the path they share; a peer stopped with
// SIGTERM deregisters at once; SIGKILLed peers expire after --peer-ttl;
// the others stay alive through their heartbeats; junk, forged and
// replayed writes are refused without touching anybody's record.
func TestP2PTrackerDozen(t *testing.T) {
	fx := fixtures(t)
	t.Parallel()
	start := time.Now()

	tr := startPeerix(t, trackerServer(t, nil, dozenTTL))

	// Every peer holds the common path; the even ones also hold a second.
	common, extra := fx.byName["leaf"], fx.byName["single-exec"]
	tmplCommon := initStore(t, "tmpl-common")
	tmplBoth := initStore(t, "tmpl-both")
	copyPaths(t, fx.src, tmplCommon, common)
	copyPaths(t, fx.src, tmplBoth, common, extra)

	daemons := make([]*peerixProc, dozenPeers)
	errs := make([]error, dozenPeers)
	var wg sync.WaitGroup
	for i := range dozenPeers {
		tmpl := tmplCommon
		if i%2 == 0 {
			tmpl = tmplBoth
		}
		root := storeDir(t, fmt.Sprintf("store-%02d", i))
		cpStore(t, tmpl, root)
		state := filepath.Join(t.TempDir(), "state")
		wg.Add(1)
		opts := p2pDaemon(nil, tr.url, root, state)
		opts.label = fmt.Sprintf("peer%02d", i)
		go func() {
			defer wg.Done()
			daemons[i], errs[i] = tryStartPeerix(t, opts)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d daemons up after %v", dozenPeers, time.Since(start).Round(time.Millisecond))

	var allIDs, evenIDs []string
	for i, d := range daemons {
		allIDs = append(allIDs, d.peerID)
		if i%2 == 0 {
			evenIDs = append(evenIDs, d.peerID)
		}
	}
	allIDs, evenIDs = sortedCopy(allIDs), sortedCopy(evenIDs)
	if u := slices.Compact(slices.Clone(allIDs)); len(u) != dozenPeers {
		t.Fatalf("the %d daemons have only %d distinct peer IDs: %v", dozenPeers, len(u), allIDs)
	}

	// All registered, with addresses, and all found as holders.
	took := waitFor(t, "all daemons listed by GET /v1/peers", 20*time.Second, func() (bool, string) {
		ps, err := tr.peers()
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(ids(ps), allIDs), fmt.Sprintf("%d peers %v, want %v", len(ps), ids(ps), allIDs)
	})
	t.Logf("GET /v1/peers lists all %d daemons %v after they were up", dozenPeers, took.Round(time.Millisecond))
	for _, p := range tr.mustPeers(t) {
		if len(p.Addrs) == 0 {
			t.Errorf("the tracker has no addresses for %s: %+v", p.PeerID, p)
		}
		if p.LastSeen.IsZero() || time.Since(p.LastSeen) > dozenTTL+time.Second {
			t.Errorf("the tracker's last_seen of %s is %v; want within the TTL", p.PeerID, p.LastSeen)
		}
	}
	took = waitFor(t, "all daemons found as holders of the common path", 20*time.Second, func() (bool, string) {
		ps, err := tr.find(hashPart(common))
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(ids(ps), allIDs), fmt.Sprintf("%d holders %v, want %v", len(ps), ids(ps), allIDs)
	})
	t.Logf("GET /v1/find/%s lists all %d daemons %v after they were up", hashPart(common), dozenPeers, took.Round(time.Millisecond))
	waitFor(t, "the even daemons found as holders of the second path", 10*time.Second, func() (bool, string) {
		ps, err := tr.find(hashPart(extra))
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(ids(ps), evenIDs), fmt.Sprintf("holders %v, want exactly %v", ids(ps), evenIDs)
	})
	if ps := tr.mustFind(t, randomNix32(32)); len(ps) != 0 {
		t.Errorf("GET /v1/find/<a hash nobody has> lists %v", ids(ps))
	}
	for _, p := range tr.mustPeers(t) {
		want := 1
		if slices.Contains(evenIDs, p.PeerID) {
			want = 2
		}
		if p.Packages != want {
			t.Errorf("the tracker holds %d hashes for %s, want %d (its store's paths)", p.Packages, p.PeerID, want)
		}
	}

	// SIGTERM: deregistered at once.
	term := daemons[0]
	sent := time.Now()
	exitTook, err := term.stop(syscall.SIGTERM, stopTimeout)
	if err != nil {
		t.Errorf("%s after SIGTERM: %v", term.label, err)
	}
	alive := slices.DeleteFunc(slices.Clone(allIDs), func(id string) bool { return id == term.peerID })
	var goneAfter time.Duration
	for {
		ps, err := tr.peers()
		if err == nil && !slices.Contains(ids(ps), term.peerID) {
			goneAfter = time.Since(sent)
			break
		}
		if time.Since(sent) > deregisterDeadline+3*time.Second {
			t.Fatalf("%s still listed by /v1/peers %v after SIGTERM (err %v)\noutput:\n%s",
				term.label, time.Since(sent).Round(time.Millisecond), err, tail(term.log.String(), 8<<10))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("SIGTERM %s: exited in %v, gone from /v1/peers %v after the signal", term.label,
		exitTook.Round(time.Millisecond), goneAfter.Round(time.Millisecond))
	if goneAfter > deregisterDeadline {
		t.Errorf("%s was gone from /v1/peers only %v after SIGTERM; want within %v", term.label, goneAfter, deregisterDeadline)
	}
	if ps := tr.mustFind(t, hashPart(common)); slices.Contains(ids(ps), term.peerID) {
		t.Errorf("%s deregistered but still found as a holder of %s", term.label, common)
	}

	// SIGKILL two: still listed right away (nobody told the tracker),
	// gone once --peer-ttl has passed since their last heartbeat.
	killed := []*peerixProc{daemons[1], daemons[2]}
	var killedIDs []string
	killedAt := time.Now()
	for _, d := range killed {
		killedIDs = append(killedIDs, d.peerID)
		if _, err := d.stop(syscall.SIGKILL, 5*time.Second); err != nil {
			t.Errorf("%s: %v", d.label, err)
		}
		alive = slices.DeleteFunc(alive, func(id string) bool { return id == d.peerID })
	}
	if ps := tr.mustPeers(t); !slices.Contains(ids(ps), killedIDs[0]) || !slices.Contains(ids(ps), killedIDs[1]) {
		t.Errorf("SIGKILLed peers %v gone from /v1/peers at once (%v); they cannot have deregistered", killedIDs, ids(ps))
	}
	var expiredAfter time.Duration
	for {
		ps, err := tr.peers()
		if err == nil && !slices.Contains(ids(ps), killedIDs[0]) && !slices.Contains(ids(ps), killedIDs[1]) {
			expiredAfter = time.Since(killedAt)
			if !slices.Equal(ids(ps), alive) {
				t.Errorf("after the SIGKILLed peers expired /v1/peers lists %v, want %v", ids(ps), alive)
			}
			break
		}
		if time.Since(killedAt) > dozenTTL+5*time.Second {
			t.Fatalf("SIGKILLed peers %v still listed %v after the kill (--peer-ttl %v), err %v",
				killedIDs, time.Since(killedAt).Round(time.Millisecond), dozenTTL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("SIGKILL %s and %s: gone from /v1/peers %v after the kill (--peer-ttl %v)",
		killed[0].label, killed[1].label, expiredAfter.Round(time.Millisecond), dozenTTL)
	if expiredAfter > dozenTTL+time.Second {
		t.Errorf("SIGKILLed peers expired %v after the kill; want within --peer-ttl %v (+1s)", expiredAfter, dozenTTL)
	}
	waitFor(t, "expired peers gone from /v1/find", 2*time.Second, func() (bool, string) {
		ps, err := tr.find(hashPart(common))
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(ids(ps), alive), fmt.Sprintf("holders %v, want %v", ids(ps), alive)
	})

	// The others keep themselves alive: still all there two TTLs later.
	time.Sleep(time.Until(killedAt.Add(2 * dozenTTL)))
	if ps := tr.mustPeers(t); !slices.Equal(ids(ps), alive) {
		t.Errorf("2×TTL after the kills /v1/peers lists %v; want the %d survivors %v (heartbeats)", ids(ps), len(alive), alive)
	}
	if ps := tr.mustFind(t, hashPart(common)); !slices.Equal(ids(ps), alive) {
		t.Errorf("2×TTL after the kills /v1/find lists %v; want the %d survivors %v", ids(ps), len(alive), alive)
	}

	// Junk, forged and replayed writes, against a live victim.
	victim := daemons[3]
	checkTrackerRefusals(t, tr, victim.peerID, hashPart(common))

	if ps := tr.mustPeers(t); !slices.Equal(ids(ps), alive) {
		t.Errorf("after the refused writes /v1/peers lists %v, want %v", ids(ps), alive)
	}
	if ps := tr.mustFind(t, hashPart(common)); !slices.Equal(ids(ps), alive) {
		t.Errorf("after the refused writes /v1/find lists %v, want %v", ids(ps), alive)
	}
	for _, d := range daemons[3:] {
		d.alive(t)
	}
	tr.alive(t)
	t.Logf("TestP2PTrackerDozen took %v", time.Since(start).Round(time.Millisecond))
}

// checkTrackerRefusals sends the tracker junk, forged, malformed and
// replayed writes and wants each refused with the status and code
// docs/protocol.md gives, and the victim's record untouched.
func checkTrackerRefusals(t *testing.T, tr *peerixProc, victim, victimHash string) {
	t.Helper()
	before, ok := peerByID(tr.mustPeers(t), victim)
	if !ok {
		t.Fatalf("victim %s not listed by the tracker", victim)
	}
	key, me := newPeerKey(t)
	now := func() int64 { return time.Now().UnixMilli() }
	randomSig := func() string { // well formed, signing nothing
		b := make([]byte, 64)
		_, _ = rand.Read(b)
		if tr.trackerID(t) == "" {
			return base64.StdEncoding.EncodeToString(b)
		}
		return "v2 " + base64.StdEncoding.EncodeToString(b)
	}
	announce := func(id string, ts int64, addrs ...string) []byte {
		if addrs == nil {
			addrs = []string{}
		}
		return jsonBody(t, map[string]any{"peer_id": id, "ts": ts, "addrs": addrs})
	}
	want := func(what string, a trackerAnswer, status int, code string) {
		t.Helper()
		if a.status != status || (code != "" && a.Code != code) {
			t.Errorf("%s: HTTP %d code %q; want %d %q; body %.300s", what, a.status, a.Code, status, code, a.body)
		} else {
			t.Logf("refused as documented: %s: HTTP %d %s", what, a.status, a.Code)
		}
		if a.status >= 500 {
			t.Errorf("%s: a 5xx is the tracker's own fault, not a refusal", what)
		}
	}

	// Junk and malformed.
	want("POST /v1/announce without a signature", tr.write(t, http.MethodPost, "/v1/announce", announce(me, now()), ""), 401, "bad_signature")
	want("POST /v1/announce with a signature header that is not base64", tr.write(t, http.MethodPost, "/v1/announce", announce(me, now()), "%%%not base64%%%"), 401, "bad_signature")
	want("POST /v1/announce with a junk body", tr.write(t, http.MethodPost, "/v1/announce", []byte("junk\x00\xff{"), randomSig()), 400, "bad_request")
	junk := []byte("{\"peer_id\": \"" + me + "\", \"ts\": 1, \"addrs\": [\"" + strings.Repeat("x", 9<<20) + "\"]}")
	want("POST /v1/announce with a 9 MiB body", tr.write(t, http.MethodPost, "/v1/announce", junk, tr.sign(t, key, http.MethodPost, "/v1/announce", junk)), 413, "too_large")
	b := jsonBody(t, map[string]any{"peer_id": me, "ts": now(), "addrs": []string{}, "evil": true})
	want("POST /v1/announce with an unknown field", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 400, "bad_request")
	b = jsonBody(t, map[string]any{"peer_id": me, "ts": "yesterday", "addrs": []string{}})
	want("POST /v1/announce with ts of the wrong type", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 400, "bad_request")
	b = announce(me, now(), "/ip4/1.2.3.4/tcp/not-a-port")
	want("POST /v1/announce with an address that does not parse", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 400, "bad_request")
	b = announce(me, now()-10*60*1000)
	want("POST /v1/announce with a ts ten minutes old", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 400, "clock_skew")
	b = announce("not-a-peer-id", now())
	want("POST /v1/announce for an unparsable peer ID", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 400, "bad_request")

	// Forged: written in the victim's name, signed by another key.
	b = announce(victim, now(), "/ip4/203.0.113.66/tcp/4001")
	want("POST /v1/announce for the victim, signed by another key", tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)), 401, "bad_signature")
	b = jsonBody(t, map[string]any{"peer_id": victim, "ts": now(), "full": true, "add": []string{}})
	want("POST /v1/packages emptying the victim's set, signed by another key", tr.write(t, http.MethodPost, "/v1/packages", b, tr.sign(t, key, http.MethodPost, "/v1/packages", b)), 401, "bad_signature")
	b = jsonBody(t, map[string]any{"peer_id": victim, "ts": now()})
	want("DELETE /v1/peers/<victim>, signed by another key", tr.write(t, http.MethodDelete, "/v1/peers/"+victim, b, tr.sign(t, key, http.MethodDelete, "/v1/peers/"+victim, b)), 401, "bad_signature")
	b = jsonBody(t, map[string]any{"peer_id": me, "ts": now()})
	want("DELETE /v1/peers/<victim> by another peer, correctly signed", tr.write(t, http.MethodDelete, "/v1/peers/"+victim, b, tr.sign(t, key, http.MethodDelete, "/v1/peers/"+victim, b)), 403, "forbidden")
	b = jsonBody(t, map[string]any{"peer_id": me, "ts": now(), "full": true, "add": []string{victimHash}})
	want("POST /v1/packages by a peer that never announced", tr.write(t, http.MethodPost, "/v1/packages", b, tr.sign(t, key, http.MethodPost, "/v1/packages", b)), 404, "unknown_peer")

	// Replays: a write accepted once is refused when sent again.
	b = announce(me, now())
	if a := tr.write(t, http.MethodPost, "/v1/announce", b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)); a.status != 200 {
		t.Fatalf("a correctly signed announce of a new peer: HTTP %d %.300s", a.status, a.body)
	}
	firstAnnounce, firstSig := b, tr.sign(t, key, http.MethodPost, "/v1/announce", b)
	want("the same announce sent again (replay)", tr.write(t, http.MethodPost, "/v1/announce", firstAnnounce, firstSig), 409, "replay")
	time.Sleep(2 * time.Millisecond)
	p := jsonBody(t, map[string]any{"peer_id": me, "ts": now(), "full": true, "add": []string{victimHash}})
	if a := tr.write(t, http.MethodPost, "/v1/packages", p, tr.sign(t, key, http.MethodPost, "/v1/packages", p)); a.status != 200 {
		t.Fatalf("a correctly signed full package set: HTTP %d %.300s", a.status, a.body)
	}
	want("the same package set sent again (replay)", tr.write(t, http.MethodPost, "/v1/packages", p, tr.sign(t, key, http.MethodPost, "/v1/packages", p)), 409, "replay")
	want("an older announce sent after a newer write (replay)", tr.write(t, http.MethodPost, "/v1/announce", firstAnnounce, firstSig), 409, "replay")
	time.Sleep(2 * time.Millisecond)
	b = jsonBody(t, map[string]any{"peer_id": me, "ts": now(), "full": false, "add": []string{"not-a-hash"}, "remove": []string{}})
	want("POST /v1/packages with an invalid hash", tr.write(t, http.MethodPost, "/v1/packages", b, tr.sign(t, key, http.MethodPost, "/v1/packages", b)), 400, "bad_request")
	time.Sleep(2 * time.Millisecond)
	b = jsonBody(t, map[string]any{"peer_id": me, "ts": now(), "full": true, "add": []string{}, "remove": []string{victimHash}})
	want("POST /v1/packages, a full set with removals", tr.write(t, http.MethodPost, "/v1/packages", b, tr.sign(t, key, http.MethodPost, "/v1/packages", b)), 400, "bad_request")
	if code, body, _ := getJSON(tr.client, tr.url+"/v1/find/not-a-hash", nil); code != 400 {
		t.Errorf("GET /v1/find/not-a-hash: HTTP %d, want 400: %.200s", code, body)
	}

	// Our own test peer holds victimHash now; deregister it (signed, fresh ts).
	if ps := tr.mustFind(t, victimHash); !slices.Contains(ids(ps), me) {
		t.Errorf("the test's own correctly signed peer is not found as a holder: %v", ids(ps))
	}
	time.Sleep(2 * time.Millisecond)
	d := jsonBody(t, map[string]any{"peer_id": me, "ts": now()})
	if a := tr.write(t, http.MethodDelete, "/v1/peers/"+me, d, tr.sign(t, key, http.MethodDelete, "/v1/peers/"+me, d)); a.status != 200 {
		t.Errorf("DELETE of the test's own peer: HTTP %d %.300s", a.status, a.body)
	}
	want("the DELETE sent again (replay)", tr.write(t, http.MethodDelete, "/v1/peers/"+me, d, tr.sign(t, key, http.MethodDelete, "/v1/peers/"+me, d)), 409, "replay")
	// The replay guard outlives the DELETE: the captured first announce
	// cannot bring the peer back.
	want("the first announce replayed after the DELETE", tr.write(t, http.MethodPost, "/v1/announce", firstAnnounce, firstSig), 409, "replay")
	if ps := tr.mustPeers(t); slices.Contains(ids(ps), me) {
		t.Errorf("a replayed announce brought the deregistered peer %s back", me)
	}

	after, ok := peerByID(tr.mustPeers(t), victim)
	if !ok {
		t.Fatalf("the victim %s is gone from /v1/peers after the forged writes", victim)
	}
	if !slices.Equal(sortedCopy(after.Addrs), sortedCopy(before.Addrs)) {
		t.Errorf("the victim's addresses changed after the forged writes: %v, were %v", after.Addrs, before.Addrs)
	}
	if after.Packages != before.Packages {
		t.Errorf("the victim's package count changed after the forged writes: %d, was %d", after.Packages, before.Packages)
	}
	if ps := tr.mustFind(t, victimHash); !slices.Contains(ids(ps), victim) || slices.Contains(ids(ps), me) {
		t.Errorf("after the forged writes and our DELETE, holders of %s: %v; want the victim and not %s", victimHash, ids(ps), me)
	}
}

// copyPaths copies paths (with their closures) from one chroot store to
// another.
func copyPaths(t *testing.T, from, to string, paths ...string) {
	t.Helper()
	args := append([]string{"copy", "--no-check-sigs", "--from", from, "--to", to}, paths...)
	if r := nix3(t, args...); r.err != nil {
		t.Fatalf("nix copy:\n%v", r)
	}
}

// cpStore copies a whole chroot store (no Nix involved: the daemons only
// read it).
func cpStore(t *testing.T, from, to string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "cp", "-a", from, to)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out.Bytes())
	}
}
