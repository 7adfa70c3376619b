// Package summary keeps a compact, current summary of a set of store
// hashes on another machine: a Bloom filter that a publisher builds and a
// follower fetches whole once, then keeps current by long polls that
// answer with the hashes added since the generation it holds.
//
// Two publishers use it: the tracker, over every hash any peer announced
// (GET /v1/index), and every daemon, over the hashes it shares on its LAN
// (GET /local/summary). Their followers are the P2P store, which answers
// "no peer has it" from memory, and the LAN store, which asks only the
// peers whose summary may hold a hash. The wire format is in
// docs/protocol.md ("The hash index").
//
//	p := summary.NewPublisher(summary.PublisherOptions{})
//	p.Reset(filter, entries)        // a new epoch: a whole filter
//	p.Add(hashes)                   // a new generation
//	http.HandleFunc("/local/summary", p.ServeHTTP)
//
//	f := summary.NewFollower(summary.HTTPSource{URL: "http://peer:12304/local/summary"}, summary.FollowerOptions{})
//	go f.Run(ctx)
//	if f.Absent(hash) { /* the peer certainly does not hold it */ }
//
// A filter only over-approximates: a follower may answer "absent" only
// while a long poll vouches that its filter is current, because a false
// miss costs the user an hour (Nix remembers a 404 that long).
package summary

// Hash is a store path's hash part, decoded from Nix base-32.
type Hash = [HashBytes]byte
