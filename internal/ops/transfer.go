package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Transfer is one NAR transfer between this machine and a peer, in either
// direction, for the dashboard's progress bars and the byte counters: its
// bytes count as they move. All its methods may be called on a nil
// *Transfer, and Done more than once.
type Transfer struct {
	o         *Ops
	id        string
	direction int    // dirDown or dirUp
	way       int    // down: srcLAN or srcP2P; up: viaHTTP or viaP2P
	hash      string // hash part, when the store path is not known
	started   time.Time
	done      atomic.Int64 // NAR bytes
	wire      atomic.Int64 // bytes on the link (fewer when compressed)
	finished  atomic.Bool

	mu        sync.Mutex
	storePath string
	peer      string
	size      int64 // -1 unknown
	relayed   bool
	sources   []*source // downloads: the holders the bytes came from, in the order they started
}

// source is one holder's part of a download.
type source struct {
	peer        string
	relayed     bool
	nar, wire   int64
	first, last time.Time // its first and latest bytes
}

// SourceInfo is one holder's part of a download as /api/status shows it.
type SourceInfo struct {
	Peer      string  `json:"peer"`
	Relayed   bool    `json:"relayed,omitempty"`
	Done      int64   `json:"done"`       // NAR bytes it sent
	WireBytes int64   `json:"wire_bytes"` // the bytes they took on the link
	RateBps   float64 `json:"rate_bps"`   // NAR bytes a second while it sent
}

// TransferInfo is a transfer as /api/status shows it.
type TransferInfo struct {
	ID        string `json:"id"`
	Direction string `json:"direction"` // down (from a peer) or up (to a peer)
	StorePath string `json:"store_path,omitempty"`
	Hash      string `json:"hash,omitempty"`
	// Source is how the bytes move: lan (HTTP) or p2p (libp2p) from peers,
	// http or p2p to them.
	Source  string `json:"source"`
	Peer    string `json:"peer,omitempty"`
	Relayed bool   `json:"relayed,omitempty"` // over a libp2p relay, not a direct connection
	Size    int64  `json:"size"`              // bytes, -1 unknown
	Done    int64  `json:"done"`              // NAR bytes so far
	// WireBytes: the bytes Done took on the link; WireRatio is WireBytes
	// over Done (below 1: compressed on the wire; 0: not known).
	WireBytes int64   `json:"wire_bytes"`
	WireRatio float64 `json:"wire_ratio"`
	// Sources: the holders a download came from, each with its share and
	// rate (several at once for a large NAR several peers hold).
	Sources  []SourceInfo `json:"sources,omitempty"`
	Started  time.Time    `json:"started"`
	ElapsedS float64      `json:"elapsed_s"`
	RateBps  float64      `json:"rate_bps"` // mean bytes per second so far
	Error    string       `json:"error,omitempty"`
	Finished bool         `json:"finished,omitempty"`
}

var errAborted = errors.New("aborted")

// activityMinSize: finished transfers this large (and failed ones) get a
// line in the recent activity; smaller ones come and go by the hundred
// when Nix fetches a closure, and the counters and lists show them.
const activityMinSize = 1 << 20

// StartTransfer shows a NAR transfer from a peer in progress. id is the
// caller's name for it (need not be unique; "" gets one), storePath the path
// (or its hash part), source "lan" or "p2p", size the NAR's size (-1 if
// not known yet). Call Add as bytes arrive, naming their holder, and Done
// at the end.
func (o *Ops) StartTransfer(id, storePath, source string, size int64) *Transfer {
	if o == nil {
		return nil
	}
	way := sourceIndex(source)
	if way != srcLAN && way != srcP2P {
		way = srcP2P
	}
	return o.startTransfer(dirDown, way, id, storePath, "", size, false)
}

// StartUpload shows a NAR of the local store going to a peer: via "http"
// or "p2p", peer its address or peer ID, size the bytes to send (-1 if
// unknown), relayed whether it goes through a libp2p relay. Call Add as
// bytes leave and Done at the end.
func (o *Ops) StartUpload(storePath, via, peer string, size int64, relayed bool) *Transfer {
	if o == nil {
		return nil
	}
	way := viaHTTP
	if via == viaNames[viaP2P] {
		way = viaP2P
	}
	return o.startTransfer(dirUp, way, "", storePath, peer, size, relayed)
}

