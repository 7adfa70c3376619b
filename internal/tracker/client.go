package tracker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/peerix/peerix/internal/store"
)

// RequestTimeout bounds every request a Client makes.
const RequestTimeout = 10 * time.Second

// maxAnswer bounds how much of an answer the client reads.
const maxAnswer = 32 << 20

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

	mu     sync.Mutex // serialises signed writes; guards lastTS and offset
	lastTS int64
	offset time.Duration // the tracker's clock minus ours, learnt from a clock_skew answer
}

// NewClient returns a client of the tracker at baseURL (http or https, with
// or without a trailing slash) that signs its writes with key, the peer's
// libp2p identity.
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

// Info asks for the tracker's relay, TTL and the address it sees us at.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var ans infoJSON
	if err := c.get(ctx, "/v1/info", &ans); err != nil {
		return nil, err
	}
	info := &Info{ObservedAddr: ans.ObservedAddr, TTL: seconds(ans.TTLSeconds)}
	if ans.Relay != nil {
		info.Relay = *ans.Relay
	}
	return info, nil
}

// Announce registers the peer with addrs or refreshes it: the heartbeat.
// Send it every TTL/3 or so.
func (c *Client) Announce(ctx context.Context, addrs []ma.Multiaddr) (*AnnounceResult, error) {
	req := announceRequest{Addrs: make([]string, 0, len(addrs))}
	for _, a := range addrs {
		req.Addrs = append(req.Addrs, a.String())
	}
	var ans announceJSON
	if err := c.signed(ctx, http.MethodPost, "/v1/announce", &req, &req.PeerID, &req.TS, &ans); err != nil {
		return nil, err
	}
	return &AnnounceResult{ObservedAddr: ans.ObservedAddr, TTL: seconds(ans.TTLSeconds), Registered: ans.Registered}, nil
}

// Packages sends the peer's hashes: with full, add is the whole set (remove
// is ignored); else a delta that removes remove, then adds add. Sets larger
// than MaxHashesPerRequest go in parts: for a full set the first part is
// full and the rest are deltas adding the remainder. An error wrapping
// ErrUnknownPeer means the tracker does not know the peer: announce, then
// send the full set.
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
		req := packagesRequest{Full: full && first, Add: []string{}, Remove: []string{}}
		room := MaxHashesPerRequest
		n := min(room, len(remove))
		req.Remove, remove = remove[:n], remove[n:]
		room -= n
		n = min(room, len(add))
		req.Add, add = add[:n], add[n:]
		if err := c.signed(ctx, http.MethodPost, "/v1/packages", &req, &req.PeerID, &req.TS, &packagesJSON{}); err != nil {
			return err
		}
		first = false
	}
	return nil
}

// Find asks which live peers hold the store path with hash part hash.
func (c *Client) Find(ctx context.Context, hash string) ([]PeerInfo, error) {
	if !store.ValidHash(hash) {
		return nil, fmt.Errorf("tracker: invalid hash %q", hash)
	}
	var ans peersJSON
	if err := c.get(ctx, "/v1/find/"+hash, &ans); err != nil {
		return nil, err
	}
	return ans.Peers, nil
}

// Peers lists the live peers.
func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var ans peersJSON
	if err := c.get(ctx, "/v1/peers", &ans); err != nil {
		return nil, err
	}
	return ans.Peers, nil
}

// Deregister removes the peer and its hashes from the tracker at once (on
// shutdown).
func (c *Client) Deregister(ctx context.Context) error {
	var req deleteRequest
	return c.signed(ctx, http.MethodDelete, "/v1/peers/"+url.PathEscape(c.id.String()), &req, &req.PeerID, &req.TS, &deleteJSON{})
}

func (c *Client) get(ctx context.Context, path string, ans any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	return c.do(req, ans)
}

// signed sends body, a request struct whose peer_id and ts fields peerID
// and ts point to, signed. A replay or clock-skew refusal is retried once
// with a ts corrected from the answer (another process with the same key,
// or a clock that stepped back or is off).
func (c *Client) signed(ctx context.Context, method, path string, body any, peerID *string, ts *int64, ans any) error {
	if c.idErr != nil {
		return c.idErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	*peerID = c.id.String()
	for attempt := 0; ; attempt++ {
		now := c.now().Add(c.offset).UnixMilli()
		*ts = max(now, c.lastTS+1)
		c.lastTS = *ts
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("tracker: %w", err)
		}
		sig, err := c.key.Sign(b)
		if err != nil {
			return fmt.Errorf("tracker: signing: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("tracker: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(sig))
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("tracker: %s %s: reading answer: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		var ej errorJSON
		if json.Unmarshal(body, &ej) == nil {
			e.Code, e.Message, e.LastTS, e.NowMS = ej.Code, ej.Error, ej.LastTS, ej.NowMS
		} else {
			e.Message = strings.TrimSpace(string(body[:min(len(body), 200)]))
		}
		return e
	}
	if err := json.Unmarshal(body, ans); err != nil {
		return fmt.Errorf("tracker: %s %s: malformed answer: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}
