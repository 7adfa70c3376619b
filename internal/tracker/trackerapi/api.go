package trackerapi

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Limits of the API (docs/protocol.md section 3).
const (
	// SignatureHeader carries a write's signature: "v2 " and base64
	// (standard, padded) of the libp2p signature over SignedMessage.
	SignatureHeader = "X-Peerix-Signature"
	// MaxBodySize bounds a signed request body; larger ones get 413.
	MaxBodySize = 8 << 20
	// MaxAddrs bounds the addresses of one announce.
	MaxAddrs = 32
	// MaxAddrLen bounds one address, in bytes of its text form.
	MaxAddrLen = 255
	// MaxClockSkew is how far a request's ts may be from the tracker's clock.
	MaxClockSkew = 2 * time.Minute
	// MaxHashesPerRequest bounds the hashes (add and remove together) of
	// one packages request; the client sends larger sets in parts (50k
	// hashes are about 1.8 MB of JSON). The tracker answers 413 beyond it.
	MaxHashesPerRequest = 50000
	// DefaultFindLimit and MaxFindLimit bound the peers /v1/find returns.
	DefaultFindLimit = 100
	MaxFindLimit     = 1000
	// DefaultPeersLimit and MaxPeersLimit bound one page of /v1/peers.
	DefaultPeersLimit = 100
	MaxPeersLimit     = 1000
)

// Error codes in the "code" field of error answers.
const (
	CodeBadRequest   = "bad_request"   // 400: malformed JSON, unknown field, invalid hash or address
	CodeClockSkew    = "clock_skew"    // 400: ts too far from the tracker's clock; the answer has now_ms
	CodeBadSig       = "bad_signature" // 401; the answer has tracker_id
	CodeOldSignature = "old_signature" // 401: a v1 signature (over the body only), no longer accepted
	CodeForbidden    = "forbidden"     // 403: DELETE of another peer
	CodeQuota        = "quota"         // 403: over a quota (hashes per peer or network, peers per network); the answer has limit
	CodeUnknownPeer  = "unknown_peer"  // 404: packages from a peer that is not registered
	CodeReplay       = "replay"        // 409: ts not greater than the last accepted; the answer has last_ts
	CodeTooLarge     = "too_large"     // 413: body over MaxBodySize, or over MaxHashesPerRequest hashes
	CodeRateLimited  = "rate_limited"  // 429: too many requests; Retry-After and retry_after_ms say when to try again
	CodeInternal     = "internal"      // 500: the tracker's own fault (database)
	CodeUnavailable  = "unavailable"   // 503: no hash index (yet), or the tracker is too busy to take a body now
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
	// TrackerID names the tracker's database: writes are signed for it.
	TrackerID string
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
	// Addrs are the addresses the tracker stored: those announced, less
	// the ones its address rule (UsableAddr) leaves out.
	Addrs []string
}