func (o *Ops) startTransfer(direction, way int, id, storePath, peer string, size int64, relayed bool) *Transfer {
	n := o.nextID.Add(1)
	if id == "" {
		id = dirNames[direction] + "-" + strconv.FormatInt(n, 10)
	}
	t := &Transfer{o: o, id: id, direction: direction, way: way, size: size, started: time.Now(), peer: peer, relayed: relayed}
	if len(storePath) == 32 {
		t.hash = storePath
	} else {
		t.storePath = storePath
	}
	o.tmu.Lock()
	o.transfers[t] = struct{}{}
	o.tmu.Unlock()
	o.stats.transfers.Add(1)
	o.metrics.transfersStarted[direction].Inc()
	return t
}

// source names the transfer's way for TransferInfo.
func (t *Transfer) source() string {
	if t.direction == dirUp {
		return viaNames[t.way]
	}
	return sourceNames[t.way]
}

// Add records nar more NAR bytes and wire more bytes on the link (either
// may be 0: each is counted where it is seen), from holder from (a
// download's; "" for uploads). NAR bytes count as sent or received at once
// (the counters, /metrics and the history move with the transfer).
func (t *Transfer) Add(from string, nar, wire int64) {
	if t == nil {
		return
	}
	if nar > 0 {
		t.done.Add(nar)
		t.o.countBytes(t.direction, t.way, nar)
	}
	if wire > 0 {
		t.wire.Add(wire)
	}
	if from == "" || nar <= 0 && wire <= 0 {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	src := t.sourceLocked(from)
	src.nar += nar
	src.wire += wire
	if src.first.IsZero() {
		src.first = now
	}
	src.last = now
	t.peer = from
}

// sourceLocked returns the holder from's part. t.mu is held.
func (t *Transfer) sourceLocked(from string) *source {
	for _, s := range t.sources {
		if s.peer == from {
			return s
		}
	}
	s := &source{peer: from}
	t.sources = append(t.sources, s)
	return s
}

// SourceRelayed says whether the bytes of holder from come through a
// libp2p relay.
func (t *Transfer) SourceRelayed(from string, relayed bool) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sourceLocked(from).relayed = relayed
	t.relayed = relayed
}

// SetPeer names the peer an upload goes to.
func (t *Transfer) SetPeer(peer string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.peer = peer
	t.mu.Unlock()
}

// SetRelayed says whether the bytes now go through a libp2p relay.
func (t *Transfer) SetRelayed(relayed bool) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.relayed = relayed
	t.mu.Unlock()
}

// SetSize sets the NAR's size once it is known.
func (t *Transfer) SetSize(size int64) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.size = size
	t.mu.Unlock()
}

// Done ends the transfer; err nil means it completed. Later calls do nothing.
func (t *Transfer) Done(err error) {
	if t == nil || !t.finished.CompareAndSwap(false, true) {
		return
	}
	o := t.o
	info := t.info(time.Now())
	info.Finished = true
	if err != nil {
		info.Error = err.Error()
		o.stats.transfersFail.Add(1)
		o.metrics.transfersFailed[t.direction].Inc()
	}
	o.tmu.Lock()
	delete(o.transfers, t)
	o.recent.push(info)
	o.tmu.Unlock()

	if err == nil && info.Done < activityMinSize {
		return
	}
	what := info.StorePath
	if what == "" {
		if what = o.pathName(context.Background(), info.Hash); what == "" {
			what = info.Hash
		}
	}
	peer := "?"
	switch {
	case len(info.Sources) > 1:
		peer = fmt.Sprintf("%d peers at once", len(info.Sources))
	case info.Peer != "":
		peer = shortID(info.Peer)
	}
	way := info.Source
	if info.Relayed {
		way += " (relayed)"
	}
	took := roundDuration(info.ElapsedS)
	switch {
	case err != nil && info.Direction == "up":
		o.Activity(fmt.Sprintf("sending %s to %s over %s broke off after %s: %v", what, peer, way, humanBytes(info.Done), err))
	case err != nil:
		o.Activity(fmt.Sprintf("fetching %s from %s over %s failed after %s: %v", what, peer, way, humanBytes(info.Done), err))
	case info.Direction == "up":
		o.Activity(fmt.Sprintf("sent %s (%s) to %s over %s in %s, %s/s", what, humanBytes(info.Done), peer, way, took, humanBytes(int64(info.RateBps))))
	default:
		o.Activity(fmt.Sprintf("fetched %s (%s) from %s over %s in %s, %s/s", what, humanBytes(info.Done), peer, way, took, humanBytes(int64(info.RateBps))))
	}
}

