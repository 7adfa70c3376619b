package e2e

// Transfers between peers, as the operator sees them while they run: a NAR
// from A to B over a link slowed to 20 Mbit/s, watched in both daemons'
// /api/status and on B's dashboard in headless Chromium, over the LAN
// (HTTP) and over libp2p.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/nixtest"
)

// transferMiB is the size of the NAR the transfer tests move: at 20 Mbit/s
// about 25 s, long enough to look at it several times.
const transferMiB = 64

// transferPath builds (once per machine: the salt is fixed) a store path of
// transferMiB of random bytes, and returns it.
func transferPath(t *testing.T) string {
	t.Helper()
	expr := fmt.Sprintf(`derivation {
  name = "peerix-e2e-transfer-%dm";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "/bin/dd if=/dev/urandom of=$out bs=1048576 count=%d status=none" ];
  salt = "peerix-e2e-transfer-1";
}`, transferMiB, transferMiB)
	out := strings.Fields(string(nixtest.Must(t, "nix-build", "--no-out-link", "-E", expr)))
	if len(out) != 1 {
		t.Fatalf("nix-build printed %q; want one store path", out)
	}
	return out[0]
}

// slowLink shapes host h's outgoing traffic on eth0 to 20 Mbit/s (tbf:
// netem is not available everywhere).
func slowLink(t *testing.T, h *nsHost) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := h.command(ctx, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "20mbit", "burst", "32kb", "latency", "100ms")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tc on host %s: %v\n%s", h.label, err, out)
	}
}

// apiTransfer is a transfer in /api/status.
type apiTransfer struct {
	ID        string  `json:"id"`
	Direction string  `json:"direction"`
	StorePath string  `json:"store_path"`
	Hash      string  `json:"hash"`
	Source    string  `json:"source"`
	Peer      string  `json:"peer"`
	Size      int64   `json:"size"`
	Done      int64   `json:"done"`
	RateBps   float64 `json:"rate_bps"`
	Error     string  `json:"error"`
	WireBytes int64   `json:"wire_bytes"`
	WireRatio float64 `json:"wire_ratio"`
	Sources   []struct {
		Peer      string  `json:"peer"`
		Done      int64   `json:"done"`
		WireBytes int64   `json:"wire_bytes"`
		RateBps   float64 `json:"rate_bps"`
	} `json:"sources"`
}

// apiTransfers is the part of /api/status about transfers and bytes.
type apiTransfers struct {
	Transfers []apiTransfer `json:"transfers"`
	Recent    []apiTransfer `json:"recent_transfers"`
	Counters  struct {
		Requests      int64            `json:"requests"`
		BytesSent     int64            `json:"bytes_sent"`
		BytesReceived map[string]int64 `json:"bytes_received"`
	} `json:"counters"`
}

func (d *peerixProc) transfers(t testing.TB) apiTransfers {
	t.Helper()
	var st apiTransfers
	code, body, err := getJSON(d.client, d.url+"/api/status", &st)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /api/status of %s: HTTP %d, %v: %.300s", d.label, code, err, body)
	}
	return st
}

// inFlight finds the transfer of path going dir (down, up) in d's status.
func inFlight(st apiTransfers, dir, path string) (apiTransfer, bool) {
	for _, tr := range st.Transfers {
		if tr.Direction == dir && (tr.StorePath == path || tr.Hash == hashPart(path)) {
			return tr, true
		}
	}
	return apiTransfer{}, false
}

