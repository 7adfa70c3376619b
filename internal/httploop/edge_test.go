package httploop_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Every request, written in two pieces split at every byte, is answered
// by the right server, and never left hanging.
func TestSplitAtEveryByte(t *testing.T) {
	t.Parallel()
	ts := start(t, echo())
	reqs := []struct{ raw, want string }{
		{"GET /fast/a HTTP/1.1\r\nHost: h\r\nRange: bytes=1-\r\n\r\n", "loop GET /fast/a range=bytes=1-"},
		{"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n", "net/http GET /slow range="},
		{"GET /fast/a?x HTTP/1.1\r\nHost: h\r\n\r\n", "net/http GET /fast/a range="},
		{"GET /fast/a HTTP/1.1\nHost: h\n\n", "net/http GET /fast/a range="},
		{"POST /fast/a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", "net/http POST /fast/a range="},
		{"GET /fast/a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", "net/http GET /fast/a range="},
	}
	for _, r := range reqs {
		for i := 1; i < len(r.raw); i++ {
			c, br := dial(t, ts)
			c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, r.raw[:i])
			time.Sleep(2 * time.Millisecond)
			io.WriteString(c, r.raw[i:])
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%q split at %d: %v", r.raw, i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if string(body) != r.want {
				t.Fatalf("%q split at %d: %q, want %q", r.raw, i, body, r.want)
			}
			c.Close()
		}
	}
}

// A request the loop waited on for nearly ReadHeaderTimeout, then handed
// off, is still due by the loop's deadline: net/http's own
// ReadHeaderTimeout does not start again (a slow client would hold the
// connection for twice the bound).
func TestHandOffKeepsHeaderDeadline(t *testing.T) {
	t.Parallel()
	ts := start(t, echo()) // ReadHeaderTimeout: 1 s on both
	c, br := dial(t, ts)
	begun := time.Now()
	io.WriteString(c, "GET /fast/a HTTP/1.1\r\n")
	time.Sleep(900 * time.Millisecond)
	io.WriteString(c, "Host: h\n") // a bare LF: handed off
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := br.ReadByte()
	if waited := time.Since(begun); waited > 1500*time.Millisecond {
		t.Fatalf("header still being read %v after it began (read: %v); ReadHeaderTimeout is 1 s", waited, err)
	}
}

// net/http sends no Content-Length with a 204 or 304 (RFC 9110 8.6: a
// server must not).
func TestNoContentLengthOn204(t *testing.T) {
	t.Parallel()
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	c, br := dial(t, ts)
	io.WriteString(c, "GET /fast/a HTTP/1.1\r\nHost: h\r\n\r\n")
	var head []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
		head = append(head, strings.TrimSpace(line))
	}
	for _, l := range head {
		if strings.HasPrefix(strings.ToLower(l), "content-length") {
			t.Fatalf("204 with %q: %q", l, head)
		}
	}
}

// As net/http (checkConnErrorWriter), the loop ends a request's context
// once a write to the client fails, so a handler can tell "the client
// went away" from a failure of its own: the cache's NAR route logs a
// warning only when r.Context().Err() == nil.
func TestContextEndsOnWriteError(t *testing.T) {
	t.Parallel()
	got := make(chan string, 2)
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<30))
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				got <- whoServes(r) + " ctx.Err=" + errString(r.Context().Err())
				return
			}
		}
	}))
	for _, path := range []string{"/slow", "/fast/a"} {
		c, br := dial(t, ts)
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: h\r\n\r\n")
		if _, err := http.ReadResponse(br, nil); err != nil {
			t.Fatal(err)
		}
		c.Close()
		select {
		case s := <-got:
			if strings.HasSuffix(s, "ctx.Err=<nil>") {
				t.Errorf("%s: after the client went away, %s", path, s)
			} else {
				t.Logf("%s: %s", path, s)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: handler never saw a write error", path)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
