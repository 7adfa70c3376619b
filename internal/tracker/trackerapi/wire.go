package trackerapi

// The JSON bodies of the API, as they travel. The server decodes requests
// strictly (unknown fields are a 400); clients ignore unknown answer
// fields, so the tracker may add some.

// InfoAnswer is GET /v1/info's answer.
type InfoAnswer struct {
	OK           bool       `json:"ok"`
	TrackerID    string     `json:"tracker_id"`
	Relay        *PeerAddrs `json:"relay"`
	ObservedAddr string     `json:"observed_addr"`
	TTLSeconds   float64    `json:"ttl_s"`
}

// PeersAnswer is the answer of GET /v1/peers and GET /v1/find/<hash>.
// Next, in /v1/peers only, is the peer ID to ask for the next page after
// (?after=<next>); empty on the last page.
type PeersAnswer struct {
	Peers []PeerInfo `json:"peers"`
	Next  string     `json:"next,omitempty"`
}

// AnnounceRequest is the body of POST /v1/announce.
type AnnounceRequest struct {
	PeerID string   `json:"peer_id"`
	TS     int64    `json:"ts"`
	Addrs  []string `json:"addrs"`
}

// AnnounceAnswer is POST /v1/announce's answer.
type AnnounceAnswer struct {
	OK           bool     `json:"ok"`
	ObservedAddr string   `json:"observed_addr"`
	TTLSeconds   float64  `json:"ttl_s"`
	Registered   bool     `json:"registered"`
	Addrs        []string `json:"addrs"`
}

// PackagesRequest is the body of POST /v1/packages.
type PackagesRequest struct {
	PeerID string   `json:"peer_id"`
	TS     int64    `json:"ts"`
	Full   bool     `json:"full"`
	Add    []string `json:"add"`
	Remove []string `json:"remove"`
}

// PackagesAnswer is POST /v1/packages's answer.
type PackagesAnswer struct {
	OK    bool  `json:"ok"`
	Count int64 `json:"count"`
}

// DeleteRequest is the body of DELETE /v1/peers/<id>.
type DeleteRequest struct {
	PeerID string `json:"peer_id"`
	TS     int64  `json:"ts"`
}

// DeleteAnswer is DELETE /v1/peers/<id>'s answer.
type DeleteAnswer struct {
	OK      bool `json:"ok"`
	Removed bool `json:"removed"`
}

// ErrorAnswer is every refusal's body.
type ErrorAnswer struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	Code  string `json:"code"`
	// LastTS with CodeReplay: the last ts the tracker accepted from the peer.
	LastTS int64 `json:"last_ts,omitempty"`
	// NowMS with CodeClockSkew: the tracker's clock.
	NowMS int64 `json:"now_ms,omitempty"`
	// TrackerID with CodeBadSig and CodeOldSignature: what writes must be
	// signed for.
	TrackerID string `json:"tracker_id,omitempty"`
	// Limit with CodeQuota: the quota the request would have exceeded.
	Limit int64 `json:"limit,omitempty"`
	// RetryAfterMS with CodeRateLimited and CodeUnavailable.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}
