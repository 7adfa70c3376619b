package cache_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/peerix/peerix/internal/cache"
	"github.com/peerix/peerix/internal/store"
)

// fakeStore is a store.Store with fixed narinfos and NARs that records
// what it was asked.
type fakeStore struct {
	name     string
	narinfos map[string]*narinfo.NarInfo // by hash part
	nars     map[string][]byte           // by NAR URL
	// err, if set, is returned for every request.
	err error
	// failAfter, if > 0, makes NAR streams fail after that many bytes
	// (counted from the start of the NAR).
	failAfter int64
	// shortBy, if > 0, makes NAR streams end cleanly that many bytes early.
	shortBy int64
	// unknownSize makes NARs report Size -1 (streamed chunked).
	unknownSize bool
	// noRecord turns call recording off (benchmarks).
	noRecord bool

	mu    sync.Mutex
	calls []string
}

func (f *fakeStore) record(call string) {
	if f.noRecord {
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeStore) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeStore) NarInfo(_ context.Context, hash string) (*narinfo.NarInfo, error) {
	f.record("narinfo " + hash)
	if f.err != nil {
		return nil, f.err
	}
	if ni, ok := f.narinfos[hash]; ok {
		return ni, nil
	}
	return nil, store.ErrNotFound
}

var errMidway = errors.New("peer went away mid-transfer")

func (f *fakeStore) NAR(_ context.Context, url string, offset int64) (*store.NAR, error) {
	f.record("nar " + url)
	if f.err != nil {
		return nil, f.err
	}
	data, ok := f.nars[url]
	if !ok {
		return nil, store.ErrNotFound
	}
	if offset < 0 || offset > int64(len(data)) {
		return nil, store.ErrOffset
	}
	size := int64(len(data))
	var r io.Reader = bytes.NewReader(data[offset:])
	switch {
	case f.failAfter > 0:
		r = io.MultiReader(io.LimitReader(r, max(0, f.failAfter-offset)), errReader{errMidway})
	case f.shortBy > 0:
		r = io.LimitReader(r, max(0, size-f.shortBy-offset))
	}
	if f.unknownSize {
		size = -1
	}
	return &store.NAR{Size: size, ReadCloser: io.NopCloser(r)}, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// nextHandler stands in for the daemon's operator routes.
var nextHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Next", "1")
	io.WriteString(w, "next "+r.URL.Path)
})

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// request parses a raw request exactly as net/http's server does, so odd
// request targets reach ServeHTTP as they would in production. ok is false
// when the server would refuse the request line itself (with a 400).
func request(t testing.TB, method, target, remoteAddr string, header http.Header) (*http.Request, bool) {
	t.Helper()
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n")
	for k, vs := range header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(b.String())))
	if err != nil {
		return nil, false
	}
	r.RemoteAddr = remoteAddr
	return r, true
}

// do serves one request with a recorder. A request line net/http refuses
// is answered 400, as the server does.
func do(t testing.TB, s *cache.Server, method, target, remoteAddr string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	r, ok := request(t, method, target, remoteAddr, header)
	if !ok {
		rec.Code = http.StatusBadRequest
		return rec
	}
	s.ServeHTTP(rec, r)
	return rec
}

// discardWriter is a minimal ResponseWriter for benchmarks.
type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }
