package ops

import (
	"sync"
	"sync/atomic"
	"time"
)

// The series of the history, per minute.
const (
	seriesSent     = iota // NAR bytes sent to peers
	seriesReceived        // NAR bytes received from peers
	seriesHits            // narinfo lookups answered with a path (this store's and the peers')
	seriesMisses          // narinfo lookups answered 404
	nSeries
)

// historyMinutes is how far back the history goes.
const historyMinutes = 60

// history keeps per-minute totals of the last hour in a ring of slots,
// each tagged with its minute; adding is a few atomic operations, and a
// slot from an older hour is cleared when its minute comes round again.
type history struct {
	mu    sync.Mutex // serialises clearing a slot for a new minute
	slots [historyMinutes]historySlot
}

type historySlot struct {
	minute atomic.Int64 // Unix minutes; the slot counts for this minute only
	v      [nSeries]atomic.Int64
}

// add adds n to series at now.
func (h *history) add(now time.Time, series int, n int64) {
	m := now.Unix() / 60
	s := &h.slots[m%historyMinutes]
	if s.minute.Load() != m {
		h.mu.Lock()
		if s.minute.Load() != m {
			for i := range s.v {
				s.v[i].Store(0)
			}
			s.minute.Store(m)
		}
		h.mu.Unlock()
	}
	s.v[series].Add(n)
}

// History is the last hour, minute by minute, oldest first; the last
// minute is the current one, still counting.
type History struct {
	Start         time.Time `json:"start"`  // the first minute's start
	StepS         int       `json:"step_s"` // 60
	SentBytes     []int64   `json:"sent_bytes"`
	ReceivedBytes []int64   `json:"received_bytes"`
	Hits          []int64   `json:"hits"`
	Misses        []int64   `json:"misses"`
}

// snapshot returns the history as of now.
func (h *history) snapshot(now time.Time) History {
	last := now.Unix() / 60
	first := last - historyMinutes + 1
	out := History{
		Start:         time.Unix(first*60, 0).UTC(),
		StepS:         60,
		SentBytes:     make([]int64, historyMinutes),
		ReceivedBytes: make([]int64, historyMinutes),
		Hits:          make([]int64, historyMinutes),
		Misses:        make([]int64, historyMinutes),
	}
	for i := range historyMinutes {
		m := first + int64(i)
		s := &h.slots[m%historyMinutes]
		if s.minute.Load() != m {
			continue
		}
		out.SentBytes[i] = s.v[seriesSent].Load()
		out.ReceivedBytes[i] = s.v[seriesReceived].Load()
		out.Hits[i] = s.v[seriesHits].Load()
		out.Misses[i] = s.v[seriesMisses].Load()
	}
	return out
}
