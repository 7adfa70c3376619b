// Package trackerapi is what a peer needs to talk to a `peerix tracker`:
// the wire types of its HTTP API (/v1, docs/protocol.md section 3), the
// signature scheme of its writes, the rule for which announced addresses
// are worth storing and dialling, and the Client that peers use. The
// server, its storage and its relay live in internal/tracker, which peers
// never import.
//
//	c := trackerapi.NewClient("https://tracker.example.org", identityKey)
//	res, err := c.Announce(ctx, host.Addrs())       // the heartbeat
//	err = c.Packages(ctx, true, hashes, nil)         // the full set, once
//	holders, err := c.Find(ctx, "0c2h5xs6...")       // who holds a hash
package trackerapi
