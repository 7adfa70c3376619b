package trust

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/peerix/peerix/internal/signing"
	"github.com/peerix/peerix/internal/store"
)

// hashOf makes a valid store hash part from a seed.
func hashOf(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return nixbase32.EncodeToString(sum[:20])
}

// spath is a store path with its NAR content.
type spath struct {
	hash, name string
	nar        []byte
	refs       []string
}

func newPath(name string, nar []byte, refs ...string) *spath {
	return &spath{hash: hashOf(name), name: name, nar: nar, refs: refs}
}

func (p *spath) storePath() string { return "/nix/store/" + p.hash + "-" + p.name }

func (p *spath) narHash() *nixhash.HashWithEncoding {
	sum := sha256.Sum256(p.nar)
	return nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true)
}

// narInfo renders the path's narinfo with the NAR at urlPrefix, signed by
// keys.
func (p *spath) narInfo(urlPrefix string, keys ...signature.SecretKey) *narinfo.NarInfo {
	h := p.narHash()
	ni := &narinfo.NarInfo{
		StorePath:   p.storePath(),
		URL:         urlPrefix + p.hash + "-" + h.Format(nixhash.NixBase32, false) + ".nar",
		Compression: "none",
		FileHash:    h,
		FileSize:    uint64(len(p.nar)),
		NarHash:     h,
		NarSize:     uint64(len(p.nar)),
		References:  p.refs,
	}
	for _, k := range keys {
		if err := signing.Sign(ni, k); err != nil {
			panic(err)
		}
	}
	return ni
}

func genKey(t testing.TB, name string) (signature.SecretKey, string) {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return sk, pk.String()
}

// fakeStore is a store.Store over fixed narinfos and NAR contents.
type fakeStore struct {
	mu    sync.Mutex
	infos map[string]*narinfo.NarInfo // by hash
	nars  map[string][]byte           // by URL
}

func newFakeStore() *fakeStore {
	return &fakeStore{infos: map[string]*narinfo.NarInfo{}, nars: map[string][]byte{}}
}

// add stores ni, with nar as what its URL streams.
func (s *fakeStore) add(ni *narinfo.NarInfo, nar []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.infos[hashOfStorePath(ni.StorePath)] = ni
	s.nars[ni.URL] = nar
}

func (s *fakeStore) NarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ni, ok := s.infos[hash]
	if !ok {
		return nil, fmt.Errorf("%s: %w", hash, store.ErrNotFound)
	}
	return ni, nil
}

func (s *fakeStore) NAR(ctx context.Context, url string, offset int64) (*store.NAR, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.nars[url]
	if !ok {
		return nil, fmt.Errorf("%s: %w", url, store.ErrNotFound)
	}
	if offset > int64(len(data)) {
		return nil, store.ErrOffset
	}
	return &store.NAR{Size: int64(len(data)), ReadCloser: io.NopCloser(bytes.NewReader(data[offset:]))}, nil
}

// upstream is an httptest binary cache whose answers tests set per hash.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	status   map[string]int    // by hash; default defStatus
	bodies   map[string][]byte // narinfo bodies for GET
	def      int
	delay    time.Duration
	heads    atomic.Int64
	gets     atomic.Int64
	inflight atomic.Int64
	maxIn    atomic.Int64
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{status: map[string]int{}, bodies: map[string][]byte{}, def: http.StatusNotFound}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	n := u.inflight.Add(1)
	defer u.inflight.Add(-1)
	for {
		m := u.maxIn.Load()
		if n <= m || u.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	if r.Method == http.MethodHead {
		u.heads.Add(1)
	} else {
		u.gets.Add(1)
	}
	u.mu.Lock()
	delay := u.delay
	hash, _ := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".narinfo")
	status, ok := u.status[hash]
	if !ok {
		status = u.def
	}
	body := u.bodies[hash]
	u.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if status == http.StatusOK && body != nil {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			w.Write(body)
		}
		return
	}
	w.WriteHeader(status)
}

// requests counts the requests the upstream got, HEAD or GET.
func (u *upstream) requests() int64 { return u.heads.Load() + u.gets.Load() }

// has makes the upstream serve p's narinfo: the same build as the local one.
func (u *upstream) has(p *spath) { u.publish(p.narInfo(localPrefix)) }

func (u *upstream) set(hash string, status int) {
	u.mu.Lock()
	u.status[hash] = status
	u.mu.Unlock()
}

// publish makes the upstream serve ni.
func (u *upstream) publish(ni *narinfo.NarInfo) {
	u.mu.Lock()
	h := hashOfStorePath(ni.StorePath)
	u.status[h] = http.StatusOK
	u.bodies[h] = []byte(ni.String())
	u.mu.Unlock()
}

// inProcess is a client that hands requests straight to u's handler,
// without a socket: a synctest bubble cannot wait on network I/O, so tests
// in a bubble make the upstream outside it and reach it through this.
func (u *upstream) inProcess() *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		w := httptest.NewRecorder()
		u.serve(w, r)
		res := w.Result()
		res.Request = r
		return res, nil
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(b *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
