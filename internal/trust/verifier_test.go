package trust

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
)

const lanPrefix = "nar/lan/"

// verifierEnv is a verifier with an httptest upstream whose narinfos are
// signed by upKey; trusted is a key the verifier trusts.
type verifierEnv struct {
	t       *testing.T
	up      *upstream
	upKey   signature.SecretKey
	trusted signature.SecretKey
	v       *Verifier
}

func newVerifierEnv(t *testing.T, mod func(*VerifierOptions)) *verifierEnv {
	e := &verifierEnv{t: t, up: newUpstream(t)}
	var upPub, trustedPub string
	e.upKey, upPub = genKey(t, "upstream.example-1")
	e.trusted, trustedPub = genKey(t, "friend.example-1")
	opts := VerifierOptions{
		TrustedPublicKeys: []string{trustedPub + " " + upPub},
		Upstream:          e.up.URL,
		UpstreamPublicKey: upPub,
		FetchTimeout:      time.Second,
	}
	if mod != nil {
		mod(&opts)
	}
	var err error
	if e.v, err = NewVerifier(opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.v.Close() })
	return e
}

// offer is p's narinfo as a peer sends it, signed by keys.
func (e *verifierEnv) offer(p *spath, keys ...signature.SecretKey) *narinfo.NarInfo {
	return p.narInfo(lanPrefix, keys...)
}

// publish makes the upstream serve p's narinfo, signed by its key.
func (e *verifierEnv) publish(p *spath) *narinfo.NarInfo {
	ni := p.narInfo(localPrefix, e.upKey)
	ni.Compression = "xz"
	e.up.publish(ni)
	return ni
}

// publishWith makes the upstream serve p's narinfo changed by mod, then
// signed by its key.
func (e *verifierEnv) publishWith(p *spath, mod func(*narinfo.NarInfo)) *narinfo.NarInfo {
	ni := p.narInfo(localPrefix)
	ni.Compression = "xz"
	mod(ni)
	if err := signing.Sign(ni, e.upKey); err != nil {
		e.t.Fatal(err)
	}
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

func sigNames(ni *narinfo.NarInfo) string {
	var names []string
	for _, s := range ni.Signatures {
		names = append(names, s.Name)
	}
	return strings.Join(names, " ")
}

// What Accept vouches for, and what it hands on: a trusted signature, or a
// match with the upstream's narinfo in everything Nix's fingerprint covers.
func TestVerifierAccepts(t *testing.T) {
	ctx := context.Background()
	other, _ := genKey(t, "stranger-1")

	t.Run("signed by a trusted key passes without the upstream", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		// The upstream disagrees; a trusted signature is not second-guessed.
		e.publish(&spath{hash: p.hash, name: p.name, nar: []byte("other")})
		ni, err := e.v.Accept(ctx, p.hash, e.offer(p, e.trusted))
		if err != nil {
			t.Fatal(err)
		}
		if ni.StorePath != p.storePath() || ni.NarHash.String() != p.narHash().String() || e.up.gets.Load() != 0 {
			t.Errorf("narinfo %v %v, %d upstream GETs", ni.StorePath, ni.NarHash, e.up.gets.Load())
		}
		if sigNames(ni) != "friend.example-1" {
			t.Errorf("signatures %q", sigNames(ni))
		}
		if s := e.v.Stats(); s.VerifiedBySignature != 1 || s.Rejected != 0 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("signed by the upstream key, served by a peer", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		if _, err := e.v.Accept(ctx, p.hash, e.offer(p, e.upKey)); err != nil {
			t.Fatal(err)
		}
		if e.up.gets.Load() != 0 {
			t.Errorf("%d upstream GETs", e.up.gets.Load())
		}
	})
	t.Run("matching the upstream passes, with the upstream's signature", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		dep := newPath("dep", nil)
		p := newPath("hello", narContent(100), dep.hash+"-dep", hashOf("hello")+"-hello") // and itself
		e.publish(p)
		// References in another order (and one twice) are the same set.
		peer := e.offer(&spath{hash: p.hash, name: p.name, nar: p.nar,
			refs: []string{p.refs[1], p.refs[0], p.refs[1]}}, other)
		ni, err := e.v.Accept(ctx, p.hash, peer)
		if err != nil {
			t.Fatal(err)
		}
		if got := sigNames(ni); got != "stranger-1 upstream.example-1" {
			t.Errorf("signatures %q", got)
		}
		if ni.URL != peer.URL {
			t.Errorf("URL %s is not the peer's", ni.URL)
		}
		// Cached: a second narinfo does not ask the upstream again.
		if _, err := e.v.Accept(ctx, p.hash, e.offer(p)); err != nil || e.up.gets.Load() != 1 {
			t.Errorf("second narinfo: %v, %d GETs", err, e.up.gets.Load())
		}
		if s := e.v.Stats(); s.VerifiedByUpstream != 2 || s.Rejected != 0 {
			t.Errorf("stats %+v", s)
		}
	})
}

