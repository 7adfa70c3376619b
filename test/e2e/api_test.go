package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The HTTP APIs the P2P tests read: the tracker's /v1, written down from
// docs/protocol.md (independently of internal/tracker), and a daemon's
// /api/status and /api/peers. The peerix processes serving them are
// started with startPeerix (trackerServer, p2pDaemon).

// trackerPeer is one entry of /v1/peers and /v1/find.
type trackerPeer struct {
	PeerID   string    `json:"peer_id"`
	Addrs    []string  `json:"addrs"`
	LastSeen time.Time `json:"last_seen"`
	Packages int       `json:"packages"`
}

type trackerPeers struct {
	Peers []trackerPeer `json:"peers"`
}

type trackerInfo struct {
	OK    bool `json:"ok"`
	Relay *struct {
		PeerID string   `json:"peer_id"`
		Addrs  []string `json:"addrs"`
	} `json:"relay"`
	ObservedAddr string  `json:"observed_addr"`
	TTLSeconds   float64 `json:"ttl_s"`
}

// getJSON GETs url with c (bounded) and decodes a 200 answer's body into v.
func getJSON(c *http.Client, url string, v any) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, body, err := doRequest(ctx, c, http.MethodGet, url)
	if err != nil {
		return 0, body, err
	}
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, body, fmt.Errorf("GET %s: %w: %.300s", url, err, body)
		}
	}
	return resp.StatusCode, body, nil
}

// peers returns GET /v1/peers.
func (tr *peerixProc) peers() ([]trackerPeer, error) {
	var ans trackerPeers
	code, body, err := getJSON(tr.client, tr.url+"/v1/peers", &ans)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /v1/peers: HTTP %d: %.300s", code, body)
	}
	if err == nil && ans.Peers == nil {
		err = fmt.Errorf("GET /v1/peers: no peers list (want [] when empty): %.300s", body)
	}
	return ans.Peers, err
}

// find returns GET /v1/find/<hash>.
func (tr *peerixProc) find(hash string) ([]trackerPeer, error) {
	var ans trackerPeers
	code, body, err := getJSON(tr.client, tr.url+"/v1/find/"+hash, &ans)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /v1/find/%s: HTTP %d: %.300s", hash, code, body)
	}
	if err == nil && ans.Peers == nil {
		err = fmt.Errorf("GET /v1/find/%s: no peers list (want [] when empty): %.300s", hash, body)
	}
	return ans.Peers, err
}

// mustPeers and mustFind fail the test on an error.
func (tr *peerixProc) mustPeers(t testing.TB) []trackerPeer {
	t.Helper()
	ps, err := tr.peers()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func (tr *peerixProc) mustFind(t testing.TB, hash string) []trackerPeer {
	t.Helper()
	ps, err := tr.find(hash)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// ids lists the peer IDs, sorted.
func ids(ps []trackerPeer) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.PeerID)
	}
	slices.Sort(out)
	return out
}

func peerByID(ps []trackerPeer, id string) (trackerPeer, bool) {
	for _, p := range ps {
		if p.PeerID == id {
			return p, true
		}
	}
	return trackerPeer{}, false
}

// sortedCopy returns s sorted, leaving s alone.
func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// --- signed tracker writes, from docs/protocol.md ------------------------------

const signatureHeader = "X-Peerix-Signature"

// newPeerKey makes a libp2p ed25519 identity and returns it with its peer ID.
func newPeerKey(t *testing.T) (crypto.PrivKey, string) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id.String()
}

// sign is the X-Peerix-Signature value for body: standard padded base64 of
// the libp2p signature over the exact bytes.
func sign(t *testing.T, key crypto.PrivKey, body []byte) string {
	t.Helper()
	sig, err := key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// trackerAnswer is a tracker's answer to a write.
type trackerAnswer struct {
	status int
	body   []byte
	// From the JSON body, if any.
	OK     bool   `json:"ok"`
	Code   string `json:"code"`
	Error  string `json:"error"`
	LastTS int64  `json:"last_ts"`
}

// write sends one write request with the given signature header value
// (none if sig is "").
func (tr *peerixProc) write(t *testing.T, method, route string, body []byte, sig string) trackerAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, tr.url+route, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(signatureHeader, sig)
	}
	resp, err := tr.client.Do(req)
	if err != nil {
		// A server may answer an oversized body early and close; that is
		// still an answer if we got a response, which we did not here.
		t.Fatalf("%s %s: %v", method, route, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a := trackerAnswer{status: resp.StatusCode, body: b}
	_ = json.Unmarshal(b, &a)
	return a
}

// jsonBody marshals v.
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// apiStatus is the part of /api/status the tests read.
type apiStatus struct {
	PeerID  string `json:"peer_id"`
	Mode    string `json:"mode"`
	Version string `json:"version"`
	Tracker string `json:"tracker"`
}

// apiPeer is one entry of /api/peers.
type apiPeer struct {
	PeerID    string   `json:"peer_id"`
	Addrs     []string `json:"addrs"`
	Source    string   `json:"source"`
	Connected bool     `json:"connected"`
	Direct    bool     `json:"direct"`
	Relayed   bool     `json:"relayed"`
	// Reputation is what the daemon's record says about the peer.
	Reputation *apiReputation `json:"reputation"`
}

// apiReputation is the part of a peer's reputation in /api/peers the
// tests read.
type apiReputation struct {
	Successes    int       `json:"successes"`
	Failures     int       `json:"failures"`
	BackoffUntil time.Time `json:"backoff_until"`
	LastFailure  string    `json:"last_failure"`
	Lies         int       `json:"lies"`
}

// apiPeers reads /api/peers.
func (d *peerixProc) apiPeers(t testing.TB) []apiPeer {
	t.Helper()
	var ps []apiPeer
	code, body, err := getJSON(d.client, d.url+"/api/peers", &ps)
	if err != nil || code != http.StatusOK {
		t.Errorf("GET /api/peers of %s: HTTP %d, %v: %.300s", d.label, code, err, body)
		return nil
	}
	return ps
}
