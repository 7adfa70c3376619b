package httploop

import (
	"bytes"
	"errors"
)

// maxHeaderLines bounds the header lines of a request the loop serves
// itself; an honest client sends a handful.
const maxHeaderLines = 32

// request is what parseRequest read of one request: the parts the loop
// needs, as slices of the reader's buffer (valid until it reads again).
type request struct {
	target []byte // origin-form: "/" then no '%', '?', '#', space or control byte
	host   []byte
	close  bool // "Connection: close"
	// kept are the values of the headers Options.KeepHeaders names, at
	// the same index; nil when absent.
	kept [][]byte
	size int // bytes of the request, CRLFCRLF included
}

// errHandOff: the bytes are not a request the loop serves itself (or not
// yet a whole one within its buffer); net/http gets the connection.
var errHandOff = errors.New("httploop: hand the connection to net/http")

// parseRequest reads one request header block from b, which must hold it
// whole. It accepts only the plainest requests: "GET <origin-form target>
// HTTP/1.1", CRLF line ends, one Host, no body (no Content-Length,
// Transfer-Encoding or Expect), no Upgrade, Connection only "keep-alive"
// or "close", no obsolete line folding, each kept header at most once.
// Everything else returns errHandOff: net/http, which knows every rule
// of HTTP/1.1, answers it (a 400 where it is malformed). Headers other
// than those are read for their syntax and dropped: the handlers of the
// routes served here read no others.
func parseRequest(b []byte, keep [][]byte, req *request) error {
	if len(keep) > 64 {
		panic("httploop: more than 64 kept headers")
	}
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		return errHandOff
	}
	req.size = end + 4
	block := b[:end+2] // every line with its CRLF
	line, rest, _ := bytes.Cut(block, crlf)
	if err := parseRequestLine(line, req); err != nil {
		return err
	}
	req.host, req.close = nil, false
	for i := range req.kept {
		req.kept[i] = nil
	}
	hosts, lines := 0, 0
	var seen uint64 // kept headers met (an empty value is still met)
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		if lines++; lines > maxHeaderLines {
			return errHandOff
		}
		name, value, err := splitHeader(line)
		if err != nil {
			return err
		}
		switch {
		case equalFold(name, "host"):
			if hosts++; hosts > 1 || !validHost(value) {
				return errHandOff
			}
			req.host = value
		case equalFold(name, "connection"):
			switch {
			case equalFold(value, "keep-alive"):
			case equalFold(value, "close"):
				req.close = true
			default:
				return errHandOff
			}
		case equalFold(name, "content-length"), equalFold(name, "transfer-encoding"),
			equalFold(name, "expect"), equalFold(name, "upgrade"), equalFold(name, "te"),
			equalFold(name, "trailer"):
			return errHandOff
		default:
			for i, k := range keep {
				if bytes.EqualFold(name, k) {
					if seen&(1<<i) != 0 {
						return errHandOff
					}
					seen |= 1 << i
					req.kept[i] = value
				}
			}
		}
	}
	if hosts != 1 {
		return errHandOff
	}
	return nil
}

var (
	crlf      = []byte("\r\n")
	crlfcrlf  = []byte("\r\n\r\n")
	getPrefix = []byte("GET /")
	http11    = []byte(" HTTP/1.1")
)

// mayBeFast reports whether b, the beginning of a request whose header
// block has not all arrived, may still be one the loop takes: every LF
// after a CR, the start "GET /", a whole first line that parseRequestLine
// takes. Otherwise there is no reason to wait for the rest (net/http
// also ends a header block at a bare LF, which the loop would wait past).
func mayBeFast(b []byte) bool {
	if !bytes.HasPrefix(getPrefix, b[:min(len(b), len(getPrefix))]) {
		return false
	}
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
	}
	if line, _, complete := bytes.Cut(b, crlf); complete {
		var req request
		return parseRequestLine(line, &req) == nil
	}
	return true
}

// parseRequestLine takes "GET /target HTTP/1.1" and nothing else.
func parseRequestLine(line []byte, req *request) error {
	if !bytes.HasPrefix(line, getPrefix) || !bytes.HasSuffix(line, http11) {
		return errHandOff
	}
	target := line[len("GET ") : len(line)-len(http11)]
	for _, c := range target {
		if c <= ' ' || c >= 0x7f || c == '%' || c == '?' || c == '#' {
			return errHandOff
		}
	}
	req.target = target
	return nil
}

// splitHeader splits "Name: value" with the value's surrounding spaces
// and tabs trimmed. The name must be a token with the colon right after
// it; the value may hold no control byte but a tab.
func splitHeader(line []byte) (name, value []byte, err error) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, errHandOff
	}
	name = line[:colon]
	for _, c := range name {
		if !isTokenByte(c) {
			return nil, nil, errHandOff
		}
	}
	value = bytes.Trim(line[colon+1:], " \t")
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, errHandOff
		}
	}
	return name, value, nil
}

func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c < 0x80 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// validHost accepts a host, an IPv4 address or a bracketed IPv6 address,
// with an optional port: letters, digits and ".-_:[]" only. Anything
// else (net/http's rules are wider) is handed off.
func validHost(h []byte) bool {
	if len(h) == 0 || len(h) > 255 {
		return false
	}
	for _, c := range h {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

// equalFold compares an ASCII header name or token with a lower-case
// constant, without allocating.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
