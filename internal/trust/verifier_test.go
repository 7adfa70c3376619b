package trust

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

const lanPrefix = "nar/lan/"

// verifierEnv is a verifier over a fake remote store, with an httptest
// upstream whose narinfos are signed by upKey.
type verifierEnv struct {
	t       *testing.T
	up      *upstream
	upKey   signature.SecretKey
	trusted signature.SecretKey
	remote  *fakeStore
	v       *Verifier
	st      store.Store

	mu  sync.Mutex
	bad []string
}

func newVerifierEnv(t *testing.T, mod func(*VerifierOptions)) *verifierEnv {
	e := &verifierEnv{t: t, up: newUpstream(t), remote: newFakeStore()}
	var upPub, trustedPub string
	e.upKey, upPub = genKey(t, "upstream.example-1")
	e.trusted, trustedPub = genKey(t, "friend.example-1")
	opts := VerifierOptions{
		TrustedPublicKeys: []string{trustedPub + " " + upPub},
		Upstream:          e.up.URL,
		UpstreamPublicKey: upPub,
		FetchTimeout:      time.Second,
		OnBadNAR: func(url string) {
			e.mu.Lock()
			e.bad = append(e.bad, url)
			e.mu.Unlock()
		},
	}
	if mod != nil {
		mod(&opts)
	}
	var err error
	if e.v, err = NewVerifier(opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.v.Close() })
	e.st = e.v.Wrap(e.remote)
	return e
}

func (e *verifierEnv) badURLs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.bad...)
}

// offer makes the remote (peers) offer p, signed by keys, streaming nar.
func (e *verifierEnv) offer(p *spath, nar []byte, keys ...signature.SecretKey) *narinfo.NarInfo {
	ni := p.narInfo(lanPrefix, keys...)
	e.remote.add(ni, nar)
	return ni
}

// publish makes the upstream serve p's narinfo, signed by its key.
func (e *verifierEnv) publish(p *spath) *narinfo.NarInfo {
	ni := p.narInfo(localPrefix, e.upKey)
	ni.Compression = "xz"
	e.up.publish(ni)
	return ni
}

func narContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestVerifierNarInfo(t *testing.T) {
	ctx := context.Background()
	other, _ := genKey(t, "stranger-1")
	forger, _ := genKey(t, "friend.example-1") // the trusted key's name, another key

	t.Run("signed by a trusted key passes without the upstream", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		e.offer(p, p.nar, e.trusted)
		ni, err := e.st.NarInfo(ctx, p.hash)
		if err != nil {
			t.Fatal(err)
		}
		if ni.StorePath != p.storePath() || e.up.gets.Load() != 0 {
			t.Errorf("narinfo %v, %d upstream GETs", ni.StorePath, e.up.gets.Load())
		}
		if s := e.v.Stats(); s.VerifiedBySignature != 1 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("matching upstream NarHash passes, with the upstream's signature", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		dep := newPath("dep", nil)
		p := newPath("hello", narContent(100), dep.hash+"-dep")
		e.offer(p, p.nar, other)
		e.publish(p)
		ni, err := e.st.NarInfo(ctx, p.hash)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range ni.Signatures {
			names = append(names, s.Name)
		}
		if strings.Join(names, " ") != "stranger-1 upstream.example-1" {
			t.Errorf("signatures %v", names)
		}
		if ni.URL != p.narInfo(lanPrefix).URL {
			t.Errorf("URL %s is not the peer's", ni.URL)
		}
		// Cached: a second lookup does not ask the upstream again.
		if _, err := e.st.NarInfo(ctx, p.hash); err != nil || e.up.gets.Load() != 1 {
			t.Errorf("second lookup: %v, %d GETs", err, e.up.gets.Load())
		}
		if s := e.v.Stats(); s.VerifiedByUpstream != 2 {
			t.Errorf("stats %+v", s)
		}
	})

	refused := []struct {
		name  string
		setup func(e *verifierEnv, p *spath)
	}{
		{"unsigned, upstream has it not", func(e *verifierEnv, p *spath) { e.offer(p, p.nar) }},
		{"signed by an untrusted key, upstream has it not", func(e *verifierEnv, p *spath) { e.offer(p, p.nar, other) }},
		{"forged signature under a trusted name", func(e *verifierEnv, p *spath) { e.offer(p, p.nar, forger) }},
		{"upstream has another NarHash", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.publish(&spath{hash: p.hash, name: p.name, nar: []byte("the real content")})
		}},
		{"upstream has another NarSize", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			up := p.narInfo(localPrefix)
			up.NarSize++
			if err := signing.Sign(up, e.upKey); err != nil {
				panic(err)
			}
			e.up.publish(up)
		}},
		{"upstream has other references", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.publish(&spath{hash: p.hash, name: p.name, nar: p.nar, refs: []string{hashOf("evil") + "-evil"}})
		}},
		{"upstream narinfo not signed by the upstream key", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.up.publish(p.narInfo(localPrefix, other))
		}},
		{"upstream narinfo unsigned", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.up.publish(p.narInfo(localPrefix))
		}},
		{"upstream answers 500", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.up.set(p.hash, 500)
		}},
		{"upstream answers garbage", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.up.mu.Lock()
			e.up.status[p.hash], e.up.bodies[p.hash] = 200, []byte("<html>captive portal</html>")
			e.up.mu.Unlock()
		}},
		{"upstream too slow", func(e *verifierEnv, p *spath) {
			e.offer(p, p.nar)
			e.publish(p)
			e.up.delay = 5 * time.Second
		}},
		{"peer's narinfo is for another path", func(e *verifierEnv, p *spath) {
			ni := newPath("other", p.nar).narInfo(lanPrefix, e.trusted)
			e.remote.mu.Lock()
			e.remote.infos[p.hash] = ni
			e.remote.mu.Unlock()
		}},
		{"peer's narinfo has no NarHash", func(e *verifierEnv, p *spath) {
			ni := p.narInfo(lanPrefix, e.trusted)
			ni.NarHash = nil
			e.remote.add(ni, p.nar)
		}},
		{"nobody has it", func(e *verifierEnv, p *spath) {}},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			e := newVerifierEnv(t, nil)
			p := newPath("hello", narContent(100))
			c.setup(e, p)
			_, err := e.st.NarInfo(ctx, p.hash)
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			// The NAR is refused as well.
			if _, err := e.st.NAR(ctx, p.narInfo(lanPrefix).URL, 0); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("NAR: err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestVerifierUpstreamWithoutKey(t *testing.T) {
	// A custom upstream with no key known: its narinfo is believed as served.
	e := newVerifierEnv(t, func(o *VerifierOptions) { o.UpstreamPublicKey = ""; o.TrustedPublicKeys = nil })
	p := newPath("hello", narContent(10))
	e.offer(p, p.nar)
	e.up.publish(p.narInfo(localPrefix))
	if _, err := e.st.NarInfo(context.Background(), p.hash); err != nil {
		t.Fatal(err)
	}
}

