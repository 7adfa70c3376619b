package daemon

import (
	"fmt"
	"testing"
)

func TestActivityNotes(t *testing.T) {
	peerID := "12D3KooWQnwEGNqcM2nAcPtRR9rAX8Hrg4k9kJLCHoTWpMnbhvT9"
	none := activityState{peers: map[string]string{}, shared: -1, announced: -1}
	tests := []struct {
		name      string
		prev, cur activityState
		due       bool
		want      []string
		// keep: the counts cur must carry on (a change not reported yet
		// stays to be reported).
		keepShared, keepAnnounced int
	}{
		{"nothing yet", none, none, true, nil, -1, -1},
		{
			"peers come, first scan done, tracker told",
			none,
			activityState{peers: map[string]string{peerID: "p2p, relayed", "10.0.0.2:12304": "lan"}, shared: 120, announced: 120},
			false,
			[]string{"peer 10.0.0.2:12304 connected (lan)", "peer …pMnbhvT9 connected (p2p, relayed)",
				"sharing 120 store paths (filter upstream)", "the tracker knows 120 of our store paths"},
			120, 120,
		},
		{
			"counts change but are not due",
			activityState{peers: map[string]string{}, shared: 120, announced: 120},
			activityState{peers: map[string]string{}, shared: 130, announced: 125},
			false, nil, 120, 120,
		},
		{
			"counts change and are due; a peer goes; the tracker fails",
			activityState{peers: map[string]string{peerID: "p2p, direct"}, shared: 120, announced: 120},
			activityState{peers: map[string]string{}, shared: 130, announced: 125, trackerErr: "connection refused"},
			true,
			[]string{"peer …pMnbhvT9 gone (p2p, direct)", "sharing 130 store paths (+10)", "the tracker knows 125 of our store paths", "tracker: connection refused"},
			130, 125,
		},
		{
			"the tracker is back",
			activityState{peers: map[string]string{}, shared: 1, announced: 1, trackerErr: "x"},
			activityState{peers: map[string]string{}, shared: 1, announced: 1},
			false, []string{"the tracker answers again"}, 1, 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := tt.cur
			got := activityNotes(tt.prev, &cur, tt.due, "upstream")
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Errorf("notes\n%q\nwant\n%q", got, tt.want)
			}
			if cur.shared != tt.keepShared || cur.announced != tt.keepAnnounced {
				t.Errorf("carried counts %d, %d; want %d, %d", cur.shared, cur.announced, tt.keepShared, tt.keepAnnounced)
			}
		})
	}
}
