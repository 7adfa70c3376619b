package httploop_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/peerix/peerix/internal/httploop"
)

// testServer runs a loop and, behind it, net/http, both with handler;
// every path under /fast/ is the loop's.
type testServer struct {
	addr  string
	loop  *httploop.Server
	http  *http.Server
	state atomic.Value // last http.ConnState reported
}

func start(t *testing.T, handler http.Handler) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String()}
	ts.loop = httploop.New(httploop.Options{
		Handler:           handler,
		Fast:              func(p string) bool { return strings.HasPrefix(p, "/fast/") },
		KeepHeaders:       []string{"Range"},
		ReadHeaderTimeout: time.Second,
		IdleTimeout:       5 * time.Second,
		ConnState:         func(_ net.Conn, s http.ConnState) { ts.state.Store(s) },
	})
	ts.http = &http.Server{Handler: handler, ReadHeaderTimeout: time.Second}
	loopDone, httpDone := make(chan error, 1), make(chan error, 1)
	go func() { loopDone <- ts.loop.Serve(ln) }()
	go func() { httpDone <- ts.http.Serve(ts.loop.HandOff()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.loop.Shutdown(ctx); err != nil {
			t.Errorf("loop shutdown: %v", err)
		}
		ts.http.Shutdown(ctx)
		if err := <-loopDone; !errors.Is(err, httploop.ErrServerClosed) {
			t.Errorf("loop Serve: %v", err)
		}
		if err := <-httpDone; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("http Serve: %v", err)
		}
	})
	return ts
}

// whoServes says who answered: net/http puts its Server in the context.
func whoServes(r *http.Request) string {
	if r.Context().Value(http.ServerContextKey) != nil {
		return "net/http"
	}
	return "loop"
}

func echo() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := whoServes(r) + " " + r.Method + " " + r.URL.Path + " range=" + r.Header.Get("Range")
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		io.WriteString(w, body)
	})
}

// exchange writes raw on conn and reads one response.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return readResponse(t, br)
}

func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	resp.Body.Close()
	return resp, string(body)
}

func dial(t *testing.T, ts *testServer) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func TestKeepAliveAndHandOff(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	c, br := dial(t, ts)
	for i := range 3 {
		resp, body := exchange(t, c, br, "GET /fast/a HTTP/1.1\r\nHost: h\r\nRange: bytes=1-\r\nUser-Agent: test\r\n\r\n")
		if resp.StatusCode != 200 || body != "loop GET /fast/a range=bytes=1-" || resp.Header.Get("Date") == "" {
			t.Fatalf("request %d: %d %q %v", i, resp.StatusCode, body, resp.Header)
		}
	}
	// A slow route: the connection, this request included, is net/http's.
	if _, body := exchange(t, c, br, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"); body != "net/http GET /slow range=" {
		t.Fatalf("slow route: %q", body)
	}
	if _, body := exchange(t, c, br, "GET /fast/a HTTP/1.1\r\nHost: h\r\n\r\n"); body != "net/http GET /fast/a range=" {
		t.Fatalf("after the hand-off: %q", body)
	}
}

func TestHandOffOdd(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	tests := []struct {
		name, raw, want string
		status          int
	}{
		{"head", "HEAD /fast/a HTTP/1.1\r\nHost: h\r\n\r\n", "", 200},
		{"body", "GET /fast/a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", "net/http GET /fast/a range=", 200},
		{"query", "GET /fast/a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", "net/http GET /fast/a range=", 200},
		{"escaped", "GET /fast/%61 HTTP/1.1\r\nHost: h\r\n\r\n", "net/http GET /fast/a range=", 200},
		{"malformed header", "GET /fast/a HTTP/1.1\r\nHost: h\r\nBad header\r\n\r\n", "", 400},
		{"no host", "GET /fast/a HTTP/1.1\r\n\r\n", "", 400},
		{"big header", "GET /fast/a HTTP/1.1\r\nHost: h\r\nX-Big: " + strings.Repeat("x", 6000) + "\r\n\r\n", "net/http GET /fast/a range=", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, br := dial(t, ts)
			if _, err := io.WriteString(c, tt.raw); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, &http.Request{Method: strings.Fields(tt.raw)[0]})
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || (tt.want != "" && string(body) != tt.want) {
				t.Fatalf("%d %q, want %d %q", resp.StatusCode, body, tt.status, tt.want)
			}
		})
	}
}

func TestPipelinedAndSplit(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	c, br := dial(t, ts)
	// Two requests in one write, then one in pieces.
	io.WriteString(c, "GET /fast/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /fast/2 HTTP/1.1\r\nHost: h\r\n\r\n")
	for _, want := range []string{"loop GET /fast/1 range=", "loop GET /fast/2 range="} {
		if _, body := readResponse(t, br); body != want {
			t.Fatalf("%q, want %q", body, want)
		}
	}
	for _, piece := range []string{"GET /fa", "st/3 HTTP/1.1\r\nHo", "st: h\r\n", "\r\n"} {
		io.WriteString(c, piece)
		time.Sleep(10 * time.Millisecond)
	}
	if _, body := readResponse(t, br); body != "loop GET /fast/3 range=" {
		t.Fatalf("split request: %q", body)
	}
}

