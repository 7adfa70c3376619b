package httploop_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
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
