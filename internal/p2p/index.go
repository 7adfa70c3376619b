package p2p

// The local index: misses answered from memory.
//
// Most narinfo lookups Nix makes are misses (paths no peer has, found
// upstream instead), and each used to cost a round trip to the tracker.
// The node follows the tracker's Bloom filter of every hash any peer holds
// (GET /v1/index, docs/protocol.md section 3) with a summary.Follower: a
// hash the filter does not hold is a miss answered in well under a
// microsecond; one it may hold (held, or a false positive: about 0.3%)
// goes to /v1/find as before. Memory: one filter for the whole fleet, 12
// bits a distinct hash (30 MiB for 20 M distinct hashes, the worst case of
// 1,000 peers x 20,000 hashes sharing none).
//
// Freshness. Nix remembers a 404 for an hour, so the filter answers only
// while a long poll (wait 25 s) vouches that it is current, and while the
// tracker's lag behind its database (several trackers on one PostgreSQL)
// is at most 30 s: a path announced anywhere reaches every index within a
// network round trip; a tracker that stops answering makes lookups ask it
// again within 30 s.

import (
	"context"
	"time"

	"github.com/peerix/peerix/internal/summary"
)

// Update fetches the tracker's hash index: TrackerClient is the source of
// the node's summary.Follower.
func (t TrackerClient) Update(ctx context.Context, epoch, gen uint64, have bool, wait time.Duration) (*summary.Update, error) {
	return t.C.Index(ctx, epoch, gen, have, wait)
}

var _ summary.Source = TrackerClient{}