// TestTransfersAreVisible: A holds a 64 MiB path, B fetches it through its
// peerix, A's link slowed to 20 Mbit/s. While the NAR moves, A's
// /api/status shows an upload and B's a download of that path, to and from
// the right peer, with progress that grows between two looks; so does B's
// dashboard in headless Chromium. Afterwards both list the finished
// transfer and count its bytes (A as sent, B as received, in /metrics too).
// Over the LAN (HTTP) and over libp2p (the tracker on a third host).
func TestTransfersAreVisible(t *testing.T) {
	requireEnv(t)
	requireNetns(t)
	browser := needChromium(t)
	path := transferPath(t)
	aStore := nixtest.TempStore(t, "a-store")
	nixtest.Must(t, "nix", "copy", "--no-check-sigs", "--to", aStore, path)
	digest, size, err := dumpDigest(context.Background(), aStore, path)
	if err != nil {
		t.Fatal(err)
	}
	key := keygen(t, "transfer-test")

	lan := newLAN(t, "T", "A", "B")
	T, A, B := lan.host("T"), lan.host("A"), lan.host("B")
	slowLink(t, A)

	t.Run("LAN", func(t *testing.T) {
		da := startPeerix(t, lanDaemon(t, A, aStore, "--filter", "none", "--signing-key-file", key.secretFile))
		db := startPeerix(t, lanDaemon(t, B, initStore(t, "b-store"), "--filter", "none", "--trusted-public-key", key.public))
		defer stopDaemon(t, da)
		defer stopDaemon(t, db)
		watchTransfer(t, browser, da, db, B, path, size, digest, "lan", "http", "nar/lan/")
	})

	t.Run("P2P", func(t *testing.T) {
		tr := startPeerix(t, trackerServer(t, T, 30*time.Second))
		da := p2pOnly(t, A, "A", tr.hostURL, aStore, "--signing-key-file", key.secretFile)
		db := p2pOnly(t, B, "B", tr.hostURL, initStore(t, "b-store"), "--trusted-public-key", key.public)
		waitHolder(t, tr, "A", da.peerID, hashPart(path))
		watchTransfer(t, browser, da, db, B, path, size, digest, "p2p", "p2p", "nar/p2p/")
		// The serving side counts the peer's requests over libp2p too.
		if st := da.transfers(t); st.Counters.Requests == 0 {
			t.Errorf("A counts no requests after serving B over libp2p: %+v", st.Counters)
		}
	})
}

// watchTransfer makes B's peerix fetch path from A and watches the
// transfer on both sides while it runs, and after.
func watchTransfer(t *testing.T, browser string, da, db *peerixProc, B *nsHost, path string, size int64, digest, source, via, urlPrefix string) {
	t.Helper()
	var ni narInfo
	waitFor(t, "B's peerix finds "+path, 30*time.Second, func() (bool, string) {
		resp, body, err := clientDo(db.client, http.MethodGet, db.url+"/"+hashPart(path)+".narinfo")
		if err != nil || resp.StatusCode != http.StatusOK {
			return false, fmt.Sprintf("%v %v", statusOf(resp), err)
		}
		ni = parseNarInfo(t, body)
		return true, ""
	})
	if !strings.HasPrefix(ni["URL"], urlPrefix) {
		t.Fatalf("B's narinfo names URL %q, want %s...", ni["URL"], urlPrefix)
	}

	// The NAR, fetched as Nix would, in the background.
	type result struct {
		digest string
		n      int64
		err    error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		c := &http.Client{Transport: &http.Transport{DialContext: B.dial, DisableCompression: true}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, db.url+"/"+ni["URL"], nil)
		resp, err := c.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- result{err: fmt.Errorf("GET %s: %s", ni["URL"], resp.Status)}
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		done <- result{hex.EncodeToString(h.Sum(nil)), n, err}
	}()

	// Both sides show it moving: two looks, progress grows.
	look := func(d *peerixProc, dir string) apiTransfer {
		t.Helper()
		var tr apiTransfer
		waitFor(t, d.label+" shows the transfer ("+dir+") of "+path, 20*time.Second, func() (bool, string) {
			var ok bool
			tr, ok = inFlight(d.transfers(t), dir, path)
			return ok && tr.Done > 0, fmt.Sprintf("%+v", d.transfers(t).Transfers)
		})
		return tr
	}
	up1, down1 := look(da, "up"), look(db, "down")
	html1 := transferRow(t, dumpDOMOn(t, browser, B, db.url+"/dashboard"), path)
	time.Sleep(2 * time.Second)
	up2, down2 := look(da, "up"), look(db, "down")
	html2 := transferRow(t, dumpDOMOn(t, browser, B, db.url+"/dashboard"), path)
	t.Logf("A (up): %d then %d of %d bytes, %.0f B/s, to %s via %s", up1.Done, up2.Done, up2.Size, up2.RateBps, up2.Peer, up2.Source)
	t.Logf("B (down): %d then %d of %d bytes, %.0f B/s, from %s via %s", down1.Done, down2.Done, down2.Size, down2.RateBps, down2.Peer, down2.Source)
	t.Logf("B's dashboard: %d then %d bytes", html1, html2)
	for _, c := range []struct {
		side          string
		first, second apiTransfer
		source, peer  string
	}{
		{"A's upload", up1, up2, via, ""},
		{"B's download", down1, down2, source, ""},
	} {
		if c.second.Done <= c.first.Done || c.second.Done >= size || c.second.Size != size || c.second.Source != c.source {
			t.Errorf("%s: %+v then %+v; want progress growing below the size %d, source %s", c.side, c.first, c.second, size, c.source)
		}
		if c.second.Peer == "" || c.second.RateBps <= 0 {
			t.Errorf("%s names no peer or rate: %+v", c.side, c.second)
		}
	}
	if source == "p2p" && (up2.Peer != db.peerID || down2.Peer != da.peerID) {
		t.Errorf("peers: A sends to %q (B is %s), B fetches from %q (A is %s)", up2.Peer, db.peerID, down2.Peer, da.peerID)
	}
	if html2 <= html1 || html1 <= 0 {
		t.Errorf("B's dashboard shows %d then %d bytes of %s; want progress that grows", html1, html2, path)
	}

	// It arrives whole; both sides list it finished and count its bytes.
	var r result
	select {
	case r = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the NAR did not arrive within 3 minutes")
	}
	if r.err != nil || r.n != size || r.digest != digest {
		t.Fatalf("NAR through B's peerix: %d bytes, sha256 %s, %v; want %d bytes, %s", r.n, r.digest, r.err, size, digest)
	}
	waitFor(t, "both sides list the transfer as finished", 10*time.Second, func() (bool, string) {
		a, b := da.transfers(t), db.transfers(t)
		okA := finished(a, "up", path, size)
		okB := finished(b, "down", path, size)
		return okA && okB && a.Counters.BytesSent >= size && b.Counters.BytesReceived[source] >= size,
			fmt.Sprintf("A recent %+v sent %d; B recent %+v received %v", a.Recent, a.Counters.BytesSent, b.Recent, b.Counters.BytesReceived)
	})
	metrics := func(d *peerixProc, name string) float64 {
		resp, body := clientGet(t, d.client, http.MethodGet, d.url+"/metrics")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/metrics of %s: %s", d.label, resp.Status)
		}
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Errorf("/metrics of %s has no %s", d.label, name)
			return 0
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	if v := metrics(da, `peerix_sent_bytes_total{via="`+via+`"}`); v < float64(size) {
		t.Errorf("A's peerix_sent_bytes_total{via=%q} = %v, want >= %d", via, v, size)
	}
	if v := metrics(db, `peerix_received_bytes_total{source="`+source+`"}`); v < float64(size) {
		t.Errorf("B's peerix_received_bytes_total{source=%q} = %v, want >= %d", source, v, size)
	}
}

