package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Timing of the activity feed's watcher.
const (
	// activityPoll: how often the daemon looks for changes to report.
	activityPoll = 2 * time.Second
	// countEvery: a count that keeps changing (paths shared, paths the
	// tracker knows: Nix registers paths by the hundred while it builds) is
	// reported at most this often.
	countEvery = time.Minute
)

// activityState is what the watcher compares from one look to the next.
type activityState struct {
	peers      map[string]string // connected peers: ID → how ("lan", "p2p, direct", "p2p, relayed")
	shared     int               // paths shared; -1 before the inventory's first scan
	announced  int               // paths the tracker knows from us; -1 without a tracker
	trackerErr string            // the announcer's last error
}

// activityNotes says, in lines for the activity feed, what changed from
// prev to cur. Counts that changed are reported only when due (the caller
// decides: at most every countEvery); otherwise cur keeps prev's count, so
// the change is reported later.
func activityNotes(prev activityState, cur *activityState, countsDue bool, filter string) []string {
	var notes []string
	for _, id := range slices.Sorted(maps.Keys(cur.peers)) {
		if _, ok := prev.peers[id]; !ok {
			notes = append(notes, fmt.Sprintf("peer %s connected (%s)", shortPeer(id), cur.peers[id]))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(prev.peers)) {
		if _, ok := cur.peers[id]; !ok {
			notes = append(notes, fmt.Sprintf("peer %s gone (%s)", shortPeer(id), prev.peers[id]))
		}
	}
	switch {
	case cur.shared == prev.shared:
	case prev.shared < 0:
		notes = append(notes, fmt.Sprintf("sharing %d store paths (filter %s)", cur.shared, filter))
	case countsDue:
		notes = append(notes, fmt.Sprintf("sharing %d store paths (%+d)", cur.shared, cur.shared-prev.shared))
	default:
		cur.shared = prev.shared
	}
	switch {
	case cur.announced == prev.announced || cur.announced < 0:
	case prev.announced <= 0 || countsDue:
		notes = append(notes, fmt.Sprintf("the tracker knows %d of our store paths", cur.announced))
	default:
		cur.announced = prev.announced
	}
	switch {
	case cur.trackerErr == prev.trackerErr:
	case cur.trackerErr == "":
		notes = append(notes, "the tracker answers again")
	default:
		notes = append(notes, "tracker: "+cur.trackerErr)
	}
	return notes
}

// shortPeer abbreviates libp2p peer IDs as the dashboard does; LAN
// addresses stay whole.
func shortPeer(id string) string {
	if len(id) > 20 && (id[:2] == "12" || id[:2] == "Qm") {
		return "…" + id[len(id)-8:]
	}
	return id
}

// activity looks at the daemon now.
func (d *Daemon) activity() activityState {
	st := activityState{peers: map[string]string{}, shared: -1, announced: -1}
	for _, p := range d.peers() {
		if !p.Connected {
			continue
		}
		how := p.Source
		if p.Source == "p2p" {
			how = "p2p, direct"
			if !p.Direct {
				how = "p2p, relayed"
			}
		}
		st.peers[p.ID] = how
	}
	select {
	case <-d.inventory.Ready():
		st.shared = d.inventory.Len()
	default:
	}
	if d.p2p != nil && d.p2p.Announcer != nil {
		a := d.p2p.Announcer.Stats()
		st.announced, st.trackerErr = a.Announced, a.LastError
	}
	return st
}

// watchActivity notes in the dashboard's activity feed what changes while
// the daemon runs: peers that come and go, how many paths it shares, what
// the tracker knows, tracker errors. Transfers, lies and rescans note
// themselves.
func (d *Daemon) watchActivity(ctx context.Context) {
	t := time.NewTicker(activityPoll)
	defer t.Stop()
	prev := activityState{peers: map[string]string{}, shared: -1, announced: -1}
	var countsAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := d.activity()
		due := time.Since(countsAt) >= countEvery
		sharedBefore, announcedBefore := prev.shared, prev.announced
		for _, note := range activityNotes(prev, &cur, due, d.cfg.Filter) {
			d.ops.Activity(note)
		}
		if cur.shared != sharedBefore || cur.announced != announcedBefore {
			countsAt = time.Now()
		}
		prev = cur
	}
}
