package p2p

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/swarm"
)

// serverObserver records what a Server tells its observer.
type serverObserver struct {
	mu       sync.Mutex
	answered []string
	uploads  []*uploadRecord
}

type uploadRecord struct {
	hash, peer string
	size       int64
	relayed    bool
	mu         sync.Mutex
	sent       int64
	done       bool
	err        error
}

func (o *serverObserver) Answered(kind, hash string, found bool, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.answered = append(o.answered, fmt.Sprintf("%s %s %v", kind, hash[:4], found))
}

func (o *serverObserver) Upload(hash, peer string, size int64, relayed bool) swarm.Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	u := &uploadRecord{hash: hash, peer: peer, size: size, relayed: relayed}
	o.uploads = append(o.uploads, u)
	return u
}

func (u *uploadRecord) Add(_ string, nar, _ int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sent += nar
}
func (u *uploadRecord) Done(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.done, u.err = true, err
}

// TestServerObserver: the server reports every answered request and every
// NAR it sends, byte by byte, to whom.
func TestServerObserver(t *testing.T) {
	server, client := newTestHost(t), newTestHost(t)
	st := newMemStore()
	obs := &serverObserver{}
	srv := serve(server, st, 0, obs, testLog(t))
	t.Cleanup(func() { srv.Close() })
	know(client, server)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hash := randomHash(t)
	data := make([]byte, 200<<10)
	e := st.add(hash, data)
	absent := randomHash(t)
	if _, err := QueryNarInfo(ctx, client, server.ID(), hash); err != nil {
		t.Fatal(err)
	}
	QueryNarInfo(ctx, client, server.ID(), absent)
	_, body, err := OpenNAR(ctx, client, server.ID(), hash, narHashOf(e), 1000, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, body); err != nil || n != int64(len(data))-1000 {
		t.Fatalf("NAR body: %d bytes, %v", n, err)
	}
	body.Close()
	OpenNAR(ctx, client, server.ID(), absent, narHashOf(e), 0, 0, true)

	// The server reports after the asker has its answer: wait a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		obs.mu.Lock()
		n := len(obs.answered)
		obs.mu.Unlock()
		if n == 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	want := fmt.Sprint([]string{"narinfo " + hash[:4] + " true", "narinfo " + absent[:4] + " false", "nar " + hash[:4] + " true", "nar " + absent[:4] + " false"})
	if got := fmt.Sprint(obs.answered); got != want {
		t.Errorf("answered %s, want %s", got, want)
	}
	if len(obs.uploads) != 1 {
		t.Fatalf("%d uploads observed, want 1", len(obs.uploads))
	}
	u := obs.uploads[0]
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.hash != hash || u.peer != client.ID().String() || u.size != int64(len(data))-1000 || u.relayed ||
		u.sent != u.size || !u.done || u.err != nil {
		t.Errorf("upload %+v", u)
	}
}
