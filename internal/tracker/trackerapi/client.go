package trackerapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
)

// RequestTimeout bounds every request a Client makes.
const RequestTimeout = 10 * time.Second

// maxAnswer bounds how much of an answer the client reads.
const maxAnswer = 32 << 20

// maxPeersPages bounds how many pages Client.Peers follows.
const maxPeersPages = 1000

// Client talks to a tracker for one peer. It is safe for concurrent use;
// signed writes are sent one at a time, each with a ts greater than the
// last, so concurrent writes never look like replays to the tracker.
type Client struct {
	base  string
	key   crypto.PrivKey
	id    peer.ID
	idErr error
	http  *http.Client
	now   func() time.Time // tests skew it: a synctest bubble would give the tracker the same clock

	mu        sync.Mutex // serialises signed writes; guards lastTS, offset and trackerID
	lastTS    int64
	offset    time.Duration // the tracker's clock minus ours, learnt from a clock_skew answer
	trackerID string        // what writes are signed for, from /v1/info or a refusal
}

// NewClient returns a client of the tracker at baseURL (http or https, with
// or without a trailing slash) that signs its writes with key, the peer's
// libp2p identity (nil: a client that only reads).
func NewClient(baseURL string, key crypto.PrivKey) *Client {
	c := &Client{
		base: strings.TrimRight(baseURL, "/"),
		key:  key,
		http: &http.Client{Timeout: RequestTimeout},
		now:  time.Now,
	}
	if key == nil {
		c.idErr = errors.New("tracker client: no identity key")
	} else {
		c.id, c.idErr = peer.IDFromPrivateKey(key)
	}
	return c
}

// ID is the peer ID the client speaks for.
func (c *Client) ID() peer.ID { return c.id }

// Error is a refusal by the tracker (an HTTP status other than 200).
type Error struct {
	Status  int
	Code    string // one of the Code* constants, "" if the answer had none
	Message string
	LastTS  int64 // with CodeReplay
	NowMS   int64 // with CodeClockSkew
	// TrackerID with CodeBadSig and CodeOldSignature.
	TrackerID string
	// Limit with CodeQuota.
	Limit int64
	// RetryAfter with CodeRateLimited and CodeUnavailable (from the
	// Retry-After header or retry_after_ms); 0 if not told.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("tracker: HTTP %d", e.Status)
	}
	return fmt.Sprintf("tracker: HTTP %d: %s", e.Status, e.Message)
}

// HTTPStatus is the refusal's status (summary.HTTPStatus reads it).
func (e *Error) HTTPStatus() int { return e.Status }

// Is matches ErrUnknownPeer and ErrReplay by code.
func (e *Error) Is(target error) bool {
	return (target == ErrUnknownPeer && e.Code == CodeUnknownPeer) ||
		(target == ErrReplay && e.Code == CodeReplay)
}

// ErrUnknownPeer: a write that needs a registered, live peer came from one
// that is not (never announced, expired or deregistered).
var ErrUnknownPeer = errors.New("unknown peer: announce first")

// ErrReplay is what a replay refusal matches with errors.Is.
var ErrReplay = errors.New("replayed or out-of-order ts")

// Info asks for the tracker's ID, relay, TTL and the address it sees us at.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var ans InfoAnswer
	if err := c.get(ctx, "/v1/info", &ans); err != nil {
		return nil, err
	}
	info := &Info{TrackerID: ans.TrackerID, ObservedAddr: ans.ObservedAddr, TTL: seconds(ans.TTLSeconds)}
	if ans.Relay != nil {
		info.Relay = *ans.Relay
	}
	if ans.TrackerID != "" {
		c.mu.Lock()
		if c.trackerID == "" {
			c.trackerID = ans.TrackerID
		}
		c.mu.Unlock()
	}
	return info, nil
}