// Accept hands on only what was verified: the fields Nix's fingerprint
// covers, and Deriver, CA and System from the upstream alone. A peer's
// forged Deriver, CA, System, compression or file hash never reach Nix.
func TestVerifierPassesOnlyVerifiedFields(t *testing.T) {
	ctx := context.Background()
	forge := func(ni *narinfo.NarInfo) *narinfo.NarInfo {
		ni.Deriver = hashOf("evil") + "-evil.drv"
		ni.CA = "fixed:r:sha256:" + strings.Repeat("0", 52)
		ni.System = "evil-linux"
		ni.Compression = "xz"
		ni.FileHash = newPath("file", []byte("compressed")).narHash()
		ni.FileSize = 3
		return ni
	}
	check := func(t *testing.T, ni *narinfo.NarInfo, deriver, ca, system string) {
		t.Helper()
		if ni.Deriver != deriver || ni.CA != ca || ni.System != system {
			t.Errorf("Deriver %q, CA %q, System %q; want %q, %q, %q", ni.Deriver, ni.CA, ni.System, deriver, ca, system)
		}
		if ni.Compression != "none" || ni.FileHash.String() != ni.NarHash.String() || ni.FileSize != ni.NarSize {
			t.Errorf("Compression %q, FileHash %v, FileSize %d: not the NAR's", ni.Compression, ni.FileHash, ni.FileSize)
		}
	}

	t.Run("matching the upstream: its Deriver, CA and System", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		up := e.publishWith(p, func(ni *narinfo.NarInfo) {
			ni.Deriver = hashOf("good") + "-hello.drv"
			ni.CA = "fixed:r:sha256:" + strings.Repeat("1", 52)
			ni.System = "x86_64-linux"
		})
		peer := forge(e.offer(p))
		ni, err := e.v.Accept(ctx, p.hash, peer)
		if err != nil {
			t.Fatal(err)
		}
		check(t, ni, up.Deriver, up.CA, up.System)
		if peer.Deriver != hashOf("evil")+"-evil.drv" {
			t.Error("Accept changed the peer's narinfo")
		}
	})
	t.Run("matching an upstream without them: none", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		e.publish(p)
		ni, err := e.v.Accept(ctx, p.hash, forge(e.offer(p)))
		if err != nil {
			t.Fatal(err)
		}
		check(t, ni, "", "", "")
	})
	t.Run("trusted signature: none (the signature does not cover them)", func(t *testing.T) {
		e := newVerifierEnv(t, nil)
		p := newPath("hello", narContent(100))
		ni, err := e.v.Accept(ctx, p.hash, forge(e.offer(p, e.trusted)))
		if err != nil {
			t.Fatal(err)
		}
		check(t, ni, "", "", "")
		if e.up.gets.Load() != 0 {
			t.Errorf("%d upstream GETs", e.up.gets.Load())
		}
	})
}

