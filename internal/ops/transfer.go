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

// Transfer is one NAR transfer in flight, for the dashboard's progress bars.
// All its methods may be called on a nil *Transfer, and Done more than once.
type Transfer struct {
	o         *Ops
	id        string
	direction string // "down": from a peer; "up": to a peer
	hash      string // hash part, when the store path is not known
	source    string // lan, p2p, local
	size      int64  // -1 unknown
	started   time.Time
	done      atomic.Int64
	finished  atomic.Bool

	mu        sync.Mutex
	storePath string
	peer      string
}

// TransferInfo is a transfer as /api/status shows it.
type TransferInfo struct {
	ID        string    `json:"id"`
	Direction string    `json:"direction"` // down (from a peer) or up (to a peer)
	StorePath string    `json:"store_path,omitempty"`
	Hash      string    `json:"hash,omitempty"`
	Source    string    `json:"source"`
	Peer      string    `json:"peer,omitempty"`
	Size      int64     `json:"size"` // bytes, -1 unknown
	Done      int64     `json:"done"` // bytes so far
	Started   time.Time `json:"started"`
	ElapsedS  float64   `json:"elapsed_s"`
	RateBps   float64   `json:"rate_bps"` // mean bytes per second so far
	Error     string    `json:"error,omitempty"`
	Finished  bool      `json:"finished,omitempty"`
}

var errAborted = errors.New("aborted")

// StartTransfer shows a NAR transfer from a peer in progress. id is the
// caller's name for it (need not be unique; "" gets one), storePath the path
// (or its hash part), source "lan" or "p2p", size the NAR's size (-1 if
// not known yet). Call Add as bytes arrive and Done at the end.
func (o *Ops) StartTransfer(id, storePath, source string, size int64) *Transfer {
	if o == nil {
		return nil
	}
	return o.startTransfer("down", id, storePath, source, "", size)
}

func (o *Ops) startTransfer(direction, id, storePath, source, peer string, size int64) *Transfer {
	n := o.nextID.Add(1)
	if id == "" {
		id = direction + "-" + strconv.FormatInt(n, 10)
	}
	t := &Transfer{o: o, id: id, direction: direction, source: source, size: size, started: time.Now(), peer: peer}
	if len(storePath) == 32 {
		t.hash = storePath
	} else {
		t.storePath = storePath
	}
	o.tmu.Lock()
	o.transfers[t] = struct{}{}
	o.tmu.Unlock()
	o.stats.transfers.Add(1)
	o.metrics.transfersStarted.Inc()
	return t
}

// Add records n more bytes transferred.
func (t *Transfer) Add(n int64) {
	if t == nil || n <= 0 {
		return
	}
	t.done.Add(n)
}

// SetPeer names the peer the bytes come from (it may change on resumption).
func (t *Transfer) SetPeer(peer string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.peer = peer
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
		o.metrics.transfersFailed.Inc()
	}
	o.tmu.Lock()
	delete(o.transfers, t)
	o.recent = append(o.recent, info)
	if len(o.recent) > recentTransfers {
		o.recent = slices.Delete(o.recent, 0, len(o.recent)-recentTransfers)
	}
	o.tmu.Unlock()

	what := info.StorePath
	if what == "" {
		if what = o.pathName(context.Background(), info.Hash); what == "" {
			what = info.Hash
		}
	}
	who := info.Source
	if info.Peer != "" {
		who += " " + shortID(info.Peer)
	}
	switch {
	case err != nil && info.Direction == "up":
		o.Activity(fmt.Sprintf("sending %s to %s broke off after %s: %v", what, who, humanBytes(info.Done), err))
	case err != nil:
		o.Activity(fmt.Sprintf("fetching %s from %s failed after %s: %v", what, who, humanBytes(info.Done), err))
	case info.Direction == "up":
		o.Activity(fmt.Sprintf("sent %s (%s) to %s in %s", what, humanBytes(info.Done), info.Peer, roundDuration(info.ElapsedS)))
	default:
		o.Activity(fmt.Sprintf("fetched %s (%s) from %s in %s", what, humanBytes(info.Done), who, roundDuration(info.ElapsedS)))
	}
}

func (t *Transfer) info(now time.Time) TransferInfo {
	t.mu.Lock()
	storePath, peer, size := t.storePath, t.peer, t.size
	t.mu.Unlock()
	el := now.Sub(t.started).Seconds()
	done := t.done.Load()
	info := TransferInfo{
		ID: t.id, Direction: t.direction, StorePath: storePath, Hash: t.hash,
		Source: t.source, Peer: peer, Size: size, Done: done, Started: t.started, ElapsedS: el,
	}
	if el > 0 {
		info.RateBps = float64(done) / el
	}
	return info
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
	recent = slices.Clone(o.recent)
	o.tmu.Unlock()
	slices.Reverse(recent)
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
	if recent == nil {
		recent = []TransferInfo{}
	}
	return inFlight, recent
}

// ActivityEntry is one line of recent activity.
type ActivityEntry struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
}

// activityRing keeps the last activitySize entries.
type activityRing struct {
	mu   sync.Mutex
	buf  [activitySize]ActivityEntry
	next int
	n    int
}

// Activity notes an event for the dashboard's recent activity (a peer came
// or went, a transfer ended, a rescan). Not for per-request events.
func (o *Ops) Activity(msg string) {
	if o == nil {
		return
	}
	a := &o.activity
	a.mu.Lock()
	a.buf[a.next] = ActivityEntry{Time: time.Now(), Msg: msg}
	a.next = (a.next + 1) % activitySize
	a.n = min(a.n+1, activitySize)
	a.mu.Unlock()
}

// recentActivity returns up to n entries, newest first.
func (o *Ops) recentActivity(n int) []ActivityEntry {
	a := &o.activity
	a.mu.Lock()
	defer a.mu.Unlock()
	n = min(n, a.n)
	out := make([]ActivityEntry, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, a.buf[(a.next-i+activitySize)%activitySize])
	}
	return out
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