func TestVerifierUpstreamUnreachable(t *testing.T) {
	var logs logBuffer
	e := newVerifierEnv(t, func(o *VerifierOptions) { o.Log = newLogger(&logs); o.ErrorTTL = time.Nanosecond })
	e.up.Close()
	for i := range 3 {
		p := newPath(fmt.Sprint(i), narContent(10))
		e.offer(p, p.nar)
		if _, err := e.st.NarInfo(context.Background(), p.hash); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v", err)
		}
	}
	if h := e.v.Health(); h.Reachable || h.ConsecutiveFailures != 3 {
		t.Errorf("health %+v", h)
	}
	if !strings.Contains(logs.String(), "upstream unreachable") {
		t.Error("not logged")
	}
	// Signed paths still flow.
	p := newPath("signed", narContent(10))
	e.offer(p, p.nar, e.trusted)
	if _, err := e.st.NarInfo(context.Background(), p.hash); err != nil {
		t.Error(err)
	}
	if s := e.v.Stats(); s.UpstreamErrors != 3 || s.Rejected != 3 || s.VerifiedBySignature != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestVerifierCanceledCaller(t *testing.T) {
	e := newVerifierEnv(t, nil)
	e.up.delay = 100 * time.Millisecond
	p := newPath("hello", narContent(10))
	e.offer(p, p.nar)
	e.publish(p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := e.st.NarInfo(ctx, p.hash); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
}

func TestVerifierNoVerify(t *testing.T) {
	var logs logBuffer
	v, err := NewVerifier(VerifierOptions{NoVerify: true, Log: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	remote := newFakeStore()
	if got := v.Wrap(remote); got != store.Store(remote) {
		t.Error("NoVerify: Wrap changed the store")
	}
	if !strings.Contains(logs.String(), "VERIFICATION OFF") || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("no loud warning:\n%s", logs.String())
	}
}

func TestVerifierBadKeys(t *testing.T) {
	if _, err := NewVerifier(VerifierOptions{TrustedPublicKeys: []string{"nope"}}); err == nil {
		t.Error("malformed trusted key accepted")
	}
}

func readAllChecked(r io.Reader) ([]byte, error) {
	var out bytes.Buffer
	_, err := io.Copy(&out, r)
	return out.Bytes(), err
}

func TestVerifierNAR(t *testing.T) {
	ctx := context.Background()
	const size = 100_000
	good := narContent(size)
	tamper := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 1
		return b
	}
	cases := []struct {
		name    string
		serve   []byte // what the peer streams
		size    int64  // the size the peer claims; 0 = len(serve)
		wrap    func(io.Reader) io.Reader
		offset  int64
		wantErr bool
		openErr bool // NAR itself fails
	}{
		{name: "correct NAR streams exactly", serve: good},
		{name: "correct NAR in one-byte reads", serve: good, wrap: iotest.OneByteReader},
		{name: "correct NAR in odd reads", serve: good, wrap: iotest.HalfReader},
		{name: "tampered first byte", serve: tamper(0), wantErr: true},
		{name: "tampered middle byte", serve: tamper(size / 2), wantErr: true},
		{name: "tampered last byte", serve: tamper(size - 1), wantErr: true},
		{name: "tampered last byte, one-byte reads", serve: tamper(size - 1), wrap: iotest.OneByteReader, wantErr: true},
		{name: "longer than NarSize", serve: append(bytes.Clone(good), 'x'), size: size, wantErr: true},
		{name: "shorter than NarSize", serve: good[:size-10], size: size, wantErr: true},
		{name: "peer claims another size", serve: good, size: size + 1, openErr: true},
		{name: "resumed at an offset", serve: good, offset: 12345},
		{name: "resumed at an offset, prefix tampered", serve: tamper(10), offset: 12345, wantErr: true},
		{name: "resumed at an offset, tail tampered", serve: tamper(size - 5), offset: 12345, wantErr: true},
		{name: "resumed at the end", serve: good, offset: size},
		{name: "resumed at the end, tampered", serve: tamper(3), offset: size, wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newVerifierEnv(t, nil)
			p := newPath("hello", good)
			ni := e.offer(p, c.serve, e.trusted)
			if c.size != 0 {
				e.remote.sizes[ni.URL] = c.size
			}
			e.remote.wrap = c.wrap
			n, err := e.st.NAR(ctx, ni.URL, c.offset)
			if c.openErr {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("NAR: err = %v", err)
				}
				if got := e.badURLs(); len(got) != 1 || got[0] != ni.URL {
					t.Errorf("OnBadNAR calls %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			if n.Size != size {
				t.Errorf("Size = %d", n.Size)
			}
			got, err := readAllChecked(n)
			if !c.wantErr {
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if !bytes.Equal(got, good[c.offset:]) {
					t.Fatalf("got %d bytes, not the NAR from %d", len(got), c.offset)
				}
				if len(e.badURLs()) != 0 || e.v.Stats().NARsVerified != 1 {
					t.Errorf("bad calls %v, stats %+v", e.badURLs(), e.v.Stats())
				}
				return
			}
			if !errors.Is(err, ErrBadNAR) {
				t.Errorf("read error %v, want ErrBadNAR", err)
			}
			if int64(len(got)) >= size-c.offset && size > c.offset {
				t.Errorf("delivered %d bytes: the whole NAR from %d", len(got), c.offset)
			}
			if c.offset < size && len(got) > 0 && !bytes.Equal(got, c.serve[c.offset:c.offset+int64(len(got))]) {
				t.Errorf("delivered bytes are not the stream's")
			}
			if bad := e.badURLs(); len(bad) != 1 || bad[0] != ni.URL {
				t.Errorf("OnBadNAR calls %v", bad)
			}
			if s := e.v.Stats(); s.BadNARs != 1 || s.NARsVerified != 0 {
				t.Errorf("stats %+v", s)
			}
			// The error sticks.
			if k, err := n.Read(make([]byte, 10)); k != 0 || err == nil {
				t.Errorf("read after failure: %d, %v", k, err)
			}
		})
	}
}

func TestVerifierNARRefusals(t *testing.T) {
	ctx := context.Background()
	e := newVerifierEnv(t, nil)
	p := newPath("hello", narContent(1000))
	ni := e.offer(p, p.nar, e.trusted)
	if _, err := e.st.NAR(ctx, "nar/lan/garbage.nar", 0); !errors.Is(err, store.ErrBadRequest) {
		t.Errorf("garbage URL: %v", err)
	}
	// A URL for the path but with another NarHash than the verified one.
	stale := lanPrefix + p.hash + "-" + strings.Repeat("0", 52) + ".nar"
	if _, err := e.st.NAR(ctx, stale, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stale URL: %v", err)
	}
	if e.remote.narOpens.Load() != 0 {
		t.Errorf("remote opened for a stale URL")
	}
	// The same NAR under another remote's prefix is the same NAR.
	p2pURL := "nar/p2p/" + strings.TrimPrefix(ni.URL, lanPrefix)
	e.remote.mu.Lock()
	e.remote.nars[p2pURL] = p.nar
	e.remote.mu.Unlock()
	n, err := e.st.NAR(ctx, p2pURL, 0)
	if err != nil {
		t.Fatalf("same NAR, other prefix: %v", err)
	}
	if got, err := io.ReadAll(n); err != nil || !bytes.Equal(got, p.nar) {
		t.Errorf("same NAR, other prefix: %v", err)
	}
	n.Close()
	opens := e.remote.narOpens.Load()
	if _, err := e.st.NAR(ctx, ni.URL, 1001); !errors.Is(err, store.ErrOffset) {
		t.Errorf("offset beyond the end: %v", err)
	}
	if e.remote.narOpens.Load() != opens {
		t.Errorf("remote opened for refused requests")
	}
}

// TestVerifierThroughHTTP serves a tampered NAR to an HTTP client through
// the real cache server: the client must see a broken transfer that ends
// before the NAR's last byte.
func TestVerifierThroughHTTP(t *testing.T) {
	e := newVerifierEnv(t, nil)
	const size = 300_000
	good := narContent(size)
	bad := bytes.Clone(good)
	bad[size-1] ^= 0xff
	p := newPath("hello", good)
	ni := e.offer(p, bad, e.trusted)
	okPath := newPath("fine", narContent(size/3))
	okNi := e.offer(okPath, okPath.nar, e.trusted)

	srv := httptest.NewServer(&cache.Server{
		Local:    newFakeStore(),
		Remote:   e.st,
		StoreDir: "/nix/store",
		Log:      slog.New(slog.DiscardHandler),
	})
	defer srv.Close()

	get := func(url string) ([]byte, *http.Response, error) {
		resp, err := http.Get(srv.URL + "/" + url)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return body, resp, err
	}
	body, resp, err := get(okNi.URL)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, okPath.nar) {
		t.Fatalf("good NAR: %v, %d bytes", err, len(body))
	}
	body, resp, err = get(ni.URL)
	if err == nil {
		t.Fatalf("tampered NAR arrived complete: status %d, %d bytes", resp.StatusCode, len(body))
	}
	if len(body) >= size {
		t.Errorf("client got %d bytes of a %d-byte NAR", len(body), size)
	}
	if len(e.badURLs()) != 1 {
		t.Errorf("OnBadNAR calls %v", e.badURLs())
	}
	// The narinfo of a path no peer can vouch for is a 404, not a 5xx.
	e.up.set(hashOf("x"), 500)
	x := newPath("x", narContent(10))
	e.offer(x, x.nar)
	if _, resp, _ := get(x.hash + ".narinfo"); resp == nil || resp.StatusCode != 404 {
		t.Errorf("unverifiable narinfo: %v", resp)
	}
}
