package trust

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/store"
)

const localPrefix = "nar/"

func TestFilterRules(t *testing.T) {
	upKey, upPub := genKey(t, "upstream.example-1")
	// A key that carries the upstream's name but is not the upstream's: a
	// locally generated key named like it must not make a path public.
	forger, _ := genKey(t, "upstream.example-1")
	other, _ := genKey(t, "me.example-1")

	type tc struct {
		name     string
		mode     string
		patterns []string
		path     *spath
		sign     []signature.SecretKey
		status   int           // upstream's answer; 200 serves the same build's narinfo
		body     string        // with status 200: this body instead
		delay    time.Duration // before the upstream answers
		want     Decision
		requests int64
	}
	cases := []tc{
		{name: "signed by upstream key, no network", path: newPath("hello-2.12", []byte("a")), sign: []signature.SecretKey{upKey}, status: 404, want: Shared, requests: 0},
		{name: "signed by upstream key among others", path: newPath("hello-2.13", []byte("a")), sign: []signature.SecretKey{other, upKey}, status: 404, want: Shared, requests: 0},
		{name: "forged: upstream's key name, other key", path: newPath("private-tool-1", []byte("a")), sign: []signature.SecretKey{forger}, status: 404, want: RefusedPrivate, requests: 1},
		{name: "signed by another key only", path: newPath("private-tool-2", []byte("a")), sign: []signature.SecretKey{other}, status: 404, want: RefusedPrivate, requests: 1},
		{name: "unsigned, upstream 200", path: newPath("built-here-but-public", []byte("a")), status: 200, want: Shared, requests: 1},
		{name: "unsigned, upstream has another build", path: newPath("not-reproducible-1", []byte("a")), status: 200, body: "other", want: RefusedOtherBuild, requests: 1},
		{name: "unsigned, upstream 200 with garbage", path: newPath("my-app-0.9", []byte("a")), status: 200, body: "garbage", want: RefusedUnknown, requests: 1},
		{name: "unsigned, upstream 200 for another path", path: newPath("my-app-0.10", []byte("a")), status: 200, body: "another", want: RefusedUnknown, requests: 1},
		{name: "unsigned, upstream 404", path: newPath("my-app-0.1", []byte("a")), status: 404, want: RefusedPrivate, requests: 1},
		{name: "unsigned, upstream 500", path: newPath("my-app-0.2", []byte("a")), status: 500, want: RefusedUnknown, requests: 1},
		{name: "unsigned, upstream 403", path: newPath("my-app-0.3", []byte("a")), status: 403, want: RefusedUnknown, requests: 1},
		{name: "unsigned, upstream times out", path: newPath("my-app-0.4", []byte("a")), status: 200, delay: 5 * time.Second, want: RefusedUnknown, requests: 1},
		{name: "pattern denies although signed", path: newPath("db-secret.yaml", []byte("a")), sign: []signature.SecretKey{upKey}, status: 200, want: RefusedPattern, requests: 0},
		{name: "pattern denies although upstream has it", path: newPath("nixos-system-host-24.05", []byte("a")), status: 200, want: RefusedPattern, requests: 0},
		{name: "pattern is case-insensitive", path: newPath("Server.KEY", []byte("a")), status: 200, want: RefusedPattern, requests: 0},
		{name: "user pattern", patterns: []string{"acme-*"}, path: newPath("acme-internal-1.0", []byte("a")), status: 200, want: RefusedPattern, requests: 0},
		{name: "home-manager generation", path: newPath("home-manager-generation", []byte("a")), status: 200, want: RefusedPattern},
		{name: "home-manager package itself is fine", path: newPath("home-manager-0-unstable-2024-05-01", []byte("a")), status: 200, want: Shared, requests: 1},
		{name: "libsecret is fine", path: newPath("libsecret-0.21.4", []byte("a")), sign: []signature.SecretKey{upKey}, want: Shared},
		{name: "patterns mode: unsigned private path shared", mode: ModePatterns, path: newPath("my-app-0.5", []byte("a")), status: 404, want: Shared, requests: 0},
		{name: "patterns mode: secret refused", mode: ModePatterns, path: newPath("wg-private-key", []byte("a")), want: RefusedPattern},
		{name: "patterns mode: user pattern", mode: ModePatterns, patterns: []string{"*-corp-*"}, path: newPath("tool-corp-3", []byte("a")), want: RefusedPattern},
		{name: "none mode: private path shared", mode: ModeNone, path: newPath("my-app-0.6", []byte("a")), status: 500, want: Shared, requests: 0},
		{name: "none mode: secret shared", mode: ModeNone, path: newPath("secrets.json", []byte("a")), want: Shared, requests: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstream(t)
			up.set(c.path.hash, c.status)
			if c.status == 200 {
				switch c.body {
				case "":
					up.has(c.path)
				case "other": // same path, another NAR
					up.publish((&spath{hash: c.path.hash, name: c.path.name, nar: []byte("b")}).narInfo(localPrefix))
				case "another":
					other := newPath("else", []byte("a")).narInfo(localPrefix)
					up.mu.Lock()
					up.bodies[c.path.hash] = []byte(other.String())
					up.mu.Unlock()
				default:
					up.mu.Lock()
					up.bodies[c.path.hash] = []byte(c.body)
					up.mu.Unlock()
				}
			}
			up.delay = c.delay
			f, err := NewFilter(FilterOptions{
				Mode: c.mode, Patterns: c.patterns, Upstream: up.URL, UpstreamPublicKey: upPub,
				CheckTimeout: time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			local := newFakeStore()
			ni := c.path.narInfo(localPrefix, c.sign...)
			local.add(ni, c.path.nar)
			shared := f.Wrap(local)

			if got := f.Decide(context.Background(), c.path.hash, ni); got != c.want {
				t.Errorf("Decide = %v, want %v", got, c.want)
			}
			if got := up.requests(); got != c.requests {
				t.Errorf("upstream requests = %d, want %d", got, c.requests)
			}
			if up.heads.Load() != 0 {
				t.Errorf("%d HEAD requests: the filter must GET the narinfo to compare builds", up.heads.Load())
			}

			// Every way out agrees: narinfo, NAR, Shareable.
			_, err = shared.NarInfo(context.Background(), c.path.hash)
			if c.want == Shared && err != nil {
				t.Errorf("NarInfo: %v", err)
			}
			if c.want != Shared && !errors.Is(err, store.ErrRefused) {
				t.Errorf("NarInfo: err = %v, want ErrRefused", err)
			}
			n, err := shared.NAR(context.Background(), ni.URL, 0)
			if c.want == Shared {
				if err != nil {
					t.Errorf("NAR: %v", err)
				} else {
					n.Close()
				}
			} else if !errors.Is(err, store.ErrRefused) {
				t.Errorf("NAR: err = %v, want ErrRefused", err)
			}
			if got := f.Shareable(context.Background(), c.path.hash); got != (c.want == Shared) {
				t.Errorf("Shareable = %v", got)
			}
		})
	}
}

func TestFilterRealCacheNixosOrgSignature(t *testing.T) {
	data, err := os.ReadFile("testdata/syd87l2rxw8cbsxmxl853h0r6pdwhwjr.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := parseUpstreamNarInfo(data, "syd87l2rxw8cbsxmxl853h0r6pdwhwjr")
	if err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t) // answers 404 to everything
	// The default upstream, whose key is built in: no key option needed.
	f, err := NewFilter(FilterOptions{Upstream: up.URL, UpstreamKeyName: DefaultUpstreamKeyName})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.UpstreamKey() != DefaultUpstreamPublicKey {
		t.Fatalf("UpstreamKey = %q", f.UpstreamKey())
	}
	if d := f.Decide(context.Background(), "syd87l2rxw8cbsxmxl853h0r6pdwhwjr", ni); d != Shared {
		t.Errorf("real cache.nixos.org path: %v", d)
	}
	if up.requests() != 0 {
		t.Errorf("upstream asked about a path signed by cache.nixos.org")
	}
	// The same record with its NarSize changed no longer verifies.
	tampered := *ni
	tampered.NarSize++
	if d := f.Decide(context.Background(), "syd87l2rxw8cbsxmxl853h0r6pdwhwjr", &tampered); d != RefusedPrivate {
		t.Errorf("tampered record: %v", d)
	}
}

func TestUpstreamKeyResolution(t *testing.T) {
	_, pub := genKey(t, "corp-cache-1")
	_, pub2 := genKey(t, "cache.nixos.org-1")
	cases := []struct {
		name, url, keyName, key string
		trusted                 []string
		want                    string // "" = no key
		err                     bool
	}{
		{name: "default upstream: built-in key", url: "", want: DefaultUpstreamPublicKey},
		{name: "default upstream URL", url: DefaultUpstream + "/", want: DefaultUpstreamPublicKey},
		{name: "default name found among trusted keys", url: DefaultUpstream, trusted: []string{pub + " " + pub2}, want: pub2},
		{name: "custom upstream, nothing configured: no key", url: "http://nginx:8080", trusted: []string{pub}},
		{name: "custom upstream, name found in trusted", url: "http://nginx:8080", keyName: "corp-cache-1", trusted: []string{pub}, want: pub},
		{name: "custom upstream, name not found: no key", url: "http://nginx:8080", keyName: "corp-cache-2", trusted: []string{pub}},
		{name: "explicit key", url: "http://nginx:8080", key: pub, want: pub},
		{name: "explicit key, wrong name", url: "http://nginx:8080", key: pub, keyName: "other", err: true},
		{name: "malformed key", key: "corp:xyz", err: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := UpstreamKey(c.url, c.keyName, c.key, c.trusted)
			if c.err {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if k != nil {
				got = k.String()
			}
			if got != c.want {
				t.Errorf("key = %q, want %q", got, c.want)
			}
		})
	}
}

func TestFilterNoKeyChecksEverything(t *testing.T) {
	upKey, _ := genKey(t, "upstream.example-1")
	up := newUpstream(t)
	p := newPath("hello-2.12", []byte("a"))
	f, err := NewFilter(FilterOptions{Upstream: up.URL, UpstreamKeyName: "upstream.example-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The name is configured but no key for it is known: a signature by
	// that name proves nothing, the upstream is asked.
	if d := f.Decide(context.Background(), p.hash, p.narInfo(localPrefix, upKey)); d != RefusedPrivate {
		t.Errorf("decision %v", d)
	}
	if up.requests() != 1 {
		t.Errorf("upstream requests = %d", up.requests())
	}
}

func TestFilterRejectsMismatchedOrMalformed(t *testing.T) {
	up := newUpstream(t)
	up.def = 200
	f, err := NewFilter(FilterOptions{Upstream: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newPath("hello", []byte("a"))
	ni := p.narInfo(localPrefix)
	if d := f.Decide(context.Background(), hashOf("other"), ni); d != RefusedUnknown {
		t.Errorf("narinfo of another path: %v", d)
	}
	if d := f.Decide(context.Background(), p.hash, nil); d != RefusedUnknown {
		t.Errorf("nil narinfo: %v", d)
	}
	shared := f.Wrap(newFakeStore())
	if _, err := shared.NAR(context.Background(), "nar/../../etc/passwd", 0); !errors.Is(err, store.ErrBadRequest) {
		t.Errorf("bad NAR URL: %v", err)
	}
	if _, err := shared.NarInfo(context.Background(), p.hash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("absent path: %v", err)
	}
	if f.Shareable(context.Background(), p.hash) || f.Shareable(context.Background(), "not-a-hash") {
		t.Error("absent or invalid path shareable")
	}
}

func TestFilterBadPatterns(t *testing.T) {
	for _, p := range []string{"", "[", "a/b"} {
		if _, err := NewFilter(FilterOptions{Mode: ModePatterns, Patterns: []string{p}}); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
	if _, err := NewFilter(FilterOptions{Mode: "everything"}); err == nil {
		t.Error("bad mode accepted")
	}
}

func TestDefaultPatterns(t *testing.T) {
	ps, err := newPatternSet(true, nil)
	if err != nil {
		t.Fatal(err)
	}
	deny := []string{
		"secret", "secret.txt", "db-secret", "api_secret.json", "x.secrets", "agenix-secrets.nix",
		"server.key", "cert.pem", "id_ed25519", "id_rsa.pub", "wg-private-key", "cache-priv-key.pem",
		"mykey.sec", "github-token", "api_token.txt", "tokens.json", "aws-credentials", "credentials.json",
		"htpasswd", "password-file", "wpa_supplicant.conf", "x.env", "netrc",
		"nixos-system-host-24.05.20240101.abcdef", "etc", "etc-hosts", "system-path", "system-units",
		"unit-sshd.service", "X-Restart-Triggers-sshd", "initrd-linux-6.6.1",
		"home-manager-generation", "home-manager-files", "home-manager-path", "hm_.bashrc", "hm-session-vars.sh",
		"user-environment", "env-manifest.nix", "profile", "source", "hello-2.12.drv",
	}
	allow := []string{
		"hello-2.12", "glibc-2.39", "libsecret-0.21.4", "python3.11-tokenizers-0.15.0", "tiktoken-0.5",
		"home-manager-0-unstable-2024-05-01", "openssl-3.0.13", "keyutils-1.6.3", "gnupg-2.4.5",
		"etcd-3.5.12", "systemd-255", "nix-2.18.1", "source-highlight-3.1.9", "profile-sync-daemon-6.50",
	}
	for _, n := range deny {
		if _, ok := ps.match(n); !ok {
			t.Errorf("%q not denied", n)
		}
	}
	for _, n := range allow {
		if g, ok := ps.match(n); ok {
			t.Errorf("%q denied by %q", n, g)
		}
	}
}

// The filter's answers expire. Time is a synctest bubble's; the upstream,
// made outside the bubble, is reached in process.
func TestFilterCacheExpiry(t *testing.T) {
	up := newUpstream(t)
	synctest.Test(t, func(t *testing.T) { testFilterCacheExpiry(t, up) })
}

func testFilterCacheExpiry(t *testing.T, up *upstream) {
	f, err := NewFilter(FilterOptions{Upstream: up.URL, HTTPClient: up.inProcess()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	pub, priv, unk := newPath("pub", []byte("a")), newPath("priv", []byte("b")), newPath("unk", []byte("c"))
	up.has(pub)
	up.set(priv.hash, 404)
	up.set(unk.hash, 502)
	decide := func(p *spath) Decision { return f.Decide(ctx, p.hash, p.narInfo(localPrefix)) }
	heads := func() int64 { return up.requests() }

	if decide(pub) != Shared || decide(priv) != RefusedPrivate || decide(unk) != RefusedUnknown || heads() != 3 {
		t.Fatalf("first decisions wrong, %d requests", heads())
	}
	// Everything cached for now.
	if decide(pub) != Shared || decide(priv) != RefusedPrivate || decide(unk) != RefusedUnknown || heads() != 3 {
		t.Fatalf("cached decisions wrong, %d requests", heads())
	}
	// The upstream changes its mind about all three.
	up.set(pub.hash, 404)
	up.has(priv)
	up.has(unk)

	time.Sleep(DefaultUnknownTTL + time.Second) // unknown expires
	if decide(unk) != Shared || decide(pub) != Shared || decide(priv) != RefusedPrivate || heads() != 4 {
		t.Fatalf("after %v: wrong, %d requests", DefaultUnknownTTL, heads())
	}
	time.Sleep(DefaultNegativeTTL) // negative expires
	if decide(priv) != Shared || decide(pub) != Shared || heads() != 5 {
		t.Fatalf("after 1 h: wrong, %d requests", heads())
	}
	time.Sleep(DefaultPositiveTTL - DefaultNegativeTTL - DefaultUnknownTTL - 2*time.Second) // just before 24 h
	if decide(pub) != Shared || heads() != 5 {
		t.Fatalf("before 24 h: wrong, %d requests", heads())
	}
	time.Sleep(2 * time.Second) // 24 h and a second
	if decide(pub) != RefusedPrivate || heads() != 6 {
		t.Fatalf("after 24 h: wrong, %d requests", heads())
	}
	st := f.Stats()
	if st.CacheHits == 0 || st.UpstreamChecks != 6 || st.UpstreamErrors != 1 {
		t.Errorf("stats %+v", st)
	}
}

// The filter's answers outlive it on disk until they expire. Time is a
// synctest bubble's; the upstream, made outside the bubble, is reached in
// process.
func TestFilterDiskCache(t *testing.T) {
	up := newUpstream(t)
	synctest.Test(t, func(t *testing.T) { testFilterDiskCache(t, up) })
}

func testFilterDiskCache(t *testing.T, up *upstream) {
	dir := t.TempDir()
	opts := FilterOptions{Upstream: up.URL, StateDir: dir, HTTPClient: up.inProcess()}
	pub, priv, unk := newPath("pub", []byte("a")), newPath("priv", []byte("b")), newPath("unk", []byte("c"))
	up.has(pub)
	up.set(priv.hash, 404)
	up.set(unk.hash, 500)
	ctx := context.Background()

	f, err := NewFilter(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*spath{pub, priv, unk} {
		f.Decide(ctx, p.hash, p.narInfo(localPrefix))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, FilterCacheFile)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if !strings.HasPrefix(text, cacheHeader+"\n") || !strings.Contains(text, pub.hash+" p "+pub.narHash().Format(nixhash.NixBase32, false)+" ") ||
		!strings.Contains(text, priv.hash+" n ") || strings.Contains(text, unk.hash) {
		t.Fatalf("cache file:\n%s", text)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode %v", fi.Mode())
	}

	// Reloaded: answers come from disk, the upstream is not asked again
	// (it now answers 500 to everything).
	up.def = 500
	up.set(pub.hash, 500)
	up.set(priv.hash, 500)
	before := up.requests()
	f2, err := NewFilter(opts)
	if err != nil {
		t.Fatal(err)
	}
	if d := f2.Decide(ctx, pub.hash, pub.narInfo(localPrefix)); d != Shared {
		t.Errorf("reloaded public: %v", d)
	}
	if d := f2.Decide(ctx, priv.hash, priv.narInfo(localPrefix)); d != RefusedPrivate {
		t.Errorf("reloaded private: %v", d)
	}
	if up.requests() != before {
		t.Errorf("upstream asked despite the cache")
	}
	f2.Close()

	// After more than an hour the negative answer has expired on disk too.
	time.Sleep(DefaultNegativeTTL + time.Minute)
	f3, err := NewFilter(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f3.Close()
	if d := f3.Decide(ctx, priv.hash, priv.narInfo(localPrefix)); d != RefusedUnknown {
		t.Errorf("expired private: %v", d)
	}
	if d := f3.Decide(ctx, pub.hash, pub.narInfo(localPrefix)); d != Shared {
		t.Errorf("public after an hour: %v", d)
	}
}

func TestFilterDiskCacheClampsExpiry(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	h := hashOf("x")
	data := fmt.Sprintf("%s\n%s p %s %d\n", cacheHeader, h, strings.Repeat("1", 52), now.Add(365*24*time.Hour).Unix())
	entries, err := parseCache([]byte(data), now, time.Hour, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := entries[h].exp; !got.Equal(now.Add(time.Hour)) {
		t.Errorf("expiry %v not clamped to now+TTL", got)
	}
}

func TestFilterCorruptDiskCache(t *testing.T) {
	h := hashOf("x")
	for name, content := range map[string]string{
		"garbage":              "\x00\x01garbage\n",
		"wrong header":         "peerix-filter-cache 9\n" + h + " p 99999999999\n",
		"bad line":             cacheHeader + "\n" + h + " p 99999999999\nnot a line\n",
		"bad answer":           cacheHeader + "\n" + h + " y 99999999999\n",
		"bad hash":             cacheHeader + "\n" + strings.Repeat("e", 32) + " p 99999999999\n",
		"truncated":            cacheHeader + "\n" + h + " p 999",
		"no NarHash":           cacheHeader + "\n" + h + " p 99999999999\n",
		"bad NarHash":          cacheHeader + "\n" + h + " p " + strings.Repeat("e", 52) + " 99999999999\n",
		"short NarHash":        cacheHeader + "\n" + h + " p " + strings.Repeat("1", 51) + " 99999999999\n",
		"private with NarHash": cacheHeader + "\n" + h + " n " + strings.Repeat("1", 52) + " 99999999999\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, FilterCacheFile)
			if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs logBuffer
			up := newUpstream(t) // 404 for all
			f, err := NewFilter(FilterOptions{Upstream: up.URL, StateDir: dir, Log: newLogger(&logs)})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), "filter cache corrupt") {
				t.Errorf("no warning; log:\n%s", logs.String())
			}
			if f.Stats().CacheEntries != 0 {
				t.Errorf("entries loaded from a corrupt file")
			}
			p := &spath{hash: h, name: "x", nar: []byte("a")}
			if d := f.Decide(context.Background(), h, p.narInfo(localPrefix)); d != RefusedPrivate {
				t.Errorf("decision %v", d)
			}
			f.Close()
			data, _ := os.ReadFile(file)
			if !strings.HasPrefix(string(data), cacheHeader+"\n"+h+" n ") {
				t.Errorf("cache not rewritten:\n%q", data)
			}
		})
	}
}

// A cache of version 1 said only that the upstream has a path, not which
// build: it is ignored (without a warning) and rewritten.
func TestFilterOldDiskCache(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, FilterCacheFile)
	p := newPath("x", []byte("a"))
	if err := os.WriteFile(file, []byte("peerix-filter-cache 1\n"+p.hash+" p 99999999999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	up := newUpstream(t) // 404 for all
	f, err := NewFilter(FilterOptions{Upstream: up.URL, StateDir: dir, Log: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if f.Stats().CacheEntries != 0 || strings.Contains(logs.String(), "corrupt") || !strings.Contains(logs.String(), "older version") {
		t.Errorf("version 1 cache: %d entries loaded; log:\n%s", f.Stats().CacheEntries, logs.String())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(file); string(data) != cacheHeader+"\n" {
		t.Errorf("version 1 cache not rewritten:\n%q", data)
	}
}

func TestFilterPeriodicSave(t *testing.T) {
	dir := t.TempDir()
	up := newUpstream(t)
	f, err := NewFilter(FilterOptions{Upstream: up.URL, StateDir: dir, SaveInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newPath("x", []byte("a"))
	f.Decide(context.Background(), p.hash, p.narInfo(localPrefix))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(filepath.Join(dir, FilterCacheFile)); strings.Contains(string(data), p.hash) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("cache not saved periodically")
}

func TestFilterBoundedConcurrency(t *testing.T) {
	up := newUpstream(t)
	up.delay = 30 * time.Millisecond
	f, err := NewFilter(FilterOptions{Upstream: up.URL, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	local := newFakeStore()
	var paths []*spath
	for i := range 40 {
		p := newPath(fmt.Sprintf("p%d", i), []byte("a"))
		local.add(p.narInfo(localPrefix), p.nar)
		up.has(p)
		paths = append(paths, p)
	}
	f.Wrap(local)
	var wg sync.WaitGroup
	for _, p := range paths {
		for range 5 { // five askers per path: one request in all
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !f.Shareable(context.Background(), p.hash) {
					t.Errorf("%s not shareable", p.name)
				}
			}()
		}
	}
	wg.Wait()
	if got := up.maxIn.Load(); got > 8 || got < 2 {
		t.Errorf("max requests in flight = %d, want 2..8", got)
	}
	if got := up.requests(); got != 40 {
		t.Errorf("upstream requests = %d, want 40 (one per path)", got)
	}
}

func TestFilterCallerGivesUp(t *testing.T) {
	up := newUpstream(t)
	up.delay = 200 * time.Millisecond
	f, err := NewFilter(FilterOptions{Upstream: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newPath("x", []byte("a"))
	up.has(p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if d := f.Decide(ctx, p.hash, p.narInfo(localPrefix)); d != RefusedUnknown {
		t.Errorf("impatient caller: %v", d)
	}
	// The check went on; its answer serves the next caller.
	for deadline := time.Now().Add(5 * time.Second); f.Stats().CacheEntries == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if d := f.Decide(context.Background(), p.hash, p.narInfo(localPrefix)); d != Shared || up.requests() != 1 {
		t.Errorf("next caller: %v, %d requests", d, up.requests())
	}
}

func TestFilterHealth(t *testing.T) {
	up := newUpstream(t)
	up.def = 503
	var logs logBuffer
	f, err := NewFilter(FilterOptions{Upstream: up.URL, UnhealthyAfter: 3, UnknownTTL: time.Nanosecond, Log: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	if h := f.Health(); !h.Reachable || h.Upstream != up.URL {
		t.Fatalf("initial health %+v", h)
	}
	for i := range 3 {
		p := newPath(fmt.Sprint(i), []byte("a"))
		if d := f.Decide(ctx, p.hash, p.narInfo(localPrefix)); d != RefusedUnknown {
			t.Fatalf("decision %v", d)
		}
		if h := f.Health(); h.Reachable != (i < 2) || h.ConsecutiveFailures != i+1 {
			t.Fatalf("after %d failures: %+v", i+1, h)
		}
	}
	if h := f.Health(); !strings.Contains(h.LastError, "503") {
		t.Errorf("last error %q", h.LastError)
	}
	if !strings.Contains(logs.String(), "upstream unreachable") {
		t.Error("no warning logged")
	}
	up.def = 404
	p := newPath("back", []byte("a"))
	f.Decide(ctx, p.hash, p.narInfo(localPrefix))
	if h := f.Health(); !h.Reachable || h.ConsecutiveFailures != 0 {
		t.Errorf("after a success: %+v", h)
	}
	st := f.Stats()
	if st.Unknown != 3 || st.RefusedPrivate != 1 {
		t.Errorf("stats %+v", st)
	}

	// A closed upstream is a network error: unknown, and counted.
	up.Close()
	p = newPath("gone", []byte("a"))
	if d := f.Decide(ctx, p.hash, p.narInfo(localPrefix)); d != RefusedUnknown {
		t.Errorf("closed upstream: %v", d)
	}
}

func TestFilterStatsCount(t *testing.T) {
	upKey, upPub := genKey(t, "u-1")
	up := newUpstream(t)
	f, err := NewFilter(FilterOptions{Upstream: up.URL, UpstreamPublicKey: upPub})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	signed, secret, private := newPath("a", nil), newPath("a.key", nil), newPath("b", nil)
	f.Decide(ctx, signed.hash, signed.narInfo(localPrefix, upKey))
	f.Decide(ctx, secret.hash, secret.narInfo(localPrefix))
	f.Decide(ctx, private.hash, private.narInfo(localPrefix))
	want := FilterStats{Shared: 1, SharedBySignature: 1, RefusedPattern: 1, RefusedPrivate: 1, UpstreamChecks: 1, CacheEntries: 1}
	if got := f.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

// TestFilterVerdictFollowsNarInfo: what the filter decided from a narinfo
// alone (its name, its upstream signature) is remembered for that narinfo
// only; a new narinfo for the path is decided afresh, and decisions that
// need the upstream are never taken from that memory. Counters count every
// decision, remembered or not.
func TestFilterVerdictFollowsNarInfo(t *testing.T) {
	upKey, upPub := genKey(t, "u-1")
	up := newUpstream(t)
	f, err := NewFilter(FilterOptions{Upstream: up.URL, UpstreamPublicKey: upPub, NegativeTTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	p := newPath("a", nil)
	signed := p.narInfo(localPrefix, upKey)
	for range 3 {
		if d := f.Decide(ctx, p.hash, signed); d != Shared {
			t.Fatalf("signed by the upstream: %v", d)
		}
	}
	// The same path without the signature (a narinfo with other contents):
	// the upstream, which has it not, is asked, each time its answer expired.
	unsigned := p.narInfo(localPrefix)
	up.set(p.hash, 404)
	for range 2 {
		if d := f.Decide(ctx, p.hash, unsigned); d != RefusedPrivate {
			t.Fatalf("unsigned, the upstream has it not: %v", d)
		}
		time.Sleep(time.Millisecond)
	}
	// A narinfo for the hash naming another path is refused, even though
	// the hash was shared a moment ago.
	other := *signed
	other.StorePath = "/nix/store/" + p.hash + "-id_rsa"
	if d := f.Decide(ctx, p.hash, &other); d != RefusedPattern {
		t.Fatalf("renamed to a secret: %v", d)
	}
	want := FilterStats{Shared: 3, SharedBySignature: 3, RefusedPattern: 1, RefusedPrivate: 2, UpstreamChecks: 2, CacheEntries: 1}
	if got := f.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

// Answering from memory, the peer-facing store never waits for the
// upstream: a path not decided yet is refused at once, as fast as an
// absent one, and decided in the background for the next request; an
// expired answer serves while a fresh one is fetched.
func TestFilterAnswerFromMemory(t *testing.T) {
	up := newUpstream(t)
	synctest.Test(t, func(t *testing.T) { testFilterAnswerFromMemory(t, up) })
}

func testFilterAnswerFromMemory(t *testing.T, up *upstream) {
	pub, priv := newPath("pub", []byte("a")), newPath("priv", []byte("b"))
	up.has(pub)
	up.set(priv.hash, 404)
	up.delay = 2 * time.Second
	f, err := NewFilter(FilterOptions{Upstream: up.URL, HTTPClient: up.inProcess(), AnswerFromMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	local := newFakeStore()
	for _, p := range []*spath{pub, priv} {
		local.add(p.narInfo(localPrefix), p.nar)
	}
	shared := f.Wrap(local)
	ctx := context.Background()
	absent := hashOf("absent")

	start := time.Now()
	for _, h := range []string{pub.hash, priv.hash} {
		if _, err := shared.NarInfo(ctx, h); !errors.Is(err, store.ErrRefused) {
			t.Errorf("undecided %s: err %v, want ErrRefused at once", h, err)
		}
		if _, err := shared.NAR(ctx, localPrefix+h+"-"+strings.Repeat("1", 52)+".nar", 0); err == nil {
			t.Errorf("undecided %s: NAR served", h)
		}
	}
	if _, err := shared.NarInfo(ctx, absent); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("absent: %v", err)
	}
	if took := time.Since(start); took != 0 {
		t.Errorf("answers from memory took %v (the upstream takes %v)", took, up.delay)
	}
	synctest.Wait()
	time.Sleep(backgroundPause + up.delay)
	synctest.Wait()
	if got := up.requests(); got != 2 {
		t.Errorf("background checks: %d upstream requests, want 2", got)
	}
	if _, err := shared.NarInfo(ctx, pub.hash); err != nil {
		t.Errorf("public path once decided: %v", err)
	}
	if _, err := shared.NarInfo(ctx, priv.hash); !errors.Is(err, store.ErrRefused) {
		t.Errorf("private path once decided: %v", err)
	}

	// The upstream drops the public path; after 24 h the old answer still
	// serves (at once) while the new one is fetched, then the new one.
	up.set(pub.hash, 404)
	time.Sleep(DefaultPositiveTTL)
	start = time.Now()
	if _, err := shared.NarInfo(ctx, pub.hash); err != nil || time.Since(start) != 0 {
		t.Errorf("expired answer: err %v after %v, want the old answer at once", err, time.Since(start))
	}
	time.Sleep(backgroundPause + up.delay)
	synctest.Wait()
	if _, err := shared.NarInfo(ctx, pub.hash); !errors.Is(err, store.ErrRefused) {
		t.Errorf("after the refresh: %v, want ErrRefused", err)
	}
	// Shareable (announcements, summaries) still waits for the upstream.
	other := newPath("other", []byte("c"))
	local.add(other.narInfo(localPrefix), other.nar)
	up.has(other)
	if !f.Shareable(ctx, other.hash) {
		t.Error("Shareable did not wait for the upstream")
	}
}
