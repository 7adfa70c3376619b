// Package lan finds store paths on machines of the local network by UDP
// broadcast, in the wire format of the original (Python) peerix, so old and
// new peers on one LAN answer each other.
//
// Wire format, big-endian, one message per datagram:
//
//	request:  0x00, u32 request_id, 32 ASCII bytes of the store path hash
//	response: 0x01, u32 request_id, u32 http_port, UTF-8 path of the narinfo
//	          relative to http://<responder>:<http_port>/ ("local/<hash>.narinfo")
//	beacon:   0x02, version 0x01, u16 http_port, u64 summary epoch,
//	          u64 summary generation, u8 flags (0x01 hello, 0x02 bye)
//
// The first two are the original peerix's; the beacon is peerix's own
// extension (docs/protocol.md), which the original ignores: a peer that
// sends beacons publishes a summary of what it shares at
// http://<sender>:<http_port>/local/summary, so that its neighbours ask it
// only for hashes it may hold, by unicast, and answer the rest from memory.
package lan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/peerix/peerix/internal/store"
)

const (
	kindRequest  = 0x00
	kindResponse = 0x01
	kindBeacon   = 0x02

	beaconVersion = 0x01
	beaconLen     = 1 + 1 + 2 + 8 + 8 + 1

	requestLen = 1 + 4 + store.HashLen
	// maxResponsePath bounds the narinfo path of a response; ours is
	// "local/<hash>.narinfo" (46 bytes), anything far longer is not a peer.
	maxResponsePath = 256
	// MaxDatagram is the largest datagram either kind can be.
	MaxDatagram = 1 + 4 + 4 + maxResponsePath
)

// Request asks the LAN who holds a store path.
type Request struct {
	ID   uint32
	Hash string
}

// Response says the sender holds the path and where its narinfo is.
type Response struct {
	ID       uint32
	HTTPPort uint16
	Path     string // relative to the responder's HTTP root
}

// Beacon says the sender speaks summaries: where its summary is and which
// version of it is current.
type Beacon struct {
	HTTPPort uint16
	// Epoch and Gen name the summary version the sender publishes now;
	// zero before its first summary is built.
	Epoch, Gen uint64
	// Hello asks every receiver for a beacon back, unicast (a peer that
	// just started learns its neighbours at once); Bye says the sender is
	// leaving.
	Hello, Bye bool
}

// Beacon flags.
const (
	flagHello = 0x01
	flagBye   = 0x02
)

var errMalformed = errors.New("malformed LAN datagram")

// AppendBeacon encodes b.
func AppendBeacon(out []byte, b Beacon) []byte {
	out = append(out, kindBeacon, beaconVersion)
	out = binary.BigEndian.AppendUint16(out, b.HTTPPort)
	out = binary.BigEndian.AppendUint64(out, b.Epoch)
	out = binary.BigEndian.AppendUint64(out, b.Gen)
	var flags byte
	if b.Hello {
		flags |= flagHello
	}
	if b.Bye {
		flags |= flagBye
	}
	return append(out, flags)
}

// errUnknownVersion: a beacon of a version this peer does not know (a
// newer peer's); it is ignored, not an error of the sender.
var errUnknownVersion = errors.New("LAN beacon of an unknown version")

// AppendRequest encodes r.
func AppendRequest(b []byte, r Request) []byte {
	b = append(b, kindRequest)
	b = binary.BigEndian.AppendUint32(b, r.ID)
	return append(b, r.Hash...)
}

// AppendResponse encodes r.
func AppendResponse(b []byte, r Response) []byte {
	b = append(b, kindResponse)
	b = binary.BigEndian.AppendUint32(b, r.ID)
	b = binary.BigEndian.AppendUint32(b, uint32(r.HTTPPort))
	return append(b, r.Path...)
}

// Decode parses one datagram into a *Request, a *Response or a *Beacon.
// Anything else (unknown kind, wrong length, a hash outside Nix base-32, a
// port outside 1..65535, a path that is not a plain relative narinfo path,
// unknown beacon flags) is an error.
func Decode(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, errMalformed
	}
	switch b[0] {
	case kindRequest:
		if len(b) != requestLen {
			return nil, fmt.Errorf("%w: request of %d bytes", errMalformed, len(b))
		}
		hash := string(b[5:])
		if !store.ValidHash(hash) {
			return nil, fmt.Errorf("%w: invalid hash", errMalformed)
		}
		return &Request{ID: binary.BigEndian.Uint32(b[1:5]), Hash: hash}, nil
	case kindResponse:
		if len(b) < 9+1 || len(b) > 9+maxResponsePath {
			return nil, fmt.Errorf("%w: response of %d bytes", errMalformed, len(b))
		}
		port := binary.BigEndian.Uint32(b[5:9])
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("%w: port %d", errMalformed, port)
		}
		path := string(b[9:])
		if !validNarInfoPath(path) {
			return nil, fmt.Errorf("%w: narinfo path %q", errMalformed, path)
		}
		return &Response{ID: binary.BigEndian.Uint32(b[1:5]), HTTPPort: uint16(port), Path: path}, nil
	case kindBeacon:
		if len(b) >= 2 && b[1] != beaconVersion {
			return nil, fmt.Errorf("%w %d", errUnknownVersion, b[1])
		}
		if len(b) != beaconLen {
			return nil, fmt.Errorf("%w: beacon of %d bytes", errMalformed, len(b))
		}
		port := binary.BigEndian.Uint16(b[2:4])
		flags := b[20]
		if port == 0 || flags&^(flagHello|flagBye) != 0 {
			return nil, fmt.Errorf("%w: beacon port %d, flags %#x", errMalformed, port, flags)
		}
		return &Beacon{
			HTTPPort: port,
			Epoch:    binary.BigEndian.Uint64(b[4:12]),
			Gen:      binary.BigEndian.Uint64(b[12:20]),
			Hello:    flags&flagHello != 0,
			Bye:      flags&flagBye != 0,
		}, nil
	}
	return nil, fmt.Errorf("%w: kind %#x", errMalformed, b[0])
}

// validNarInfoPath accepts a relative URL path ending in <hash>.narinfo made
// of plain segments: no scheme, host, query, "..", or odd bytes, so a
// response can only ever make us fetch a narinfo from the responder itself.
func validNarInfoPath(p string) bool {
	if !strings.HasSuffix(p, ".narinfo") || strings.HasPrefix(p, "/") {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	base := p[strings.LastIndexByte(p, '/')+1:]
	return store.ValidHash(strings.TrimSuffix(base, ".narinfo"))
}
