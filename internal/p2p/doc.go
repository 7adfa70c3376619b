// Package p2p is peerix's peer-to-peer layer: a libp2p host with a
// persistent identity, the peer protocols /peerix/narinfo/1.0.0 and
// /peerix/nar/1.0.0 (docs/protocol.md, section 2), a Store that finds paths
// on peers through the tracker, peer reputation, and the Announcer that
// keeps the tracker told what this machine shares.
//
// The daemon makes it in one call and runs it with its other parts:
//
//	node, err := p2p.New(p2p.Config{ // identity and host; nothing runs yet
//		StateDir:   cfg.StateDir,   // identity.key, announced.json
//		Port:       cfg.P2PPort,
//		TrackerURL: cfg.Tracker,
//		Shared:     shared,         // filter + signer over the local store
//		Paths:      local,          // *nixstore.Local
//		Shareable:  nil,            // default: shared.NarInfo succeeds
//		Log:        log.With("part", "p2p"),
//	})
//	g.Go(func() error { return node.Run(ctx) }) // serves, announces; on
//	                              // ctx's end deregisters, closes the host
//	remote := node.Store          // store.Store; NAR URLs nar/p2p/<hash>-<narhash>.nar
//	node.Rescan()                 // on SIGHUP
//	node.Peers()                  // for /api/peers
//	node.Index.Stats()            // the local index (nil without a tracker)
//
// Start (New, then Run in the background until Close) is for tests.
//
// The parts can also be used one by one: LoadOrCreateIdentity, NewHost
// (plus Host.UseRelay or Host.FollowTracker), Serve, NewStore,
// NewAnnouncer.
//
// Reachability: a host learns from the tracker's /v1/info where the
// tracker sees it. If that is not one of its own addresses it is behind
// NAT: it reserves a slot with the tracker's relay at once (instead of
// waiting ~17 s for AutoNAT), announces <relay>/p2p/<relay id>/p2p-circuit
// addresses next to its direct ones, and waits for its DCUtR handler before
// dialing (a dial made earlier loses its hole punch). Streams may run over
// limited relayed connections; a NAR transfer on a relayed connection moves
// to a direct one as soon as hole punching makes one (streams do not
// migrate, so the transfer resumes at the byte reached on a new stream).
//
// Misses: with a tracker, the Node runs an Index (index.go), the tracker's
// Bloom filter of every hash any peer holds, kept current by a long poll of
// GET /v1/index. The Store answers a hash the filter does not hold as not
// found from memory (about a microsecond) while the index is known to be
// current, and asks the tracker otherwise.
package p2p