// finished reports whether st lists a finished transfer of path in dir
// that moved size bytes without error.
func finished(st apiTransfers, dir, path string, size int64) bool {
	for _, tr := range st.Recent {
		if tr.Direction == dir && (tr.StorePath == path || tr.Hash == hashPart(path)) && tr.Done >= size && tr.Error == "" {
			return true
		}
	}
	return false
}

// transferRow finds path's row in the dashboard's transfers in flight and
// returns the bytes done it shows (its data-done attribute, which the
// progress bar and the text are drawn from).
func transferRow(t *testing.T, dom, path string) int64 {
	t.Helper()
	body := elementHTML(t, dom, "tbody", "transfers")
	for _, row := range regexp.MustCompile(`(?s)<tr[^>]*>.*?</tr>`).FindAllString(body, -1) {
		if !strings.Contains(row, path) {
			continue
		}
		m := regexp.MustCompile(`data-done="(\d+)"`).FindStringSubmatch(row)
		if m == nil || !strings.Contains(row, "<progress") {
			t.Fatalf("the dashboard's row of %s has no progress:\n%s", path, row)
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	t.Fatalf("the dashboard's transfers in flight do not show %s:\n%s", path, body)
	return 0
}

// dumpDOMOn is dumpDOM with the browser on host h (the dashboard answers
// its own machine only).
func dumpDOMOn(t *testing.T, browser string, h *nsHost, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := h.command(ctx, browser,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=3000", "--dump-dom", url)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s on host %s: %v\nstderr:\n%s", url, h.label, err, stderr.String())
	}
	return string(out)
}
