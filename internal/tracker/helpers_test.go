package tracker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	api "github.com/peerix/peerix/internal/tracker/trackerapi"
)

// fakeClock is a settable clock, for ServerOptions.Now. Not synctest: the
// server tests also run on PostgreSQL over a real socket, which a bubble
// cannot wait on, and a fuzz target's one server outlives every bubble.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func openTestDB(t testing.TB) *SQLite {
	t.Helper()
	db, err := OpenSQLite(filepath.Join(t.TempDir(), "tracker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// newTestServer is a Server over a fresh database of backend b with a
// fake clock at t0.
func newTestServer(t testing.TB, b backend, ttl time.Duration) (*Server, Registry, *fakeClock) {
	t.Helper()
	db := b.open(t)
	clock := &fakeClock{t: t0}
	s := NewServer(db, ServerOptions{
		TTL:    ttl,
		Now:    clock.Now,
		Log:    quietLog(),
		Limits: NoLimits(),
		Relay: func(string) *api.PeerAddrs {
			return &api.PeerAddrs{PeerID: "12D3KooWRelay", Addrs: []string{"/ip4/192.0.2.1/tcp/12306"}}
		},
	})
	return s, db, clock
}

// signer is a test peer identity.
type signer struct {
	key crypto.PrivKey
	id  peer.ID
}

func newSigner(t testing.TB) signer {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return signer{k, id}
}

// sign returns a placeholder for s's signature over body: serve signs
// (scheme v2) for the request's method and route and the serving
// tracker's ID, over body as it was here (a test may change the body
// sent afterwards).
func (s signer) sign(t testing.TB, body []byte) string {
	t.Helper()
	pendingMu.Lock()
	defer pendingMu.Unlock()
	pendingN++
	key := fmt.Sprintf("%s%d", pendingPrefix, pendingN)
	pending[key] = pendingSig{s, slices.Clone(body)}
	return key
}

// signV2 is s's signature over method, route, trackerID and body, as
// the header value.
func (s signer) signV2(t testing.TB, method, route, trackerID string, body []byte) string {
	t.Helper()
	sig, err := s.key.Sign(api.SignedMessage(method, route, trackerID, body))
	if err != nil {
		t.Fatal(err)
	}
	return api.SignatureValue(sig)
}

// signV1 is the retired scheme: base64 of a signature over the body alone.
func (s signer) signV1(t testing.TB, body []byte) string {
	t.Helper()
	sig, err := s.key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

type pendingSig struct {
	s    signer
	body []byte
}

const pendingPrefix = "sign-in-serve:"

var (
	pendingMu sync.Mutex
	pendingN  int
	pending   = map[string]pendingSig{}
)

// request builds a request with the signature header sig ("" = unsigned;
// a placeholder from sign is signed in serve).
func request(method, path string, body []byte, sig string) *http.Request {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.RemoteAddr = "198.51.100.7:40000"
	if sig != "" {
		r.Header.Set(SignatureHeader, sig)
	}
	return r
}

func (s signer) request(t testing.TB, method, path string, body []byte) *http.Request {
	return request(method, path, body, s.sign(t, body))
}

// serve runs r through h, first signing a placeholder signature for the
// tracker h is.
func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	if v := r.Header.Get(SignatureHeader); strings.HasPrefix(v, pendingPrefix) {
		pendingMu.Lock()
		p := pending[v]
		delete(pending, v)
		pendingMu.Unlock()
		sig, err := p.s.key.Sign(api.SignedMessage(r.Method, r.URL.Path, trackerIDOf(h), p.body))
		if err != nil {
			panic(err)
		}
		r.Header.Set(SignatureHeader, api.SignatureValue(sig))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// trackerIDOf asks h's /v1/info for its tracker ID.
func trackerIDOf(h http.Handler) string {
	if s, ok := h.(*Server); ok {
		return s.id
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/v1/info", nil)
	r.RemoteAddr = "127.0.0.1:1"
	h.ServeHTTP(w, r)
	var ans api.InfoAnswer
	json.Unmarshal(w.Body.Bytes(), &ans)
	return ans.TrackerID
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// announce announces s at the clock's time + dt ms and fails the test on
// anything but 200.
func (s signer) announce(t testing.TB, h http.Handler, ts int64, addrs ...string) api.AnnounceAnswer {
	t.Helper()
	if addrs == nil {
		addrs = []string{"/ip4/198.51.100.7/udp/12306/quic-v1"}
	}
	body := mustJSON(t, map[string]any{"peer_id": s.id.String(), "ts": ts, "addrs": addrs})
	w := serve(h, s.request(t, "POST", "/v1/announce", body))
	if w.Code != 200 {
		t.Fatalf("announce: %d %s", w.Code, w.Body)
	}
	var ans api.AnnounceAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

func (s signer) packages(t testing.TB, h http.Handler, ts int64, full bool, add, remove []string) api.PackagesAnswer {
	t.Helper()
	m := map[string]any{"peer_id": s.id.String(), "ts": ts, "full": full, "add": add}
	if remove != nil {
		m["remove"] = remove
	}
	w := serve(h, s.request(t, "POST", "/v1/packages", mustJSON(t, m)))
	if w.Code != 200 {
		t.Fatalf("packages: %d %s", w.Code, w.Body)
	}
	var ans api.PackagesAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

func findIDs(t testing.TB, h http.Handler, hash string) []string {
	t.Helper()
	w := serve(h, request("GET", "/v1/find/"+hash, nil, ""))
	if w.Code != 200 {
		t.Fatalf("find: %d %s", w.Code, w.Body)
	}
	var ans api.PeersAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, p := range ans.Peers {
		ids = append(ids, p.PeerID)
	}
	return ids
}

func peerIDs(t testing.TB, h http.Handler) []string {
	t.Helper()
	w := serve(h, request("GET", "/v1/peers", nil, ""))
	if w.Code != 200 {
		t.Fatalf("peers: %d %s", w.Code, w.Body)
	}
	var ans api.PeersAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, p := range ans.Peers {
		ids = append(ids, p.PeerID)
	}
	return ids
}

// hashN is a deterministic valid hash part.
func hashN(n int) string {
	var b [20]byte
	copy(b[:], fmt.Sprintf("%020d", n))
	return nixbase32.EncodeToString(b[:])
}

func hashes(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = hashN(from + i)
	}
	return out
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// Names the tests use from the API package.
const (
	SignatureHeader     = api.SignatureHeader
	MaxBodySize         = api.MaxBodySize
	MaxClockSkew        = api.MaxClockSkew
	MaxAddrs            = api.MaxAddrs
	MaxHashesPerRequest = api.MaxHashesPerRequest
	DefaultFindLimit    = api.DefaultFindLimit
	MaxFindLimit        = api.MaxFindLimit
	CodeBadRequest      = api.CodeBadRequest
	CodeClockSkew       = api.CodeClockSkew
	CodeBadSig          = api.CodeBadSig
	CodeOldSignature    = api.CodeOldSignature
	CodeForbidden       = api.CodeForbidden
	CodeQuota           = api.CodeQuota
	CodeUnknownPeer     = api.CodeUnknownPeer
	CodeReplay          = api.CodeReplay
	CodeTooLarge        = api.CodeTooLarge
	CodeRateLimited     = api.CodeRateLimited
	CodeUnavailable     = api.CodeUnavailable
)

type (
	Client    = api.Client
	PeerInfo  = api.PeerInfo
	PeerAddrs = api.PeerAddrs
	Error     = api.Error
)

var (
	NewClient    = api.NewClient
	CircuitAddrs = api.CircuitAddrs
)

// Registry calls in the shape the tests used before announcements and
// packages requests carried quotas.

func upsert(ctx context.Context, reg Registry, id string, addrs []string, ts int64, now, liveSince time.Time) (bool, error) {
	return reg.UpsertPeer(ctx, Announce{PeerID: id, Addrs: addrs, Net: "198.51.100.0/24", TS: ts, Now: now, LiveSince: liveSince})
}

func setPackages(ctx context.Context, reg Registry, id string, ts int64, liveSince time.Time, full bool, add, remove []string) (int64, error) {
	return reg.SetPackages(ctx, PackagesUpdate{PeerID: id, TS: ts, LiveSince: liveSince, Full: full, Add: add, Remove: remove})
}

// liveHolders is the live peers among the first max holders of hash, as
// a find without cached candidates or standings reads them.
func liveHolders(ctx context.Context, reg Registry, hash string, liveSince time.Time, max int) ([]Holder, error) {
	keys, err := reg.HolderKeys(ctx, hash, max)
	if err != nil {
		return nil, err
	}
	return new(descCache).holders(ctx, reg, keys, liveSince, liveSince)
}

// findAll is the live holders of hash among its first limit, described.
func findAll(ctx context.Context, reg Registry, hash string, liveSince time.Time, limit int) ([]PeerInfo, error) {
	hs, err := liveHolders(ctx, reg, hash, liveSince, limit)
	if err != nil {
		return nil, err
	}
	keys := make([]int64, len(hs))
	for i, h := range hs {
		keys[i] = h.Key
	}
	ds, err := reg.Describe(ctx, keys, liveSince)
	out := make([]PeerInfo, len(ds))
	for i, d := range ds {
		out[i] = d.PeerInfo
	}
	return out, err
}

// allPeers is every live peer.
func allPeers(ctx context.Context, reg Registry, liveSince time.Time) ([]PeerInfo, error) {
	return reg.Peers(ctx, liveSince, "", 1<<30)
}

// announceFrom and packagesFrom are announce and a full set sent from the
// address from ("ip:port").
func (s signer) announceFrom(t testing.TB, h http.Handler, ts int64, from string, addrs ...string) api.AnnounceAnswer {
	t.Helper()
	if addrs == nil {
		addrs = []string{"/ip4/198.51.100.7/udp/12306/quic-v1"}
	}
	r := s.request(t, "POST", "/v1/announce", mustJSON(t, map[string]any{"peer_id": s.id.String(), "ts": ts, "addrs": addrs}))
	r.RemoteAddr = from
	w := serve(h, r)
	if w.Code != 200 {
		t.Fatalf("announce from %s: %d %s", from, w.Code, w.Body)
	}
	var ans api.AnnounceAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

func (s signer) packagesFrom(t testing.TB, h http.Handler, ts int64, from string, add []string) {
	t.Helper()
	r := s.request(t, "POST", "/v1/packages", mustJSON(t, map[string]any{"peer_id": s.id.String(), "ts": ts, "full": true, "add": add}))
	r.RemoteAddr = from
	if w := serve(h, r); w.Code != 200 {
		t.Fatalf("packages from %s: %d %s", from, w.Code, w.Body)
	}
}

// httptestServer serves h over HTTP for the test and returns its URL.
func httptestServer(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// serveFind finds h through s's handler, up to 1,000 holders, and returns
// the peers listed.
func serveFind(t *testing.T, s *Server, h string) []api.PeerInfo {
	t.Helper()
	w := serve(s, request("GET", "/v1/find/"+h+"?limit=1000", nil, ""))
	if w.Code != 200 {
		t.Fatalf("find: %d %s", w.Code, w.Body)
	}
	var ans api.PeersAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	return ans.Peers
}
