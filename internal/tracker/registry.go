// Package tracker is `peerix tracker`: the registry of peers and of the store
// hashes they share (HTTP API /v1, docs/protocol.md section 3), its storage
// (SQLite, PostgreSQL), its defences against abuse (holder selection,
// quotas, rate limits) and the circuit relay v2 the tracker host runs for
// peers behind NAT. Peers never import it: what they need (the wire types
// and the client) is internal/tracker/trackerapi.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// Registry stores peers and the hashes they hold. Implementations are safe
// for concurrent use. Times are passed in by the caller (the server owns the
// clock and the TTL policy), so a registry never looks at the wall clock.
//
// Every write carries the signed request's ts and is refused with a
// *ReplayError unless ts is greater than the last ts accepted from that
// peer; check and write are one transaction.
type Registry interface {
	// UpsertPeer registers the peer or refreshes its addresses and source
	// network, setting its last_seen to a.Now (a heartbeat). A peer that
	// was not live (unknown, last seen before a.LiveSince, or
	// deregistered) starts with no hashes and a registration time of
	// a.Now; fresh reports that case, so the peer knows to send its full
	// set. Registering a new peer from a network that has a.MaxPeersPerNet
	// live peers already fails with a *QuotaError.
	UpsertPeer(ctx context.Context, a Announce) (fresh bool, err error)

	// SetPackages replaces the peer's hashes with u.Add (u.Full) or
	// removes u.Remove and then adds u.Add (a delta). It returns how many
	// hashes the registry holds for the peer afterwards. A peer that is
	// not live gets ErrUnknownPeer; a request that would leave the peer
	// with more than u.MaxHashes, or its network's live peers with more
	// than u.MaxNetHashes, a *QuotaError (and changes nothing). Hashes
	// are valid store hash parts (store.ValidHash).
	SetPackages(ctx context.Context, u PackagesUpdate) (count int64, err error)

	// RemovePeer deregisters the peer: it and its hashes are gone at once.
	// The replay guard (its last ts) is kept until the sweep. It reports
	// whether the peer was live.
	RemovePeer(ctx context.Context, peerID string, ts int64, liveSince time.Time) (removed bool, err error)

	// HolderKeys lists the keys of up to max peers holding hash, in key
	// order: peers that registered earlier (and stayed) come first. It
	// reads the hash's rows alone, live or not: an expired peer's hashes
	// are listed until the sweep deletes them (Standings tells).
	HolderKeys(ctx context.Context, hash string, max int) ([]int64, error)

	// Standings returns what choosing among holders needs of the peers
	// with the given keys (from HolderKeys), live or not, in no
	// particular order; keys of peers no longer registered are left out.
	Standings(ctx context.Context, keys []int64) ([]Standing, error)

	// Describe returns the peers with the given keys (from HolderKeys)
	// that are still live, in the order of keys.
	Describe(ctx context.Context, keys []int64, liveSince time.Time) ([]Described, error)

	// Peers returns up to limit live peers whose IDs sort after after
	// ("": from the first), ordered by peer ID.
	Peers(ctx context.Context, liveSince time.Time, after string, limit int) ([]trackerapi.PeerInfo, error)

	// Live reports whether the peer is registered and was seen since
	// liveSince (the relay asks before it takes a reservation).
	Live(ctx context.Context, peerID string, liveSince time.Time) (bool, error)

	// Rows is how many hash rows the registry holds (of live peers and of
	// expired ones not yet swept): an upper bound of the distinct hashes.
	Rows(ctx context.Context) (int64, error)

	// Sweep deletes the hashes of peers not seen since liveSince, and the
	// peers themselves once their last ts is older than tsBefore (Unix ms;
	// until then their row keeps the replay guard). It returns how many
	// peer rows it deleted.
	Sweep(ctx context.Context, liveSince time.Time, tsBefore int64) (int, error)

	// LastTS returns the last ts accepted from the peer, and false if the
	// registry has no record of it.
	LastTS(ctx context.Context, peerID string) (int64, bool, error)

	// TrackerID names the database: created with it, shared by every
	// tracker using it. Writes are signed for it (trackerapi.SignedMessage).
	TrackerID() string

	Close() error
}