// Announce registers the peer with addrs or refreshes it: the heartbeat.
// Send it every TTL/3 or so.
func (c *Client) Announce(ctx context.Context, addrs []ma.Multiaddr) (*AnnounceResult, error) {
	req := AnnounceRequest{Addrs: make([]string, 0, len(addrs))}
	for _, a := range addrs {
		req.Addrs = append(req.Addrs, a.String())
	}
	var ans AnnounceAnswer
	if err := c.signed(ctx, http.MethodPost, "/v1/announce", &req, &req.PeerID, &req.TS, &ans); err != nil {
		return nil, err
	}
	return &AnnounceResult{ObservedAddr: ans.ObservedAddr, TTL: seconds(ans.TTLSeconds), Registered: ans.Registered, Addrs: ans.Addrs}, nil
}

// Packages sends the peer's hashes: with full, add is the whole set (remove
// is ignored); else a delta that removes remove, then adds add. Sets larger
// than MaxHashesPerRequest go in parts: for a full set the first part is
// full and the rest are deltas adding the remainder. An error wrapping
// ErrUnknownPeer means the tracker does not know the peer: announce, then
// send the full set. An *Error with CodeQuota means the tracker holds at
// most Limit hashes for one peer (or for its network).
func (c *Client) Packages(ctx context.Context, full bool, add, remove []string) error {
	for _, list := range [][]string{add, remove} {
		for _, h := range list {
			if !store.ValidHash(h) {
				return fmt.Errorf("tracker: invalid hash %q", h)
			}
		}
	}
	if full {
		remove = nil
	}
	first := true
	for first || len(add) > 0 || len(remove) > 0 {
		req := PackagesRequest{Full: full && first, Add: []string{}, Remove: []string{}}
		room := MaxHashesPerRequest
		n := min(room, len(remove))
		req.Remove, remove = remove[:n], remove[n:]
		room -= n
		n = min(room, len(add))
		req.Add, add = add[:n], add[n:]
		if err := c.signed(ctx, http.MethodPost, "/v1/packages", &req, &req.PeerID, &req.TS, &PackagesAnswer{}); err != nil {
			return err
		}
		first = false
	}
	return nil
}

// Find asks which live peers hold the store path with hash part hash: at
// most DefaultFindLimit, chosen by the tracker so that no one source
// network can crowd out the others (docs/protocol.md).
func (c *Client) Find(ctx context.Context, hash string) ([]PeerInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("tracker: invalid hash %q", hash)
	}
	var ans PeersAnswer
	if err := c.get(ctx, "/v1/find/"+hash, &ans); err != nil {
		return nil, err
	}
	return ans.Peers, nil
}

// PeersPage lists up to limit live peers (0: the tracker's default) whose
// IDs sort after after ("": from the first), in peer ID order, and the ID
// to pass as after for the next page ("" on the last).
func (c *Client) PeersPage(ctx context.Context, after string, limit int) ([]PeerInfo, string, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := "/v1/peers"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var ans PeersAnswer
	if err := c.get(ctx, path, &ans); err != nil {
		return nil, "", err
	}
	return ans.Peers, ans.Next, nil
}

// Peers lists all live peers, following the pages of /v1/peers.
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var all []PeerInfo
	after := ""
	for range maxPeersPages {
		page, next, err := c.PeersPage(ctx, after, MaxPeersLimit)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" || next == after {
			break
		}
		after = next
	}
	if all == nil {
		all = []PeerInfo{}
	}
	return all, nil
}

// Deregister removes the peer and its hashes from the tracker at once (on
// shutdown).
func (c *Client) Deregister(ctx context.Context) error {
	var req DeleteRequest
	return c.signed(ctx, http.MethodDelete, "/v1/peers/"+url.PathEscape(c.id.String()), &req, &req.PeerID, &req.TS, &DeleteAnswer{})
}

func (c *Client) get(ctx context.Context, path string, ans any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	return c.do(req, ans)
}

// trackerIDFor returns the ID writes are signed for, asking /v1/info the
// first time. c.mu is held.
func (c *Client) trackerIDFor(ctx context.Context) (string, error) {
	if c.trackerID != "" {
		return c.trackerID, nil
	}
	var ans InfoAnswer
	if err := c.get(ctx, "/v1/info", &ans); err != nil {
		return "", err
	}
	if ans.TrackerID == "" {
		return "", fmt.Errorf("tracker at %s names no tracker_id in /v1/info: it is older than this peerix and takes no v2 signatures; upgrade it", c.base)
	}
	c.trackerID = ans.TrackerID
	return c.trackerID, nil
}

