// Package tracker is `peerix tracker`: the registry of peers and of the store
// hashes they share (HTTP API /v1, docs/protocol.md section 3), its storage,
// the circuit relay v2 the tracker host runs for peers behind NAT, and the
// client that peers use to talk to it.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Registry stores peers and the hashes they hold. Implementations are safe
// for concurrent use. Times are passed in by the caller (the server owns the
// clock and the TTL policy), so a registry never looks at the wall clock.
//
// Every write carries the signed request's ts and is refused with a
// *ReplayError unless ts is greater than the last ts accepted from that
// peer; check and write are one transaction.
type Registry interface {
	// UpsertPeer registers the peer or refreshes its addresses, setting its
	// last_seen to now (a heartbeat). A peer that was not live (unknown,
	// last seen before liveSince, or deregistered) starts with no hashes;
	// fresh reports that case, so the peer knows to send its full set.
	UpsertPeer(ctx context.Context, peerID string, addrs []string, ts int64, now, liveSince time.Time) (fresh bool, err error)

	// SetPackages replaces the peer's hashes with add (full) or removes
	// remove and then adds add (delta). It returns how many hashes the
	// registry holds for the peer afterwards. A peer that is not live gets
	// ErrUnknownPeer. Hashes are valid store hash parts (store.ValidHash).
	SetPackages(ctx context.Context, peerID string, ts int64, liveSince time.Time, full bool, add, remove []string) (count int64, err error)

	// RemovePeer deregisters the peer: it and its hashes are gone at once.
	// The replay guard (its last ts) is kept until the sweep. It reports
	// whether the peer was live.
	RemovePeer(ctx context.Context, peerID string, ts int64, liveSince time.Time) (removed bool, err error)

	// Find returns up to limit live peers holding hash, most recently seen
	// first.
	Find(ctx context.Context, hash string, liveSince time.Time, limit int) ([]PeerInfo, error)

	// Peers returns the live peers, ordered by peer ID.
	Peers(ctx context.Context, liveSince time.Time) ([]PeerInfo, error)

	// Sweep deletes the hashes of peers not seen since liveSince, and the
	// peers themselves once their last ts is older than tsBefore (Unix ms;
	// until then their row keeps the replay guard). It returns how many
	// peer rows it deleted.
	Sweep(ctx context.Context, liveSince time.Time, tsBefore int64) (int, error)

	// LastTS returns the last ts accepted from the peer, and false if the
	// registry has no record of it.
	LastTS(ctx context.Context, peerID string) (int64, bool, error)

	Close() error
}

// ErrUnknownPeer: a write that needs a registered, live peer came from one
// that is not (never announced, expired or deregistered).
var ErrUnknownPeer = errors.New("unknown peer: announce first")

// ErrReplay is what a *ReplayError matches with errors.Is.
var ErrReplay = errors.New("replayed or out-of-order ts")

// ReplayError refuses a write whose ts is not greater than the last one
// accepted from the peer.
type ReplayError struct {
	TS, LastTS int64
}

func (e *ReplayError) Error() string {
	return fmt.Sprintf("ts %d is not greater than the last accepted ts %d (replay)", e.TS, e.LastTS)
}

// Is makes errors.Is(err, ErrReplay) true.
func (e *ReplayError) Is(target error) bool { return target == ErrReplay }
