package lan

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A burst of requests to one peer opens at most maxConnsPerPeer
// connections to it; the rest wait for one, and every request is answered.
func TestHTTPClientBoundsConnectionsPerPeer(t *testing.T) {
	var open, most atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			n := open.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()

	c := newHTTPClient()
	const burst = 3 * maxConnsPerPeer
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range burst {
		wg.Go(func() {
			resp, err := c.Get(srv.URL)
			if err != nil {
				failed.Add(1)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed", failed.Load(), burst)
	}
	if m := most.Load(); m > maxConnsPerPeer || m < 2 {
		t.Errorf("%d connections at once to one peer for %d requests, want 2..%d", m, burst, maxConnsPerPeer)
	}
}