// signed sends body, a request struct whose peer_id and ts fields peerID
// and ts point to, signed (scheme v2, SignedMessage) for method and route.
// A replay, clock-skew or wrong-tracker refusal is retried once with what
// the answer taught (another process with the same key, a clock that
// stepped back or is off, a tracker whose database was replaced).
func (c *Client) signed(ctx context.Context, method, route string, body any, peerID *string, ts *int64, ans any) error {
	if c.idErr != nil {
		return c.idErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	*peerID = c.id.String()
	for attempt := 0; ; attempt++ {
		trackerID, err := c.trackerIDFor(ctx)
		if err != nil {
			return err
		}
		now := c.now().Add(c.offset).UnixMilli()
		*ts = max(now, c.lastTS+1)
		c.lastTS = *ts
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("tracker: %w", err)
		}
		sig, err := c.key.Sign(SignedMessage(method, route, trackerID, b))
		if err != nil {
			return fmt.Errorf("tracker: signing: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.base+route, bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("tracker: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SignatureHeader, SignatureValue(sig))
		err = c.do(req, ans)
		var e *Error
		if attempt > 0 || !errors.As(err, &e) {
			return err
		}
		switch {
		case e.Code == CodeReplay && e.LastTS > 0:
			c.lastTS = max(c.lastTS, e.LastTS)
		case e.Code == CodeClockSkew && e.NowMS > 0:
			c.offset = time.UnixMilli(e.NowMS).Sub(c.now())
		case e.Code == CodeBadSig && e.TrackerID != "" && e.TrackerID != trackerID:
			c.trackerID = e.TrackerID
		default:
			return err
		}
	}
}

func (c *Client) do(req *http.Request, ans any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readError(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("tracker: %s %s: reading answer: %w", req.Method, req.URL.Path, err)
	}
	if err := json.Unmarshal(body, ans); err != nil {
		return fmt.Errorf("tracker: %s %s: malformed answer: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// readError turns a refusal into an *Error.
func readError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ej ErrorAnswer
	if json.Unmarshal(body, &ej) == nil {
		e.Code, e.Message, e.LastTS, e.NowMS = ej.Code, ej.Error, ej.LastTS, ej.NowMS
		e.TrackerID, e.Limit = ej.TrackerID, ej.Limit
		e.RetryAfter = time.Duration(ej.RetryAfterMS) * time.Millisecond
	} else {
		e.Message = strings.TrimSpace(string(body[:min(len(body), 200)]))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && e.RetryAfter == 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}

// Index asks the tracker for its hash index: the whole filter (epoch 0 and
// have false), or what was added since generation gen of epoch, waiting up
// to wait for something to be added. An answer of another epoch is a whole
// filter. A tracker that offers no index answers an *Error with Status 503
// (CodeUnavailable) or 404 (an older tracker).
func (c *Client) Index(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*summary.Update, error) {
	u := c.base + "/v1/index"
	sep := "?"
	if have {
		u += fmt.Sprintf("?epoch=%016x&gen=%d", epoch, gen)
		sep = "&"
	}
	if wait > 0 {
		u += sep + "wait=" + strconv.FormatInt(wait.Milliseconds(), 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	// The client's own timeout would cut long polls and large filters.
	hc := &http.Client{Transport: c.http.Transport, Timeout: wait + indexFetchTimeout}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readError(resp)
	}
	up, err := summary.ReadUpdate(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("tracker: GET /v1/index: %w", err)
	}
	return up, nil
}

// indexFetchTimeout bounds an index request beyond its wait: time enough
// for a whole filter (30 MiB at 1 MiB/s).
const indexFetchTimeout = time.Minute

// SetClock replaces the clock the client takes its ts from (time.Now):
// for tests, and for a machine whose clock is known to be off.
func (c *Client) SetClock(now func() time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}