func (t *Transfer) info(now time.Time) TransferInfo {
	t.mu.Lock()
	storePath, peer, size, relayed := t.storePath, t.peer, t.size, t.relayed
	var sources []SourceInfo
	for _, s := range t.sources {
		si := SourceInfo{Peer: s.peer, Relayed: s.relayed, Done: s.nar, WireBytes: s.wire}
		// While it sends, its rate so far; once it stopped, over the time
		// it sent.
		end := s.last
		if !t.finished.Load() && now.Sub(s.last) < time.Second {
			end = now
		}
		if d := end.Sub(s.first).Seconds(); d > 0 {
			si.RateBps = float64(s.nar) / d
		}
		sources = append(sources, si)
	}
	t.mu.Unlock()
	el := now.Sub(t.started).Seconds()
	done, wire := t.done.Load(), t.wire.Load()
	info := TransferInfo{
		ID: t.id, Direction: dirNames[t.direction], StorePath: storePath, Hash: t.hash,
		Source: t.source(), Peer: peer, Relayed: relayed, Size: size, Done: done, Started: t.started, ElapsedS: el,
		WireBytes: wire, Sources: sources,
	}
	if el > 0 {
		info.RateBps = float64(done) / el
	}
	if done > 0 && wire > 0 {
		info.WireRatio = float64(wire) / float64(done)
	}
	return info
}

// transfersInFlight counts the transfers in progress in one direction.
func (o *Ops) transfersInFlight(dir int) int {
	o.tmu.Lock()
	defer o.tmu.Unlock()
	n := 0
	for t := range o.transfers {
		if t.direction == dir {
			n++
		}
	}
	return n
}

// transferInfos lists the transfers in flight, oldest first, and the
// recently finished ones, newest first.
func (o *Ops) transferInfos() (inFlight, recent []TransferInfo) {
	now := time.Now()
	o.tmu.Lock()
	ts := make([]*Transfer, 0, len(o.transfers))
	for t := range o.transfers {
		ts = append(ts, t)
	}
	recent = o.recent.newestFirst(recentTransfers)
	o.tmu.Unlock()
	inFlight = make([]TransferInfo, 0, len(ts))
	for _, t := range ts {
		inFlight = append(inFlight, t.info(now))
	}
	slices.SortFunc(inFlight, func(a, b TransferInfo) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return inFlight, recent
}

// ActivityEntry is one line of recent activity.
type ActivityEntry struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
}

// activityRing keeps the last activitySize entries.
// activityRing is the recent activity: the last activitySize entries.
type activityRing struct {
	mu sync.Mutex
	ring[ActivityEntry]
}

// Activity notes an event for the dashboard's recent activity (a peer came
// or went, a transfer ended, a rescan). Not for per-request events.
func (o *Ops) Activity(msg string) {
	if o == nil {
		return
	}
	a := &o.activity
	a.mu.Lock()
	a.push(ActivityEntry{Time: time.Now(), Msg: msg})
	a.mu.Unlock()
}

// recentActivity returns up to n entries, newest first.
func (o *Ops) recentActivity(n int) []ActivityEntry {
	a := &o.activity
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.newestFirst(n)
}

// shortID shortens a libp2p peer ID for messages: its last 8 characters,
// which is how libp2p tools abbreviate them.
func shortID(id string) string {
	if len(id) > 16 && (id[:2] == "12" || id[:2] == "Qm") {
		return "…" + id[len(id)-8:]
	}
	return id
}

// humanBytes formats a byte count in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func roundDuration(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
