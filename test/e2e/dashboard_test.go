package e2e

import (
	"context"
	"encoding/json"
	"html"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// needChromium returns the headless browser, or skips the test when it is
// missing (and fails it under CI=true, where scripts/deps.sh installs it).
func needChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s is missing (Debian package chromium)", chromiumPath)
		}
		t.Skipf("%s is missing (Debian package chromium)", chromiumPath)
	}
	return chromiumPath
}

// dumpDOM loads url in headless Chromium, lets its scripts run for up to 5 s
// of virtual time, and returns the DOM as HTML.
func dumpDOM(t *testing.T, browser, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=5000", "--dump-dom", url)
	cmd.WaitDelay = 5 * time.Second
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\nstderr:\n%s", url, err, stderr.String())
	}
	return string(out)
}

// elementText returns the text of the element with the given id.
func elementText(t *testing.T, dom, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("dashboard DOM has no element #%s with text:\n%s", id, dom)
	}
	return html.UnescapeString(strings.TrimSpace(m[1]))
}

// elementHTML returns the inner HTML of the element with the given id (one
// without nested elements of the same tag).
func elementHTML(t *testing.T, dom, tag, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<` + tag + `[^>]*id="` + regexp.QuoteMeta(id) + `"[^>]*>(.*?)</` + tag + `>`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("dashboard DOM has no <%s id=%q>:\n%s", tag, id, dom)
	}
	return m[1]
}

// TestDashboardShowsLiveData loads /dashboard in headless Chromium against
// a daemon that has served some requests, and checks that the page shows
// what the API says, filled in by its script (the static page has only
// placeholders).
func TestDashboardShowsLiveData(t *testing.T) {
	browser := needChromium(t)
	fx := fixtures(t)
	d := startPeerix(t, localDaemon(t, fx.src))

	// Some traffic: narinfos (one of them a miss) and a NAR.
	leaf, big := fx.byName["leaf"], fx.byName["big"]
	fetchNarInfo(t, d, fx, leaf)
	ni := fetchNarInfo(t, d, fx, big)
	fetchNarInfo(t, d, fx, big)
	if resp, _ := httpGet(t, d.url+"/local/"+randomNix32(32)+".narinfo"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("narinfo of an absent path: %s", resp.Status)
	}
	if resp, body := httpGet(t, d.url+"/local/"+ni["URL"]); resp.StatusCode != http.StatusOK || int64(len(body)) != fx.facts[big].narSize {
		t.Fatalf("GET /local/%s: %s, %d bytes", ni["URL"], resp.Status, len(body))
	}

	// The API has counted them.
	resp, body := httpGet(t, d.url+"/api/status")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/status: %s\n%s", resp.Status, body)
	}
	var st struct {
		Mode     string `json:"mode"`
		Version  string `json:"version"`
		Counters struct {
			Requests  int64            `json:"requests"`
			Hits      map[string]int64 `json:"hits"`
			Misses    map[string]int64 `json:"misses"`
			BytesSent int64            `json:"bytes_sent"`
		} `json:"counters"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/api/status: %v\n%s", err, body)
	}
	if st.Mode != "local" || st.Version == "" || st.Counters.Requests < 5 || st.Counters.Hits["local"] != 3 ||
		st.Counters.Misses["local"] != 1 || st.Counters.BytesSent != fx.facts[big].narSize {
		t.Errorf("/api/status after 3 narinfo hits, 1 miss and 1 NAR of %d bytes:\n%s", fx.facts[big].narSize, body)
	}
	version := peerixVersion(t)

	dom := dumpDOM(t, browser, d.url+"/dashboard")
	d.alive(t)

	if !strings.Contains(dom, `data-state="live"`) {
		t.Errorf("the dashboard did not reach the live state (its script failed to load the API?):\n%s", dom)
	}
	if got := elementText(t, dom, "node-mode"); got != "local" {
		t.Errorf("dashboard mode %q, want local", got)
	}
	if got := elementText(t, dom, "node-version"); got != version {
		t.Errorf("dashboard version %q, want %q (peerix version)", got, version)
	}
	reqText := elementText(t, dom, "count-requests")
	requests, err := strconv.ParseInt(strings.ReplaceAll(reqText, ",", ""), 10, 64)
	if err != nil || requests < st.Counters.Requests {
		t.Errorf("dashboard request count %q, want a number >= %d (the API's count when the page loaded)", reqText, st.Counters.Requests)
	}
	if up := elementText(t, dom, "node-uptime"); !regexp.MustCompile(`^\d+[smhd]`).MatchString(up) {
		t.Errorf("dashboard uptime %q", up)
	}
	// The most requested path is big (2 requests), shown by name or hash.
	top := elementHTML(t, dom, "tbody", "top-requested")
	if !strings.Contains(top, hashPart(big)) {
		t.Errorf("most requested paths do not list %s:\n%s", big, top)
	}
	if served := elementHTML(t, dom, "tbody", "top-served"); !strings.Contains(served, hashPart(big)) {
		t.Errorf("most served paths do not list %s:\n%s", big, served)
	}
	for _, placeholder := range []string{"node-mode", "node-version", "count-requests"} {
		if elementText(t, dom, placeholder) == "–" {
			t.Errorf("#%s still shows the static placeholder", placeholder)
		}
	}

	// Only this machine may see it; 127.0.0.1 is this machine, so check the
	// Host guard instead: a page on a foreign name (DNS rebinding) is refused.
	req, _ := http.NewRequest(http.MethodGet, d.url+"/api/status", nil)
	req.Host = "rebind.example.com"
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("/api/status with Host rebind.example.com: %s, want 403", resp.Status)
		}
	}
}

// peerixVersion is what `peerix version` says, without "peerix ".
func peerixVersion(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, peerixBin, "version").Output()
	if err != nil {
		t.Fatalf("peerix version: %v", err)
	}
	return strings.TrimSpace(strings.TrimPrefix(string(out), "peerix"))
}