// What Accept refuses, and how: a narinfo that contradicts the upstream's
// (or is malformed, or for another path) is a lie (swarm.ErrLie: the
// holder is blamed); one that merely cannot be verified is a miss
// (store.ErrNotFound: nobody is blamed, Nix sees a 404).
func TestVerifierRefuses(t *testing.T) {
	ctx := context.Background()
	other, _ := genKey(t, "stranger-1")
	forger, _ := genKey(t, "friend.example-1") // the trusted key's name, another key
	const lie, miss = true, false

	cases := []struct {
		name string
		// peer returns the peer's narinfo for p, after setting up the upstream.
		peer func(e *verifierEnv, p *spath) *narinfo.NarInfo
		lie  bool
	}{
		{"unsigned, upstream has it not", func(e *verifierEnv, p *spath) *narinfo.NarInfo { return e.offer(p) }, miss},
		{"signed by an untrusted key, upstream has it not", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			return e.offer(p, other)
		}, miss},
		{"forged signature under a trusted name", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			return e.offer(p, forger)
		}, miss},
		{"trusted signature over other content", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			ni := e.offer(p, e.trusted)
			ni.NarSize++ // the signature no longer verifies
			return ni
		}, miss},
		{"upstream has another NarHash", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(&spath{hash: p.hash, name: p.name, nar: []byte("the real content")})
			return e.offer(p)
		}, lie},
		{"upstream has another NarHash, the peer's signed by an untrusted key", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(&spath{hash: p.hash, name: p.name, nar: []byte("the real content")})
			return e.offer(p, other)
		}, lie},
		{"upstream has another NarSize", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publishWith(p, func(ni *narinfo.NarInfo) { ni.NarSize++ })
			return e.offer(p)
		}, lie},
		{"upstream has other references", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(&spath{hash: p.hash, name: p.name, nar: p.nar, refs: []string{hashOf("evil") + "-evil"}})
			return e.offer(p)
		}, lie},
		{"peer leaves a reference out", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(&spath{hash: p.hash, name: p.name, nar: p.nar, refs: []string{hashOf("dep") + "-dep"}})
			return e.offer(p)
		}, lie},
		{"upstream names the hash with another name", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(&spath{hash: p.hash, name: "other-name", nar: p.nar})
			return e.offer(p)
		}, lie},
		{"upstream narinfo not signed by the upstream key", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.up.publish(p.narInfo(localPrefix, other))
			return e.offer(p)
		}, miss},
		{"upstream narinfo unsigned", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.up.publish(p.narInfo(localPrefix))
			return e.offer(p)
		}, miss},
		{"upstream narinfo for another NarHash, not signed by the upstream key", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.up.publish((&spath{hash: p.hash, name: p.name, nar: []byte("x")}).narInfo(localPrefix, other))
			return e.offer(p)
		}, miss},
		{"upstream answers 500", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.up.set(p.hash, 500)
			return e.offer(p)
		}, miss},
		{"upstream answers garbage", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.up.mu.Lock()
			e.up.status[p.hash], e.up.bodies[p.hash] = 200, []byte("<html>captive portal</html>")
			e.up.mu.Unlock()
			return e.offer(p)
		}, miss},
		{"upstream too slow", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(p)
			e.up.delay = 5 * time.Second
			return e.offer(p)
		}, miss},
		{"peer's narinfo is for another path", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			return newPath("other", p.nar).narInfo(lanPrefix, e.trusted)
		}, lie},
		{"peer's narinfo has no NarHash", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			ni := e.offer(p, e.trusted)
			ni.NarHash = nil
			return ni
		}, lie},
		{"peer's narinfo has no NarSize", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			e.publish(p)
			ni := e.offer(p)
			ni.NarSize = 0
			return ni
		}, lie},
		{"peer's narinfo names a malformed reference", func(e *verifierEnv, p *spath) *narinfo.NarInfo {
			ni := e.offer(p, e.trusted)
			ni.References = []string{"../../etc/passwd"}
			return ni
		}, lie},
		{"no narinfo at all", func(e *verifierEnv, p *spath) *narinfo.NarInfo { return nil }, lie},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newVerifierEnv(t, nil)
			p := newPath("hello", narContent(100))
			ni, err := e.v.Accept(ctx, p.hash, c.peer(e, p))
			if ni != nil {
				t.Errorf("a narinfo with the error: %v", ni.StorePath)
			}
			isLie, isMiss := errors.Is(err, swarm.ErrLie), errors.Is(err, store.ErrNotFound)
			switch {
			case c.lie && (!isLie || isMiss):
				t.Fatalf("err = %v, want a lie (swarm.ErrLie)", err)
			case !c.lie && (!isMiss || isLie):
				t.Fatalf("err = %v, want a miss (store.ErrNotFound)", err)
			}
			if s := e.v.Stats(); s.Rejected != 1 || s.VerifiedBySignature+s.VerifiedByUpstream != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

