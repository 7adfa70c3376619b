package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLANSwarm: a NAR four LAN peers hold comes to B's Nix from all of
// them at once, byte-exact; one of the four sends wrong bytes in every
// piece it serves: the NAR still arrives whole and that peer is blamed;
// one dies half-way: the others finish. The peers' links are shaped
// (tc tbf, 16 Mbit/s each) so that each piece takes a while.
func TestLANSwarm(t *testing.T) {
	fx := fixtures(t)
	requireNetns(t)
	t.Parallel()
	hosts := []string{"A1", "A2", "A3", "A4", "B"}
	lan := newLAN(t, hosts...)
	big := fx.byName["big"] // 7 MB of random bytes: pieces of 1 MiB
	facts := fx.facts[big]
	key := keygen(t, "peerix-swarm")

	stores := make([]string, 4)
	holders := make([]*peerixProc, 4)
	for i := range 4 {
		stores[i] = initStore(t, "a-store")
		copyPaths(t, fx.src, stores[i], big)
		h := lan.host(hosts[i])
		nsRun(t, h.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "16mbit", "burst", "32kb", "latency", "200ms")
		holders[i] = startPeerix(t, lanDaemon(t, h, stores[i], "--filter", "none", "--signing-key-file", key.secretFile))
	}
	B := lan.host("B")

	// realise has a fresh daemon on B (no history of these peers) and the
	// real Nix substitute big; it returns the daemon, for its log.
	realise := func(t *testing.T, what string, during func()) *peerixProc {
		t.Helper()
		d := startPeerix(t, lanDaemon(t, B, initStore(t, "b-unused"), "--filter", "none", "--trusted-public-key", key.public))
		t.Cleanup(func() { d.stop(syscall.SIGTERM, 5*time.Second) })
		for _, h := range holders {
			if h.running() {
				waitNeighbour(t, d, h.host)
			}
		}
		store := initStore(t, "b-store")
		if during != nil {
			go during()
		}
		start := time.Now()
		r := B.nixWithin(t, 2*time.Minute, "nix-store", "--store", store, "-r", big,
			"--option", "substituters", d.url,
			"--option", "trusted-public-keys", key.public,
			"--option", "require-sigs", "true")
		if r.err != nil {
			t.Fatalf("%s: Nix on B could not substitute %s:\n%v", what, big, r)
		}
		digest, size, err := dumpDigest(t.Context(), store, big)
		if err != nil || digest != facts.narDigest || size != facts.narSize {
			t.Fatalf("%s: %s in B's store: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", what, big, size, digest, err, facts.narSize, facts.narDigest)
		}
		t.Logf("%s: %d NAR bytes in %v", what, facts.narSize, time.Since(start).Round(time.Millisecond))
		return d
	}
	// served counts the NAR requests (pieces) each holder answered so far,
	// from its /metrics.
	served := func() []int {
		n := make([]int, len(holders))
		for i, h := range holders {
			_, body := clientGet(t, B.httpClient(), http.MethodGet, h.hostURL+"/metrics")
			for _, l := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(l, "peerix_requests_total{") && strings.Contains(l, `route="local-nar"`) {
					var c float64
					fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &c)
					n[i] += int(c)
				}
			}
		}
		return n
	}

	t.Run("all honest", func(t *testing.T) {
		before := served()
		d := realise(t, "four honest holders", nil)
		after := served()
		for i := range holders {
			if after[i] == before[i] {
				t.Errorf("%s sent no piece of the NAR (requests before %v, after %v)", hosts[i], before, after)
			}
		}
		// B's /api/status names the four sources, each with its share
		// and rate, and the bytes on the wire (random bytes: raw).
		st := d.transfers(t)
		if len(st.Recent) != 1 {
			t.Fatalf("B's recent transfers: %+v, want the NAR", st.Recent)
		}
		tr := st.Recent[0]
		var sum int64
		for _, src := range tr.Sources {
			if src.Done <= 0 || src.RateBps <= 0 || src.WireBytes < src.Done {
				t.Errorf("source %+v of the NAR's transfer", src)
			}
			sum += src.Done
		}
		if len(tr.Sources) != 4 || sum != tr.Done || tr.Done != facts.narSize || tr.WireRatio < 1 {
			t.Errorf("the NAR's transfer in B's /api/status: %+v; want %d bytes from 4 sources, raw", tr, facts.narSize)
		}
	})

	t.Run("one sends wrong bytes", func(t *testing.T) {
		// Every byte of A3's copy of the blob is wrong; the size is right.
		flipFile(t, stores[2], big, "blob")
		d := realise(t, "one holder lying in every piece", nil)
		blamed := false
		for _, l := range strings.Split(d.log.String(), "\n") {
			if strings.Contains(l, "peer lied") && strings.Contains(l, lan.host("A3").addr.String()) {
				blamed = true
			}
			for _, honest := range []string{"A1", "A2", "A4"} {
				if strings.Contains(l, "peer lied") && strings.Contains(l, lan.host(honest).addr.String()+":") {
					t.Errorf("an honest holder was blamed: %s", l)
				}
			}
		}
		if !blamed {
			t.Error("B's peerix did not blame A3, whose bytes were wrong")
		}
	})

	t.Run("one dies half-way", func(t *testing.T) {
		// A3 still lies: it is left out (a fresh daemon learns it again).
		killed := make(chan struct{})
		realise(t, "a holder killed during the transfer", func() {
			defer close(killed)
			time.Sleep(400 * time.Millisecond)
			holders[3].stop(syscall.SIGKILL, 5*time.Second)
		})
		<-killed
	})
}

// waitNeighbour waits until d follows the summary of the daemon on h.
func waitNeighbour(t testing.TB, d *peerixProc, h *nsHost) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(d.log.String(), "\n") {
			if strings.Contains(l, "LAN peer speaks summaries") && strings.Contains(l, h.addr.String()+":") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never heard the daemon on %s", d.label, h.label)
		}
	}
}

// flipFile changes every byte of a file of a path in a chroot store,
// keeping its size.
func flipFile(t *testing.T, storeRoot, path, rel string) {
	t.Helper()
	dir := filepath.Join(storeRoot, path)
	file := filepath.Join(dir, rel)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0x5a
	}
	os.Chmod(dir, 0o755)
	os.Chmod(file, 0o644)
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(file, 0o444)
	os.Chmod(dir, 0o555)
}
