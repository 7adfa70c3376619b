package httploop_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/peerix/peerix/internal/httploop"
)

// BenchmarkServe measures requests/s of a narinfo-sized answer (400 B,
// Content-Length set, as the cache's narinfo route answers) over 8
// keep-alive connections, served by the loop and by net/http alone in the
// same run: the loop's rate, and its ratio to net/http's, are what the
// local routes gain from it. The client is a bare one (one write, a
// header scan and a body read a request), so that it costs little beside
// the servers.
func BenchmarkServe(b *testing.B) {
	body := []byte(strings.Repeat("n", 400))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/x-nix-narinfo"}
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.Write(body)
	})
	for _, name := range []string{"loop", "net-http"} {
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &http.Server{Handler: handler}
			if name == "loop" {
				loop := httploop.New(httploop.Options{Handler: handler, Fast: func(string) bool { return true }})
				go loop.Serve(ln)
				go srv.Serve(loop.HandOff())
				defer loop.Close()
			} else {
				go srv.Serve(ln)
			}
			defer srv.Close()

			const conns = 8
			var wg sync.WaitGroup
			per := (b.N + conns - 1) / conns
			b.ResetTimer()
			for range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := getMany(ln.Addr().String(), per, len(body)); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(per*conns)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// getMany asks GET /fast/x n times on one connection, reading each
// answer of size bytes.
func getMany(addr string, n, size int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	req := []byte("GET /fast/x HTTP/1.1\r\nHost: bench\r\n\r\n")
	br := bufio.NewReaderSize(c, 8<<10)
	buf := make([]byte, size)
	for range n {
		if _, err := c.Write(req); err != nil {
			return err
		}
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return err
			}
			if bytes.Equal(line, []byte("\r\n")) {
				break
			}
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
	}
	return nil
}
