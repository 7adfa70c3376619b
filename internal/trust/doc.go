// Package trust holds peerix's two gatekeepers, both store.Store wrappers:
// the Filter decides what may leave this machine (privacy), the Verifier
// what peers may hand to this machine's Nix (integrity).
//
// # Filter
//
//	f, err := trust.NewFilter(trust.FilterOptions{Mode: cfg.Filter, Patterns: cfg.FilterPatterns,
//		Upstream: cfg.Upstream, TrustedPublicKeys: keys, StateDir: cfg.StateDir, Log: log})
//	shared := signing.NewStore(f.Wrap(local), key) // what peers see, over HTTP and P2P
//	lan.Listen(..., f.Shareable, ...)               // LAN answers; also tracker announcements
//	defer f.Close()                                 // saves the cache
//
// Modes: "none" shares everything (the default in local mode). "patterns"
// shares everything but names on the deny-list: DefaultPatterns (secrets,
// keys, credentials, tokens, NixOS system closures, home-manager
// generations, profiles, flake sources, .drv files) plus the user's
// --filter-pattern globs, matched case-insensitively on the name after
// "<hash>-". "upstream" (the default in p2p and lan mode) applies the
// deny-list and then shares a path only if the upstream cache has the same
// build of it: a path whose database record carries a signature that
// verifies against the upstream's key (UpstreamKey; cache.nixos.org-1 by
// default) is public without a network request; for the others the filter
// fetches GET <upstream>/<hash>.narinfo (at most 1 MiB, parsed with
// store.ParseNarInfo and checked with store.CheckNarInfo) and shares the
// path only if the upstream's NarHash is the local one. A build that is not
// reproducible has another NarHash than the upstream's: peers would take its
// narinfo for a lie (it contradicts the upstream's), so it stays home
// (RefusedOtherBuild). 404 is private; anything else (5xx, 403, a timeout, a
// network error, a narinfo that does not parse or names another path) is
// unknown, and unknown is refused. Requests are bounded (8 in flight), one
// per hash at a time, and remembered: the upstream's NarHash for 24 h,
// private for 1 h, unknown for 10 s (memory only). Public and private
// answers survive restarts in <state dir>/filter-cache, a small text file
// (version 2: it holds the upstream's NarHash) written atomically every 5
// minutes when changed and on Close; a corrupt file or one of version 1 is
// ignored and rewritten.
//
// Refused paths are store.ErrRefused from both NarInfo and NAR (HTTP and the
// peer protocols turn that into "not found", like an absent path). A NAR URL
// is mapped to its path by HashOfURL, and the NAR is served only if that
// path is shared. With AnswerFromMemory (the daemon's lan and p2p modes) the
// store Wrap returns never waits for the upstream: a path not decided yet
// is refused at once and decided in the background, so that a refusal costs
// a peer's request no more time than an absent path; Shareable (LAN answers,
// summaries, tracker announcements) waits, and decides every shared path
// before any peer hears of it.
//
// # Verifier
//
//	v, err := trust.NewVerifier(trust.VerifierOptions{NoVerify: cfg.NoVerify, TrustedPublicKeys: keys,
//		Upstream: cfg.Upstream, Log: log})
//	finder := swarm.NewFinder(swarm.Options{Accept: v.Accept, ...}) // LAN, P2P
//	defer v.Close()
//
// Accept is asked about every candidate narinfo a peer offers, before the
// lookup chooses one (internal/swarm). A peer's narinfo reaches Nix only if
// it carries a valid signature by a trusted key (--trusted-public-key, else
// NixTrustedPublicKeys), or if its StorePath, NarHash, NarSize and
// references equal those of the upstream's narinfo for the path (fetched
// with GET, at most 1 MiB, parsed with go-nix, its own signature checked
// against the upstream key when one is known, remembered for 1 h, a miss
// for 10 min, a failure for 5 s). Nix gets only what was verified: the
// fingerprint's fields and the signatures, plus, in the second case, the
// upstream's signatures (they cover the same fingerprint, so Nix, which
// trusts the upstream, accepts the path even when the peer's record lacks
// them) and the upstream's Deriver and CA; never a peer's own. A narinfo
// that contradicts the upstream's wraps swarm.ErrLie: the lookup counts it
// against the peer and asks the next. One that cannot be verified is
// store.ErrNotFound — a miss, never a 5xx that would switch the substituter
// off. An unreachable upstream makes unsigned narinfos misses (fail closed)
// and shows in Health.
//
// NARs are verified by the lookup kit (internal/swarm) against the
// accepted narinfo's NarHash before Nix sees a byte.
//
// --no-verify: Accept takes every well-formed narinfo as it is, and
// NewVerifier logs a loud warning.
package trust
