package tracker

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// Regression benchmarks of the tracker's two hot paths (issue 15), each
// measured against the limit it is aimed at, in the same run and
// interleaved (one round of each per iteration), with p99 latencies
// reported by b.ReportMetric:
//
//   - BenchmarkFindP99: GET /v1/find of a hash with 1,000 live holders
//     (1,000 source networks, 8 addresses each), benchConc finds at once
//     through the whole handler, against the bare indexed lookup that
//     reads an answer's worth of holders (100 rows of packages joined to
//     peers, no choice, no order), at the same concurrency; with the
//     hash's candidates fresh in the holder cache (cached), stale (stale:
//     served while a background read replaces them) or too old to be
//     used (cold: the finds wait for a read of the 1,000 holders' keys,
//     their standings in memory; first: nothing in memory, standings and
//     descriptions read too), and with the clock advancing 2 s a round
//     (every2s: the cold arm before the background reads);
//   - BenchmarkDeltaP99: delta announcements (10 hashes removed, 10
//     added) from benchConc peers at once through the whole handler
//     (signature checked, quotas on), as now (grouped, group.go; SQLite
//     checkpointing beside the writer) and as before (each in its own
//     transaction; SQLite checkpointing inside commits), against one
//     commit (a one-row UPDATE in a transaction of its own, nothing else
//     running).
//
//	go test -run '^$' -bench 'P99' -benchtime 300x ./internal/tracker/
//
// Metrics: the p99 of each in ms, and x-limit: a p99 over the limit's
// p99 (now: this code; before: as the tracker was before issue 15).

// benchConc is how many requests are in flight at once.
const benchConc = 8

// p99 is the 99th percentile of ds, in milliseconds.
func p99(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[(len(s)*99)/100-boolInt(len(s)%100 == 0)]) / 1e6
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// concurrently runs f(0..n-1) at once and returns how long each took.
func concurrently(n int, f func(i int)) []time.Duration {
	out := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			f(i)
			out[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return out
}

func BenchmarkFindP99(b *testing.B) {
	for _, be := range []backend{sqliteBackend, postgresBackend} {
		b.Run(be.name, func(b *testing.B) {
			s, reg, clock := newTestServer(b, be, time.Hour)
			h := hashN(1)
			addrs := make([]string, 8)
			for i := range addrs {
				addrs[i] = fmt.Sprintf("/ip4/198.51.100.%d/udp/%d/quic-v1", i+1, 4000+i)
			}
			for i := range 1000 {
				p := newSigner(b)
				from := fmt.Sprintf("10.%d.%d.7:1", i/250, i%250)
				p.announceFrom(b, s, ms(clock.Now()), from, addrs...)
				p.packagesFrom(b, s, ms(clock.Now())+1, from, []string{h})
			}
			bare := bareLookup(reg, h)
			ctx := context.Background()
			if n, err := bare(ctx); err != nil || n != 100 {
				b.Fatalf("bare lookup: %d rows, %v", n, err)
			}
			r := request("GET", "/v1/find/"+h, nil, "")
			// Before each round the clock advances, and the hash's entry
			// in the holder cache is made older than the clock says.
			for _, arm := range []struct {
				name         string
				advance, age time.Duration
				forget       bool // the peers' standings and descriptions
			}{
				// The candidates fresh in the holder cache.
				{"cached", time.Millisecond, 0, false},
				// The candidates past holderCacheTTL: served as they are
				// while one background read (begun by the round's first
				// find, beside the round's finds) replaces them; the next
				// round begins once it is done, as it would be in the 2 s
				// a real tracker has before the next one. Every round
				// overlaps a read: the worst case, not the usual one.
				{"stale", time.Millisecond, holderCacheTTL, false},
				// A miss: the candidates past holderCacheMaxAge, not
				// used; every round's finds wait for one read of them
				// (the hash's keys; the holders' standings are in
				// memory, as after any find that read them in the last
				// descTTL).
				{"cold", time.Millisecond, holderCacheMaxAge, false},
				// A miss with nothing in memory: the standings and
				// descriptions forgotten too, as at a tracker's first
				// find of these holders.
				{"first", time.Millisecond, holderCacheMaxAge, true},
				// The clock advances holderCacheTTL a round: how the cold
				// arm was defined before the background reads (every
				// round a miss then; stale now), with what comes with it:
				// peers' descriptions (descTTL, 30 s) expire every 15th
				// round, and those rounds describe them again.
				{"every2s", holderCacheTTL, 0, false},
			} {
				b.Run(arm.name, func(b *testing.B) {
					var finds, lookups []time.Duration
					for b.Loop() {
						clock.Advance(arm.advance)
						ageHolders(&s.holders, h, arm.age)
						if arm.forget {
							s.descs.mu.Lock()
							s.descs.m, s.descs.byID, s.descs.bytes = nil, nil, 0
							s.descs.mu.Unlock()
						}
						finds = append(finds, concurrently(benchConc, func(int) {
							if w := serve(s, r.Clone(ctx)); w.Code != http.StatusOK {
								panic(w.Body.String())
							}
						})...)
						waitLoad(&s.holders, h)
						lookups = append(lookups, concurrently(benchConc, func(int) {
							if _, err := bare(ctx); err != nil {
								panic(err)
							}
						})...)
					}
					b.ReportMetric(p99(finds), "find-p99-ms")
					b.ReportMetric(p99(lookups), "lookup-p99-ms")
					b.ReportMetric(p99(finds)/p99(lookups), "x-lookup")
				})
			}
		})
	}
}

// bareLookup is the limit a find is measured against: one indexed query
// reading an answer's worth of a hash's holders with their addresses.
func bareLookup(reg Registry, hash string) func(context.Context) (int, error) {
	hb, _ := decodeHashes([]string{hash})
	return func(ctx context.Context) (int, error) {
		switch r := reg.(type) {
		case *SQLite:
			ps, err := scanPeers(r.r.QueryContext(ctx, `SELECT p.peer_id, p.addrs, p.last_seen, p.packages, p.id, p.registered_at, p.net
				FROM packages k CROSS JOIN peers p ON p.id = k.peer
				WHERE k.hash = ? LIMIT 100`, hb[0]))
			return len(ps), err
		case *Postgres:
			ps, err := r.queryPeers(ctx, `SELECT p.peer_id, p.addrs, p.last_seen, p.packages, p.id, p.registered_at, p.net
				FROM packages k JOIN peers p ON p.id = k.peer
				WHERE k.hash = $1 LIMIT 100`, hb[0])
			return len(ps), err
		}
		panic("unknown registry")
	}
}

// ageHolders makes hash's entry in c, if any, d older.
func ageHolders(c *holderCache, hash string, d time.Duration) {
	if d == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[hash]
	if !ok {
		return
	}
	for i, ref := range c.order {
		if ref.hash == hash && ref.at.Equal(e.at) {
			c.order[i].at = e.at.Add(-d)
		}
	}
	e.at = e.at.Add(-d)
	c.m[hash] = e
}

// oneCommit is the limit a delta announcement is measured against: a
// transaction of one one-row UPDATE, committed.
func oneCommit(reg Registry) func(context.Context) error {
	switch r := reg.(type) {
	case *SQLite:
		return func(ctx context.Context) error {
			tx, err := r.w.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, `UPDATE peers SET last_ts = last_ts + 0 WHERE id = 1`); err != nil {
				return err
			}
			return tx.Commit()
		}
	case *Postgres:
		return func(ctx context.Context) error {
			_, err := r.w.Exec(ctx, `UPDATE peers SET last_ts = last_ts + 0 WHERE id = 1`)
			return err
		}
	}
	panic("unknown registry")
}

// setBefore puts reg in the shape it had before issue 15 (true: each
// update its own transaction; SQLite's writer checkpoints inside commits)
// or after (grouped; SQLite checkpoints beside the writer,
// RunCheckpoints); PostgreSQL's deltas are as they were. Only while no
// update is in flight.
func setBefore(tb testing.TB, reg Registry, before bool) {
	switch r := reg.(type) {
	case *SQLite:
		r.noGroup = before
		r.ckOff.Store(before)
		pages := checkpointValve
		if before {
			pages = 1000
		}
		if _, err := r.w.Exec(fmt.Sprintf(`PRAGMA wal_autocheckpoint = %d`, pages)); err != nil {
			tb.Fatal(err)
		}
	}
}

func BenchmarkDeltaP99(b *testing.B) {
	const peers, setSize = 256, 2000
	for _, be := range []backend{sqliteBackend, postgresBackend} {
		b.Run(be.name, func(b *testing.B) {
			s, reg, clock := newTestServer(b, be, time.Hour)
			// The quotas on (they cost a query), rate limits off.
			d := DefaultLimits()
			s.lim.HashesPerPeer, s.lim.HashesPerNet = d.HashesPerPeer, d.HashesPerNet
			type benchPeer struct {
				signer
				from string
				ts   int64
				x, y []string // toggled: one round adds x and removes y, the next the reverse
				flip bool
			}
			ps := make([]*benchPeer, peers)
			for i := range ps {
				p := &benchPeer{signer: newSigner(b), from: fmt.Sprintf("10.%d.%d.7:1", i/250, i%250), ts: ms(clock.Now())}
				set := hashes(i*(setSize+10), setSize)
				p.x, p.y = hashes(i*(setSize+10)+setSize, 10), set[:10]
				p.announceFrom(b, s, p.ts, p.from)
				p.ts++
				p.packagesFrom(b, s, p.ts, p.from, set)
				ps[i] = p
			}
			id := s.id
			// delta is peer p's next delta, signed.
			delta := func(p *benchPeer) *http.Request {
				p.ts++
				add, remove := p.x, p.y
				if p.flip {
					add, remove = remove, add
				}
				p.flip = !p.flip
				body := mustJSON(b, map[string]any{"peer_id": p.id.String(), "ts": p.ts, "full": false, "add": add, "remove": remove})
				r := request("POST", "/v1/packages", body, p.signV2(b, "POST", "/v1/packages", id, body))
				r.RemoteAddr = p.from
				return r
			}
			commit := oneCommit(reg)
			ctx := context.Background()
			next := 0
			if db, ok := reg.(*SQLite); ok {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); db.RunCheckpoints(ctx) }()
				b.Cleanup(func() { cancel(); <-done })
			}
			round := func(before bool) []time.Duration {
				setBefore(b, reg, before)
				reqs := make([]*http.Request, benchConc)
				for i := range reqs {
					reqs[i] = delta(ps[next%peers])
					next++
				}
				return concurrently(benchConc, func(i int) {
					if w := serve(s, reqs[i]); w.Code != http.StatusOK {
						panic(w.Body.String())
					}
				})
			}
			var now, before, commits []time.Duration
			for b.Loop() {
				now = append(now, round(false)...)
				before = append(before, round(true)...)
				for range benchConc {
					start := time.Now()
					if err := commit(ctx); err != nil {
						b.Fatal(err)
					}
					commits = append(commits, time.Since(start))
				}
			}
			setBefore(b, reg, false)
			b.ReportMetric(p99(now), "now-p99-ms")
			b.ReportMetric(p99(before), "before-p99-ms")
			b.ReportMetric(p99(commits), "commit-p99-ms")
			b.ReportMetric(p99(now)/p99(commits), "now-x-commit")
			b.ReportMetric(p99(before)/p99(commits), "before-x-commit")
		})
	}
}
