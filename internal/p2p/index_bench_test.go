package p2p

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/summary"
	"github.com/peerix/peerix/internal/swarm"
	"github.com/peerix/peerix/internal/tracker"
	"github.com/peerix/peerix/internal/tracker/trackerapi"
)

// benchFleet is the scale: 1,000 peers x 20,000 hashes, sharing
// none (the largest filter: 20 M distinct hashes).
const benchFleet = 1000 * 20000

var (
	bigFilterOnce sync.Once
	bigFilter     *summary.Filter
)

// fleetFilter is the tracker's filter for benchFleet random hashes.
func fleetFilter(b *testing.B) *summary.Filter {
	bigFilterOnce.Do(func() {
		start := time.Now()
		f := summary.NewFilter(summary.Size(benchFleet), summary.DefaultProbes)
		r := mrand.New(mrand.NewPCG(42, 42))
		var h [summary.HashBytes]byte
		for range benchFleet {
			binary.LittleEndian.PutUint64(h[0:], r.Uint64())
			binary.LittleEndian.PutUint64(h[8:], r.Uint64())
			binary.LittleEndian.PutUint32(h[16:], r.Uint32())
			f.Add(h)
		}
		b.Logf("filter of %d hashes: %d bytes (%.1f MiB), estimated false-positive rate %.4f, built in %v",
			benchFleet, f.Bits()/8, float64(f.Bits()/8)/(1<<20), f.FalsePositiveRate(), time.Since(start).Round(time.Millisecond))
		bigFilter = f
	})
	return bigFilter
}

// foreverIndex hands out one filter, then holds every poll until ctx ends:
// a tracker with nothing new. It is the summary.Source of the benchmark's
// Follower.
type foreverIndex struct{ f *summary.Filter }

func (s foreverIndex) Update(ctx context.Context, _, _ uint64, have bool, _ time.Duration) (*summary.Update, error) {
	if !have {
		return &summary.Update{Epoch: 1, Filter: s.f}, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// randomHashes makes n valid hash parts (of paths nobody holds).
func randomHashes(n int) []string {
	out := make([]string, n)
	b := make([]byte, 20)
	for i := range out {
		rand.Read(b)
		out[i] = nixbase32.EncodeToString(b)
	}
	return out
}

// BenchmarkMiss measures a miss, a hash no peer holds, the daemon's most
// common lookup: through the P2P Store ("store") and through the daemon's
// HTTP handler on loopback as Nix asks it ("http"), with the local index of
// the fleet ("index") and without, each miss asking a tracker on
// loopback ("tracker"). Run with -benchtime=100000x; it reports the
// latency distribution.
func BenchmarkMiss(b *testing.B) {
	ctx := context.Background()
	for _, via := range []string{"index", "tracker"} {
		for _, path := range []string{"store", "http"} {
			b.Run(via+"/"+path, func(b *testing.B) {
				h := newTestHost(b)
				key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
				s := NewStore(h, TrackerClient{trackerapi.NewClient(benchTracker(b), key)}, swarm.Options{}, testLog(b))
				if via == "index" {
					ix := summary.NewFollower(foreverIndex{fleetFilter(b)}, summary.FollowerOptions{Log: testLog(b)})
					ictx, cancel := context.WithCancel(ctx)
					done := make(chan struct{})
					go func() { defer close(done); ix.Run(ictx) }()
					b.Cleanup(func() { cancel(); <-done })
					for !ix.Current() {
						time.Sleep(time.Millisecond)
					}
					s.UseIndex(ix) // its false positives ask the tracker

					b.Cleanup(func() {
						if st := ix.Stats(); st.Absent+st.Passed < uint64(b.N) {
							b.Errorf("index stats %+v after %d lookups", st, b.N)
						}
					})
				}
				lookup := func(hash string) {
					if _, err := s.NarInfo(ctx, hash); !errors.Is(err, store.ErrNotFound) {
						b.Fatalf("miss: %v", err)
					}
				}
				if path == "http" {
					srv := httptest.NewServer(&cache.Server{Remote: s, StoreDir: "/nix/store", Log: testLog(b)})
					b.Cleanup(srv.Close)
					client := srv.Client()
					lookup = func(hash string) {
						resp, err := client.Get(srv.URL + "/" + hash + ".narinfo")
						if err != nil {
							b.Fatal(err)
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusNotFound {
							b.Fatalf("miss: HTTP %d", resp.StatusCode)
						}
					}
				}
				hashes := randomHashes(b.N)
				lat := make([]time.Duration, b.N)
				b.ResetTimer()
				for i := range b.N {
					start := time.Now()
					lookup(hashes[i])
					lat[i] = time.Since(start)
				}
				b.StopTimer()
				reportLatency(b, lat)
			})
		}
	}
}

// reportLatency reports the distribution of lat: p50, p99, p99.9, max
// and mean, in µs.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(int(p*float64(len(lat))), len(lat)-1)] }
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(q(0.50)), "p50-µs")
	b.ReportMetric(us(q(0.99)), "p99-µs")
	b.ReportMetric(us(q(0.999)), "p99.9-µs")
	b.ReportMetric(us(lat[len(lat)-1]), "max-µs")
	b.ReportMetric(us(sum/time.Duration(len(lat))), "mean-µs")
	if len(lat) >= 10000 {
		b.Logf("%d lookups: p50 %v, p99 %v, p99.9 %v, max %v, mean %v", len(lat),
			q(0.5), q(0.99), q(0.999), lat[len(lat)-1], sum/time.Duration(len(lat)))
	}
}

// benchTracker starts a tracker on loopback holding 20 peers x 1,000
// hashes (a miss costs the same whatever it holds: one index probe).
func benchTracker(b *testing.B) string {
	reg, err := tracker.OpenSQLite(b.TempDir() + "/tracker.db")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reg.Close() })
	srv := httptest.NewServer(tracker.NewServer(reg, tracker.ServerOptions{TTL: time.Hour, Log: testLog(b)}))
	b.Cleanup(srv.Close)
	ctx := context.Background()
	for i := range 20 {
		key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		c := trackerapi.NewClient(srv.URL, key)
		if _, err := c.Announce(ctx, nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Packages(ctx, true, randomHashes(1000), nil); err != nil {
			b.Fatal(fmt.Errorf("peer %d: %w", i, err))
		}
	}
	return srv.URL
}
