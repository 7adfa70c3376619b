package tracker

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nix-community/go-nix/pkg/nixbase32"
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
		TTL: ttl,
		Now: clock.Now,
		Log: quietLog(),
		Relay: func(string) *PeerAddrs {
			return &PeerAddrs{PeerID: "12D3KooWRelay", Addrs: []string{"/ip4/192.0.2.1/tcp/12306"}}
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

func (s signer) sign(t testing.TB, body []byte) string {
	t.Helper()
	sig, err := s.key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// request builds a request with body signed by s (sig "" = unsigned).
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

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
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
func (s signer) announce(t testing.TB, h http.Handler, ts int64, addrs ...string) announceJSON {
	t.Helper()
	if addrs == nil {
		addrs = []string{"/ip4/198.51.100.7/udp/12306/quic-v1"}
	}
	body := mustJSON(t, map[string]any{"peer_id": s.id.String(), "ts": ts, "addrs": addrs})
	w := serve(h, s.request(t, "POST", "/v1/announce", body))
	if w.Code != 200 {
		t.Fatalf("announce: %d %s", w.Code, w.Body)
	}
	var ans announceJSON
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

func (s signer) packages(t testing.TB, h http.Handler, ts int64, full bool, add, remove []string) packagesJSON {
	t.Helper()
	m := map[string]any{"peer_id": s.id.String(), "ts": ts, "full": full, "add": add}
	if remove != nil {
		m["remove"] = remove
	}
	w := serve(h, s.request(t, "POST", "/v1/packages", mustJSON(t, m)))
	if w.Code != 200 {
		t.Fatalf("packages: %d %s", w.Code, w.Body)
	}
	var ans packagesJSON
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
	var ans peersJSON
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
	var ans peersJSON
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
