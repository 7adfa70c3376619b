package httploop_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestResponsesMatchNetHTTP runs each handler behind the loop and behind
// plain net/http: the responses (status, header but Date, body, and
// whether the connection is still good for another) agree.
func TestResponsesMatchNetHTTP(t *testing.T) {
	handlers := map[string]http.HandlerFunc{
		"204": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) },
		"304": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(304) },
		"conn-close": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "x")
		},
		"flush-then-write": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		},
		"sized-flush": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		},
		"bad-key": func(w http.ResponseWriter, r *http.Request) {
			w.Header()["X-A\r\nX-Injected"] = []string{"1"}
			io.WriteString(w, "x")
		},
		"date": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Date", "Mon, 01 Jan 2001 00:00:00 GMT")
			io.WriteString(w, "x")
		},
		"sniff-after-small": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "   ")
			io.WriteString(w, "<html>")
		},
		// A file as one chunk (sendfile), and one shorter than its
		// LimitedReader says (copied), after a small chunk and before
		// one.
		"file-chunked": func(w http.ResponseWriter, r *http.Request) {
			fileChunk(t, w, 40000, 40000)
		},
		"file-short-chunked": func(w http.ResponseWriter, r *http.Request) {
			fileChunk(t, w, 40000, 50000)
		},
		"file-sized": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "40010")
			fileChunk(t, w, 40000, 40000)
		},
	}
	mux := http.NewServeMux()
	for name, h := range handlers {
		mux.Handle("/fast/"+name, h)
	}
	ts := start(t, mux)
	plainLn, _ := net.Listen("tcp", "127.0.0.1:0")
	plain := &http.Server{Handler: http.StripPrefix("", mux)}
	go plain.Serve(plainLn)
	t.Cleanup(func() { plain.Close() })

	dateRe := regexp.MustCompile(`(?m)^Date: .*\r\n`)
	get := func(addr, path string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: h\r\n\r\nGET /fast/204 HTTP/1.1\r\nHost: h\r\n\r\n", path)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "error: " + err.Error()
		}
		dump, _ := httputil.DumpResponse(resp, true)
		// Then: is the connection still good for a second response?
		second := "second: "
		if resp2, err := http.ReadResponse(br, nil); err != nil {
			second += err.Error()
		} else {
			second += resp2.Status
		}
		return dateRe.ReplaceAllString(string(dump), "") + "\n" + second
	}
	for name := range handlers {
		a, b := get(ts.addr, "/fast/"+name), get(plainLn.Addr().String(), "/fast/"+name)
		if a != b {
			t.Errorf("%s:\nloop:\n%s\nnet/http:\n%s", name, a, b)
		}
	}
}

var fileChunkData = bytes.Repeat([]byte("0123456789abcdef"), 5000)

// fileChunk writes 5 bytes, then a file of size bytes through ReadFrom as
// an *io.LimitedReader of n, then 5 bytes.
func fileChunk(t *testing.T, w http.ResponseWriter, size, n int64) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, fileChunkData[:size], 0o644); err != nil {
		t.Error(err)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "start")
	w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: n})
	io.WriteString(w, "end..")
}