func TestBodies(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789abcdef", 8<<10) // 128 KiB
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fast/small-unsized":
			io.WriteString(w, "hello")
		case "/fast/big-unsized": // chunked
			for i := 0; i < len(big); i += 1000 {
				io.WriteString(w, big[i:min(i+1000, len(big))])
			}
		case "/fast/big-sized":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			io.WriteString(w, big)
		case "/fast/file": // ReadFrom, as sendfile
			f, _ := os.Open(file)
			defer f.Close()
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: int64(len(big))})
		case "/fast/error":
			http.Error(w, "nope", http.StatusNotFound)
		}
	}))
	c, br := dial(t, ts)
	tests := []struct {
		path, want string
		status     int
		chunked    bool
	}{
		{"/fast/small-unsized", "hello", 200, false},
		{"/fast/big-unsized", big, 200, true},
		{"/fast/big-sized", big, 200, false},
		{"/fast/file", big, 200, false},
		{"/fast/error", "nope\n", 404, false},
	}
	for _, tt := range tests {
		resp, body := exchange(t, c, br, "GET "+tt.path+" HTTP/1.1\r\nHost: h\r\n\r\n")
		chunked := len(resp.TransferEncoding) > 0
		if resp.StatusCode != tt.status || body != tt.want || chunked != tt.chunked {
			t.Fatalf("%s: %d, %d bytes, chunked %v; want %d, %d bytes, chunked %v",
				tt.path, resp.StatusCode, len(body), chunked, tt.status, len(tt.want), tt.chunked)
		}
		if ct := resp.Header.Get("Content-Type"); ct == "" {
			t.Errorf("%s: no Content-Type", tt.path)
		}
	}
}

// A response cut short (a shorter body than declared, or an aborted
// handler) must end in a closed connection, never a complete-looking one.
func TestShortBodiesClose(t *testing.T) {
	t.Parallel()
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		io.WriteString(w, strings.Repeat("x", 50000))
		if r.URL.Path == "/fast/abort" {
			panic(http.ErrAbortHandler)
		}
	}))
	for _, path := range []string{"/fast/short", "/fast/abort"} {
		c, br := dial(t, ts)
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: h\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil || n != 50000 {
			t.Fatalf("%s: read %d bytes, err %v; want 50000 and an unexpected EOF", path, n, err)
		}
	}
}

func TestConnectionClose(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	c, br := dial(t, ts)
	resp, _ := exchange(t, c, br, "GET /fast/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	if !resp.Close {
		t.Fatal("no Connection: close in the response")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection still open: %v", err)
	}
}

// A connection that began a request and stops is closed after
// ReadHeaderTimeout; net/http does the same to one handed off.
func TestSlowHeaderTimesOut(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	c, br := dial(t, ts)
	io.WriteString(c, "GET /fast/a HTTP/1.1\r\nHost: h\r\n")
	begun := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
	if waited := time.Since(begun); waited > 4*time.Second {
		t.Fatalf("closed after %v, want about 1 s", waited)
	}
}

func TestShutdownClosesIdleAndFinishesActive(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fast/wait" {
			<-release
		}
		io.WriteString(w, "done")
	}))
	idle, idleBR := dial(t, ts)
	exchange(t, idle, idleBR, "GET /fast/a HTTP/1.1\r\nHost: h\r\n\r\n")
	busy, busyBR := dial(t, ts)
	io.WriteString(busy, "GET /fast/wait HTTP/1.1\r\nHost: h\r\n\r\n")
	for ts.state.Load() != http.StateActive {
		time.Sleep(time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() { shut <- ts.loop.Shutdown(context.Background()) }()
	if _, err := idleBR.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	close(release)
	resp, body := readResponse(t, busyBR)
	if body != "done" || !resp.Close {
		t.Fatalf("active request: %q close=%v", body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

// Go's own client, many requests over a few connections, checks the
// framing end to end.
func TestGoClient(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for i := range 200 {
		resp, err := client.Get("http://" + ts.addr + "/fast/x")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "loop GET /fast/x range=" {
			t.Fatalf("request %d: %q", i, body)
		}
	}
}

// A new connection that sends nothing is closed after ReadHeaderTimeout,
// as net/http does (IdleTimeout is only for the wait between requests).
func TestSilentConnectionTimesOut(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	c, br := dial(t, ts)
	begun := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
	if waited := time.Since(begun); waited > 4*time.Second {
		t.Fatalf("closed after %v, want about 1 s", waited)
	}
	_ = c
}

// flakyListener fails its first Accept as a process out of descriptors.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// Running out of descriptors is waited out, not the end of serving.
func TestAcceptRetriesTemporaryErrors(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	loop := httploop.New(httploop.Options{Handler: echo(), Fast: func(string) bool { return true }})
	done := make(chan error, 1)
	go func() { done <- loop.Serve(&flakyListener{Listener: ln}) }()
	defer func() {
		loop.Close()
		if err := <-done; !errors.Is(err, httploop.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "loop GET /x range=" {
		t.Fatalf("%q", body)
	}
}

// net/http ends a header block at a bare LF too: a request that uses one
// is handed to it at once, not left waiting for a CRLFCRLF that never
// comes.
func TestBareLFHandedOff(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	for _, raw := range []string{
		"GET /fast/a HTTP/1.1\nHost: h\n\n",
		"GET /fast/a HTTP/1.1\r\nHost: h\r\n\n",
		"GET /slow HTTP/1.1\nHost: h\n\n",
	} {
		c, br := dial(t, ts)
		io.WriteString(c, raw)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: no answer: %v", raw, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(body), "net/http GET") {
			t.Fatalf("%q: %d %q, want net/http's answer", raw, resp.StatusCode, body)
		}
	}
}
