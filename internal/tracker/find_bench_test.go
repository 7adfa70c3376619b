package tracker

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkFind: GET /v1/find of a hash with 1,000 live holders (each
// announcing 8 addresses), spread over 1,000 source networks or all from
// one, through the whole handler (a find a millisecond, and cold: every
// find reading the candidates); and, for comparison, the query the
// tracker used before holder selection (the 100 most recently seen).
//
//	go test -run '^$' -bench BenchmarkFind -benchtime 2000x ./internal/tracker/
func BenchmarkFind(b *testing.B) {
	for _, be := range []backend{sqliteBackend, postgresBackend} {
		for _, nets := range []int{1000, 1} {
			b.Run(fmt.Sprintf("%s/1000holders/%dnets", be.name, nets), func(b *testing.B) {
				s, reg, clock := newTestServer(b, be, time.Hour)
				h := hashN(1)
				addrs := make([]string, 8)
				for i := range addrs {
					addrs[i] = fmt.Sprintf("/ip4/198.51.100.%d/udp/%d/quic-v1", i+1, 4000+i)
				}
				for i := range 1000 {
					p := newSigner(b)
					from := fmt.Sprintf("10.%d.%d.7:1", i/250, i%250)
					if nets == 1 {
						from = "10.0.0.7:1"
					}
					p.announceFrom(b, s, ms(clock.Now()), from, addrs...)
					p.packagesFrom(b, s, ms(clock.Now())+1, from, []string{h})
				}
				r := request("GET", "/v1/find/"+h, nil, "")
				if n := len(findIDs(b, s, h)); n != 100 {
					b.Fatalf("%d holders found", n)
				}
				// A find a millisecond: the popular hash's candidates come
				// from the holder cache most of the time.
				b.Run("handler", func(b *testing.B) {
					for b.Loop() {
						clock.Advance(time.Millisecond)
						serve(s, r.Clone(context.Background()))
					}
				})
				// Every find reads the candidates: the clock advances 2 s
				// a find (as before the background reads), and the entry
				// is made older still, too old to be used.
				b.Run("handler-cold", func(b *testing.B) {
					for b.Loop() {
						clock.Advance(holderCacheTTL)
						ageHolders(&s.holders, h, holderCacheMaxAge-holderCacheTTL)
						serve(s, r.Clone(context.Background()))
					}
				})
				b.Run("old-query", func(b *testing.B) {
					ctx := context.Background()
					for b.Loop() {
						if _, err := oldFind(ctx, reg, h, clock.Now().Add(-time.Hour)); err != nil {
							b.Fatal(err)
						}
					}
				})
			})
		}
	}
}

// oldFind is the find of the tracker before holder selection: the 100
// most recently seen holders, read and sorted by the database.
func oldFind(ctx context.Context, reg Registry, hash string, liveSince time.Time) (int, error) {
	hb, _ := decodeHashes([]string{hash})
	switch r := reg.(type) {
	case *SQLite:
		ps, err := scanPeers(r.r.QueryContext(ctx, `SELECT p.peer_id, p.addrs, p.last_seen, p.packages, p.id
			FROM packages k CROSS JOIN peers p ON p.id = k.peer
			WHERE k.hash = ? AND p.last_seen >= ?
			ORDER BY p.last_seen DESC, p.id LIMIT 100`, hb[0], liveSince.UnixMilli()))
		return len(ps), err
	case *Postgres:
		ps, err := r.queryPeers(ctx, `SELECT p.peer_id, p.addrs, p.last_seen, p.packages, p.id
			FROM packages k JOIN peers p ON p.id = k.peer
			WHERE k.hash = $1 AND p.last_seen >= $2
			ORDER BY p.last_seen DESC, p.id LIMIT 100`, hb[0], liveSince.UnixMilli())
		return len(ps), err
	}
	return 0, nil
}
