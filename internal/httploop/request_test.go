package httploop

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

var testKeep = [][]byte{[]byte("Range"), []byte("X-Peerix-Accept-Encoding")}

func TestParseRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		raw   string
		fast  bool
		host  string
		close bool
		kept  []string
	}{
		{name: "plain", raw: "GET /local/x.narinfo HTTP/1.1\r\nHost: 127.0.0.1:12304\r\n\r\n", fast: true, host: "127.0.0.1:12304"},
		{name: "curl", raw: "GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1 Nix/2.8.0\r\nAccept: */*\r\n\r\n", fast: true, host: "localhost"},
		{name: "kept headers", raw: "GET /nar/x.nar HTTP/1.1\r\nhost: h\r\nrange: bytes=1-\r\nX-Peerix-Accept-Encoding:  zstd-blocks \r\n\r\n", fast: true, host: "h", kept: []string{"bytes=1-", "zstd-blocks"}},
		{name: "connection close", raw: "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", fast: true, host: "h", close: true},
		{name: "keep-alive", raw: "GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: keep-alive\r\n\r\n", fast: true, host: "[::1]:80"},
		{name: "head", raw: "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "post", raw: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"},
		{name: "http/1.0", raw: "GET / HTTP/1.0\r\nHost: h\r\n\r\n"},
		{name: "no host", raw: "GET / HTTP/1.1\r\n\r\n"},
		{name: "two hosts", raw: "GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n"},
		{name: "odd host", raw: "GET / HTTP/1.1\r\nHost: h/x\r\n\r\n"},
		{name: "body", raw: "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "chunked body", raw: "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "expect", raw: "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"},
		{name: "upgrade", raw: "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"},
		{name: "percent", raw: "GET /local/%2e%2e HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "query", raw: "GET /x?y HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "absolute form", raw: "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "bare LF", raw: "GET / HTTP/1.1\nHost: h\n\n"},
		{name: "folding", raw: "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"},
		{name: "space before colon", raw: "GET / HTTP/1.1\r\nHost : h\r\n\r\n"},
		{name: "no colon", raw: "GET / HTTP/1.1\r\nHost: h\r\nBad\r\n\r\n"},
		{name: "control in value", raw: "GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n"},
		{name: "two ranges", raw: "GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-\r\nRange: bytes=1-\r\n\r\n"},
		{name: "empty range, then one", raw: "GET / HTTP/1.1\r\nHost: h\r\nRange:\r\nRange: bytes=5-\r\n\r\n"},
		{name: "blank range, then one", raw: "GET / HTTP/1.1\r\nHost: h\r\nRange:  \t\r\nRange: bytes=5-\r\n\r\n"},
		{name: "empty encoding, then one", raw: "GET / HTTP/1.1\r\nHost: h\r\nX-Peerix-Accept-Encoding:\r\nX-Peerix-Accept-Encoding: zstd-blocks\r\n\r\n"},
		{name: "double space", raw: "GET  / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "incomplete", raw: "GET / HTTP/1.1\r\nHost: h\r\n"},
		{name: "leading CRLF", raw: "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "too many lines", raw: "GET / HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X: y\r\n", maxHeaderLines) + "\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := request{kept: make([][]byte, len(testKeep))}
			err := parseRequest([]byte(tt.raw), testKeep, &req)
			if !tt.fast {
				if err != errHandOff {
					t.Fatalf("parseRequest = %v, want errHandOff", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			if string(req.host) != tt.host || req.close != tt.close {
				t.Errorf("host %q close %v, want %q %v", req.host, req.close, tt.host, tt.close)
			}
			for i := range testKeep {
				want := ""
				if i < len(tt.kept) {
					want = tt.kept[i]
				}
				if string(req.kept[i]) != want {
					t.Errorf("%s = %q, want %q", testKeep[i], req.kept[i], want)
				}
			}
			if req.size != strings.Index(tt.raw, "\r\n\r\n")+4 {
				t.Errorf("size %d", req.size)
			}
		})
	}
}

// FuzzParseRequest checks the loop against net/http on the same bytes:
// whatever the loop takes, net/http reads as the same request, and the URL
// the loop makes is the one net/http parses.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET /nar/x.nar HTTP/1.1\r\nHost: h\r\nRange:\r\nRange: bytes=5-\r\n\r\n",
		"GET /local/x.narinfo HTTP/1.1\r\nHost: 127.0.0.1:12304\r\n\r\n",
		"GET /nar/a.nar HTTP/1.1\r\nHost: h\r\nRange: bytes=1-2\r\nConnection: close\r\n\r\n",
		"GET /a;b,c HTTP/1.1\r\nHost: h\r\nX-Peerix-Accept-Encoding: zstd-blocks\r\nUser-Agent: x\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := request{kept: make([][]byte, len(testKeep))}
		if parseRequest(raw, testKeep, &req) != nil {
			return
		}
		hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw[:req.size])))
		if err != nil {
			t.Fatalf("the loop takes %q, net/http refuses it: %v", raw, err)
		}
		if hr.Method != http.MethodGet || hr.RequestURI != string(req.target) || hr.Host != string(req.host) ||
			hr.Close != req.close || hr.ContentLength != 0 || len(hr.TransferEncoding) != 0 {
			t.Fatalf("%q: net/http reads %s %q host %q close %v length %d, the loop %q host %q close %v",
				raw, hr.Method, hr.RequestURI, hr.Host, hr.Close, hr.ContentLength, req.target, req.host, req.close)
		}
		for i, k := range testKeep {
			if got := hr.Header.Get(string(k)); got != string(req.kept[i]) || len(hr.Header.Values(string(k))) > 1 {
				t.Fatalf("%q: %s: net/http %q, the loop %q", raw, k, hr.Header.Values(string(k)), req.kept[i])
			}
		}
		if u := plainURL(string(req.target)); u != nil && *u != *hr.URL {
			t.Fatalf("%q: net/http URL %#v, the loop %#v", raw, hr.URL, u)
		}
		if _, err := url.ParseRequestURI(string(req.target)); err != nil && plainURL(string(req.target)) != nil {
			t.Fatalf("%q: plain URL of a target net/url refuses", raw)
		}
	})
}