// Announce is a registration or heartbeat (POST /v1/announce) as the
// registry takes it.
type Announce struct {
	PeerID string
	Addrs  []string // canonical, filtered (trackerapi.CheckAddr)
	// Net is the source network the announce came from (sourceNet): what
	// holder selection spreads over and quotas count by. "" for sources
	// exempt from network quotas (loopback).
	Net string
	TS  int64
	Now time.Time
	// LiveSince: peers seen before are expired.
	LiveSince time.Time
	// MaxPeersPerNet: a new registration from Net when it has this many
	// live peers already is refused (0: no limit; never for Net "").
	MaxPeersPerNet int
}

// PackagesUpdate is a packages request (POST /v1/packages) as the registry
// takes it.
type PackagesUpdate struct {
	PeerID    string
	TS        int64
	LiveSince time.Time
	Full      bool
	Add       []string
	Remove    []string
	// MaxHashes bounds the peer's set (0: no limit).
	MaxHashes int64
	// MaxNetHashes bounds the hashes of all live peers of the peer's
	// network together (0: no limit; none for the network "").
	MaxNetHashes int64
}

// Described is a peer as Describe and the listings read it: its
// description, the registry's key, and its standing.
type Described struct {
	trackerapi.PeerInfo
	Key   int64
	Net   string
	Since int64
}

// Holder is a live holder of a hash as a find chooses among them: what
// choosing needs, without the addresses.
type Holder struct {
	Key int64  // the registry's handle of the peer, for Describe
	Net string // its source network
	// Since is when its current registration began (Unix ms): how long
	// it has stayed.
	Since int64
}

// Standing is a peer as Standings reads it: the holder it is, with its
// ID and when it was last seen (Unix ms), live or not.
type Standing struct {
	Holder
	PeerID   string
	LastSeen int64
}

// Both registries read standings as one text value, a line
// "key,since,last_seen,peer_id,net" a peer, and a hash's holder keys as
// one "key,key,..." value, rather than as a row each: with a thousand
// holders, reading the rows (database/sql and the SQLite driver: a few
// hundred ns a row; pgx) cost more than the lookups, and an uncached find
// waits for it. A peer ID is base58, a net a netip prefix, "unknown" or
// "" (sourceOf): neither holds a comma or a newline.

// parseStandings reads a standings value; the IDs and nets it returns
// share s's memory.
func parseStandings(s string) ([]Standing, error) {
	if s == "" {
		return []Standing{}, nil
	}
	out := make([]Standing, 0, strings.Count(s, "\n")+1)
	for line := range strings.SplitSeq(s, "\n") {
		var f [5]string
		rest := line
		for i := range 4 {
			var ok bool
			if f[i], rest, ok = strings.Cut(rest, ","); !ok {
				return nil, fmt.Errorf("standing %q: want key,since,last_seen,peer_id,net", line)
			}
		}
		f[4] = rest
		var st Standing
		var err error
		for i, v := range []*int64{&st.Key, &st.Since, &st.LastSeen} {
			if *v, err = strconv.ParseInt(f[i], 10, 64); err != nil {
				return nil, fmt.Errorf("standing %q: %w", line, err)
			}
		}
		st.PeerID, st.Net = f[3], f[4]
		out = append(out, st)
	}
	return out, nil
}

// parseKeys reads a holder keys value, putting the keys in order if a
// database ever aggregated them out of it (they keep the order of the
// subquery they aggregate, but SQL does not promise it).
func parseKeys(s string) ([]int64, error) {
	if s == "" {
		return []int64{}, nil
	}
	keys := make([]int64, 0, strings.Count(s, ",")+1)
	for v := range strings.SplitSeq(s, ",") {
		k, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("holder keys: %w", err)
		}
		keys = append(keys, k)
	}
	if !slices.IsSorted(keys) {
		slices.Sort(keys)
	}
	return keys, nil
}

// ErrUnknownPeer: a write that needs a registered, live peer came from one
// that is not (never announced, expired or deregistered).
var ErrUnknownPeer = trackerapi.ErrUnknownPeer

// ErrReplay is what a *ReplayError matches with errors.Is.
var ErrReplay = trackerapi.ErrReplay

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

// ErrQuota is what a *QuotaError matches with errors.Is.
var ErrQuota = errors.New("over quota")

// QuotaError refuses a write that would exceed a quota.
type QuotaError struct {
	What  string // "hashes per peer", "hashes per network", "peers per network"
	Limit int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("over the tracker's quota of %d %s", e.Limit, e.What)
}

// Is makes errors.Is(err, ErrQuota) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }
