package tracker

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Limits of the API (docs/protocol.md section 3).
const (
	// SignatureHeader carries base64 (standard, padded) of the libp2p
	// signature over the exact request body.
	SignatureHeader = "X-Peerix-Signature"
	// MaxBodySize bounds a signed request body; larger ones get 413.
	MaxBodySize = 8 << 20
	// MaxAddrs bounds the addresses of one announce.
	MaxAddrs = 32
	// MaxAddrLen bounds one address, in bytes of its text form.
	MaxAddrLen = 255
	// MaxClockSkew is how far a request's ts may be from the tracker's clock.
	MaxClockSkew = 2 * time.Minute
	// MaxHashesPerRequest is how many hashes the client puts in one
	// packages request (50k hashes are about 1.8 MB of JSON).
	MaxHashesPerRequest = 50000
	// DefaultFindLimit and MaxFindLimit bound the peers /v1/find returns.
	DefaultFindLimit = 100
	MaxFindLimit     = 1000
)

// Error codes in the "code" field of error answers.
const (
	CodeBadRequest  = "bad_request"   // 400: malformed JSON, unknown field, invalid hash or address
	CodeClockSkew   = "clock_skew"    // 400: ts too far from the tracker's clock; the answer has now_ms
	CodeBadSig      = "bad_signature" // 401
	CodeForbidden   = "forbidden"     // 403: DELETE of another peer
	CodeUnknownPeer = "unknown_peer"  // 404: packages from a peer that is not registered
	CodeReplay      = "replay"        // 409: ts not greater than the last accepted; the answer has last_ts
	CodeTooLarge    = "too_large"     // 413
	CodeInternal    = "internal"      // 500: the tracker's own fault (database)
)

// PeerInfo is a peer as /v1/peers and /v1/find list it.
type PeerInfo struct {
	PeerID   string    `json:"peer_id"`
	Addrs    []string  `json:"addrs"`
	LastSeen time.Time `json:"last_seen"`
	// Packages is how many hashes the tracker holds for the peer.
	Packages int64 `json:"packages"`
}

// AddrInfo parses the peer ID and addresses; addresses that do not parse
// are skipped.
func (p PeerInfo) AddrInfo() (peer.AddrInfo, error) {
	return PeerAddrs{PeerID: p.PeerID, Addrs: p.Addrs}.AddrInfo()
}

// PeerAddrs is a peer ID with its addresses: the relay in /v1/info.
type PeerAddrs struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// AddrInfo parses the peer ID and addresses; addresses that do not parse
// are skipped, and a trailing /p2p/<id> is dropped.
func (p PeerAddrs) AddrInfo() (peer.AddrInfo, error) {
	id, err := peer.Decode(p.PeerID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("peer id %q: %w", p.PeerID, err)
	}
	ai := peer.AddrInfo{ID: id}
	for _, s := range p.Addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if t, pid := peer.SplitAddr(m); len(t) > 0 && (pid == "" || pid == id) {
			ai.Addrs = append(ai.Addrs, t)
		}
	}
	return ai, nil
}

// CircuitAddrs returns the addresses at which target can be reached through
// relay: <relay addr>/p2p/<relay id>/p2p-circuit/p2p/<target>. Dial them
// (after target has a reservation at the relay) when no direct address
// works; AutoRelay advertises no circuit address for a relay on a
// non-public address, so peers build them from what the tracker says.
func CircuitAddrs(relay peer.AddrInfo, target peer.ID) []ma.Multiaddr {
	suffix, err := ma.NewMultiaddr("/p2p/" + relay.ID.String() + "/p2p-circuit/p2p/" + target.String())
	if err != nil {
		return nil
	}
	out := make([]ma.Multiaddr, 0, len(relay.Addrs))
	for _, a := range relay.Addrs {
		out = append(out, a.Encapsulate(suffix))
	}
	return out
}

// Info is the answer of GET /v1/info.
type Info struct {
	// Relay is the tracker's circuit relay; PeerID is empty if it runs none.
	Relay PeerAddrs
	// ObservedAddr is "ip:port" as the tracker saw this request come in.
	ObservedAddr string
	// TTL is the tracker's peer TTL: heartbeat well within it.
	TTL time.Duration
}

// AnnounceResult is the answer of POST /v1/announce.
type AnnounceResult struct {
	ObservedAddr string
	TTL          time.Duration
	// Registered: the tracker had no live record of this peer (first
	// announce, after expiry, after deregistering, or a new tracker
	// database) and holds no hashes for it: send the full set.
	Registered bool
}

// Wire shapes.

type infoJSON struct {
	OK           bool       `json:"ok"`
	Relay        *PeerAddrs `json:"relay"`
	ObservedAddr string     `json:"observed_addr"`
	TTLSeconds   float64    `json:"ttl_s"`
}

type peersJSON struct {
	Peers []PeerInfo `json:"peers"`
}

type announceRequest struct {
	PeerID string   `json:"peer_id"`
	TS     int64    `json:"ts"`
	Addrs  []string `json:"addrs"`
}

type announceJSON struct {
	OK           bool    `json:"ok"`
	ObservedAddr string  `json:"observed_addr"`
	TTLSeconds   float64 `json:"ttl_s"`
	Registered   bool    `json:"registered"`
}

type packagesRequest struct {
	PeerID string   `json:"peer_id"`
	TS     int64    `json:"ts"`
	Full   bool     `json:"full"`
	Add    []string `json:"add"`
	Remove []string `json:"remove"`
}

type packagesJSON struct {
	OK    bool  `json:"ok"`
	Count int64 `json:"count"`
}

type deleteRequest struct {
	PeerID string `json:"peer_id"`
	TS     int64  `json:"ts"`
}

type deleteJSON struct {
	OK      bool `json:"ok"`
	Removed bool `json:"removed"`
}

type errorJSON struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error"`
	Code   string `json:"code"`
	LastTS int64  `json:"last_ts,omitempty"`
	NowMS  int64  `json:"now_ms,omitempty"`
}