func TestVerifierUpstreamWithoutKey(t *testing.T) {
	// A custom upstream with no key known: its narinfo is believed as served.
	e := newVerifierEnv(t, func(o *VerifierOptions) { o.UpstreamPublicKey = ""; o.TrustedPublicKeys = nil })
	p := newPath("hello", narContent(10))
	e.up.publish(p.narInfo(localPrefix))
	if _, err := e.v.Accept(context.Background(), p.hash, e.offer(p)); err != nil {
		t.Fatal(err)
	}
	// And a peer that contradicts it lied.
	q := newPath("other", narContent(10))
	e.up.publish(q.narInfo(localPrefix))
	lying := e.offer(&spath{hash: q.hash, name: q.name, nar: []byte("not it")})
	if _, err := e.v.Accept(context.Background(), q.hash, lying); !errors.Is(err, swarm.ErrLie) {
		t.Errorf("contradicting an upstream without a key: %v, want ErrLie", err)
	}
}

func TestVerifierUpstreamUnreachable(t *testing.T) {
	var logs logBuffer
	e := newVerifierEnv(t, func(o *VerifierOptions) { o.Log = newLogger(&logs); o.ErrorTTL = time.Nanosecond })
	e.up.Close()
	for i := range 3 {
		p := newPath(fmt.Sprint(i), narContent(10))
		if _, err := e.v.Accept(context.Background(), p.hash, e.offer(p)); !errors.Is(err, store.ErrNotFound) || errors.Is(err, swarm.ErrLie) {
			t.Fatalf("err = %v, want a miss", err)
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
	if _, err := e.v.Accept(context.Background(), p.hash, e.offer(p, e.trusted)); err != nil {
		t.Error(err)
	}
	if s := e.v.Stats(); s.UpstreamErrors != 3 || s.Rejected != 3 || s.VerifiedBySignature != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A caller that gives up while the upstream is asked gets its context's
// error: neither a lie nor a miss, and not counted against the upstream.
func TestVerifierCanceledCaller(t *testing.T) {
	e := newVerifierEnv(t, nil)
	e.up.delay = 200 * time.Millisecond
	p := newPath("hello", narContent(10))
	e.publish(p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := e.v.Accept(ctx, p.hash, e.offer(p))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, swarm.ErrLie) || errors.Is(err, store.ErrNotFound) {
		t.Errorf("err = %v, want DeadlineExceeded alone", err)
	}
	if s := e.v.Stats(); s.UpstreamErrors != 0 || s.Rejected != 0 {
		t.Errorf("stats %+v", s)
	}
	if h := e.v.Health(); !h.Reachable || h.ConsecutiveFailures != 0 {
		t.Errorf("health %+v after a caller gave up", h)
	}
	// The upstream's answer still arrives for the next caller.
	if _, err := e.v.Accept(context.Background(), p.hash, e.offer(p)); err != nil {
		t.Errorf("after a canceled caller: %v", err)
	}
}

func TestVerifierNoVerify(t *testing.T) {
	var logs logBuffer
	up := newUpstream(t)
	v, err := NewVerifier(VerifierOptions{NoVerify: true, Upstream: up.URL, Log: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !strings.Contains(logs.String(), "VERIFICATION OFF") || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("no loud warning:\n%s", logs.String())
	}
	// Unsigned, unknown upstream: accepted as it is, without asking.
	p := newPath("hello", narContent(10))
	in := p.narInfo(lanPrefix)
	in.Deriver = hashOf("d") + "-hello.drv"
	ni, err := v.Accept(context.Background(), p.hash, in)
	if err != nil || ni != in {
		t.Errorf("NoVerify: %v, %v; want the narinfo as it is", ni, err)
	}
	if up.gets.Load() != 0 {
		t.Errorf("NoVerify asked the upstream %d times", up.gets.Load())
	}
	// A narinfo for another path is still no narinfo for this one.
	if _, err := v.Accept(context.Background(), p.hash, newPath("other", nil).narInfo(lanPrefix)); !errors.Is(err, swarm.ErrLie) {
		t.Errorf("NoVerify, another path: %v, want ErrLie", err)
	}
}

func TestVerifierBadKeys(t *testing.T) {
	if _, err := NewVerifier(VerifierOptions{TrustedPublicKeys: []string{"nope"}}); err == nil {
		t.Error("malformed trusted key accepted")
	}
}
