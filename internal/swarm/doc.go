// Package swarm finds a store path among the peers that may hold it and
// fetches its NAR from them. It is the one lookup kit of the LAN and P2P
// sources: they only say who may hold a path (LAN summaries and
// broadcasts, the tracker) and how to talk to a holder (HTTP, libp2p
// streams); everything else happens here, once:
//
//   - Find asks holders for the narinfo, a few at a time in reputation
//     order, and chooses among their answers by trust, not by speed: a
//     narinfo is taken only once Accept (the verifier) vouches for it; a
//     holder whose narinfo contradicts what is trusted is caught lying and
//     counted against (also when it answers after another holder's
//     narinfo was accepted), and the next one is asked. Callers are released by
//     the first accepted narinfo; holders that confirm the same NarHash
//     later become spares for the transfer.
//   - OpenNAR assembles the NAR in a spool (memory for small NARs, an
//     unlinked file otherwise), hashing it as it arrives, and hands Nix
//     bytes only once they can be trusted: when the whole NAR matched
//     its NarHash, or, for large NARs from holders with a clean record
//     of verified NARs (Reputation.Proven), as they arrive, all but the
//     last byte. From one such holder the NAR streams through a bounded
//     ring in memory rather than a file, until another holder joins
//     (ring.go). A holder that breaks, stalls or sends slower than
//     MinRate is dropped and the transfer resumes at the byte reached
//     from the next one; a NAR that fails its hash is fetched again
//     from another holder and compared, so the holder whose bytes
//     differ is found, blamed and shunned. A lying or stalling holder
//     costs time, never a failed substitution (but for a proven holder
//     that lied in bytes Nix already had: that request fails; and, since
//     the ring keeps only a hash of what it let through, for one whose
//     NAR streamed through a ring and lied anywhere in it once Nix had
//     a byte: judged by that hash, Nix's bytes cannot be told right).
//   - Reputation ranks holders by success rate and latency, backs off
//     failing ones, and remembers who lied.
package swarm
