package p2p

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/peerix/peerix/internal/store"
	"github.com/peerix/peerix/internal/swarm"
)

// Wire format of the peer protocols (docs/protocol.md, section 2). All
// integers are big-endian; a frame is a u32 length and that many bytes.

// Status bytes that start every answer frame. StatusRefused is never sent:
// a path kept private is answered exactly like an absent one (not found),
// so that no peer learns it is here. Older peers sent it; it is read as
// not found.
const (
	StatusFound    byte = 0x00
	StatusNotFound byte = 0x01
	StatusRefused  byte = 0x02
	StatusError    byte = 0x03
)

// Sizes and limits of the wire format.
const (
	narHashLen        = 52 // Nix base-32 of a SHA-256
	narInfoRequestLen = store.HashLen
	narRequestLen     = store.HashLen + narHashLen + 8
	// A /peerix/nar/1.1.0 request adds u64 length and u8 flags.
	narRequestLen11 = narRequestLen + 8 + 1
	// MaxNarInfoFrame bounds a narinfo answer frame, status byte included.
	MaxNarInfoFrame = 64 << 10
	// MaxErrorMessage bounds the message of an error answer.
	MaxErrorMessage = 1 << 10
	// narStatusFrame is the largest status frame of a NAR answer: an error.
	maxNarStatusFrame = 1 + MaxErrorMessage
)

// ErrProtocol marks an answer or request that breaks the wire format: the
// sender is broken or hostile, and a peer that sends one loses reputation.
var ErrProtocol = fmt.Errorf("peer protocol violation: %w", swarm.ErrProtocol)

func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// writeFrame writes one frame in a single Write.
func writeFrame(w io.Writer, payload []byte) error {
	b := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	copy(b[4:], payload)
	_, err := w.Write(b)
	return err
}

// readFrameHeader reads a frame's length and refuses one longer than max
// without reading its body.
func readFrameHeader(r io.Reader, max int) (int, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, protocolErrorf("truncated frame header")
		}
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return 0, protocolErrorf("frame of %d bytes, at most %d allowed", n, max)
	}
	return int(n), nil
}

// readFrame reads one frame of at most max bytes.
func readFrame(r io.Reader, max int) ([]byte, error) {
	n, err := readFrameHeader(r, max)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, protocolErrorf("frame truncated")
		}
		return nil, err
	}
	return b, nil
}

// readExactFrame reads a request frame that must be exactly n bytes long.
// A frame of another length is refused without reading its body, so a
// requester can never make the responder read more than n bytes.
func readExactFrame(r io.Reader, n int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, protocolErrorf("truncated request")
		}
		return nil, err
	}
	if got := binary.BigEndian.Uint32(hdr[:]); got != uint32(n) {
		return nil, protocolErrorf("request frame of %d bytes, want %d", got, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, protocolErrorf("truncated request")
		}
		return nil, err
	}
	return b, nil
}

// EncodeNarInfoRequest is the request frame's payload for hash.
func EncodeNarInfoRequest(hash string) []byte { return []byte(hash) }

// DecodeNarInfoRequest checks a narinfo request payload.
func DecodeNarInfoRequest(b []byte) (hash string, err error) {
	if len(b) != narInfoRequestLen || !store.ValidHash(string(b)) {
		return "", protocolErrorf("narinfo request is not a store hash")
	}
	return string(b), nil
}

// NarRequest asks for the NAR of a path with a given NarHash from a byte
// offset on.
type NarRequest struct {
	Hash    string // 32-character hash part
	NarHash string // 52-character Nix base-32 SHA-256
	Offset  int64
	// Since /peerix/nar/1.1.0: Length bytes from Offset (0: to the end),
	// and whether the asker takes the block format (internal/compress:
	// zstd where it pays).
	Length       int64
	AcceptBlocks bool
}

// Flags of a /peerix/nar/1.1.0 request.
const flagAcceptBlocks = 0x01

// Encodings of a /peerix/nar/1.1.0 body.
const (
	EncodingRaw    byte = 0
	EncodingBlocks byte = 1 // the block format of internal/compress
)

// EncodeNarRequest11 is a /peerix/nar/1.1.0 request frame's payload.
func EncodeNarRequest11(r NarRequest) []byte {
	b := EncodeNarRequest(r)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Length))
	var flags byte
	if r.AcceptBlocks {
		flags |= flagAcceptBlocks
	}
	return append(b, flags)
}

// DecodeNarRequest11 checks a /peerix/nar/1.1.0 request payload.
func DecodeNarRequest11(b []byte) (NarRequest, error) {
	if len(b) != narRequestLen11 {
		return NarRequest{}, protocolErrorf("NAR request of %d bytes, want %d", len(b), narRequestLen11)
	}
	r, err := DecodeNarRequest(b[:narRequestLen])
	if err != nil {
		return NarRequest{}, err
	}
	length := binary.BigEndian.Uint64(b[narRequestLen:])
	flags := b[narRequestLen+8]
	if length > 1<<62 || flags&^flagAcceptBlocks != 0 {
		return NarRequest{}, protocolErrorf("NAR request length %d, flags %#x", length, flags)
	}
	r.Length, r.AcceptBlocks = int64(length), flags&flagAcceptBlocks != 0
	return r, nil
}

// EncodeNarRequest is the request frame's payload.
func EncodeNarRequest(r NarRequest) []byte {
	b := make([]byte, 0, narRequestLen)
	b = append(b, r.Hash...)
	b = append(b, r.NarHash...)
	return binary.BigEndian.AppendUint64(b, uint64(r.Offset))
}

// DecodeNarRequest checks a NAR request payload.
func DecodeNarRequest(b []byte) (NarRequest, error) {
	if len(b) != narRequestLen {
		return NarRequest{}, protocolErrorf("NAR request of %d bytes, want %d", len(b), narRequestLen)
	}
	r := NarRequest{
		Hash:    string(b[:store.HashLen]),
		NarHash: string(b[store.HashLen : store.HashLen+narHashLen]),
	}
	off := binary.BigEndian.Uint64(b[store.HashLen+narHashLen:])
	if !store.ValidHash(r.Hash) || !validNarHash(r.NarHash) {
		return NarRequest{}, protocolErrorf("NAR request names no valid path")
	}
	if off > 1<<62 {
		return NarRequest{}, protocolErrorf("NAR request offset %d", off)
	}
	r.Offset = int64(off)
	return r, nil
}

// validNarHash: 52 Nix base-32 characters whose first one does not carry
// bits beyond 256 (a SHA-256 in Nix base-32 starts with 0 or 1).
func validNarHash(s string) bool {
	return len(s) == narHashLen && store.ValidBase32(s) && (s[0] == '0' || s[0] == '1')
}

// Answer is a decoded answer frame.
type Answer struct {
	Status  byte
	Payload []byte // narinfo text (found narinfo), u64 size (found NAR), message (error)
}

// Err is the error an answer other than found stands for.
func (a Answer) Err(what string) error {
	switch a.Status {
	case StatusNotFound:
		return fmt.Errorf("%s: peer has no such path: %w", what, store.ErrNotFound)
	case StatusRefused:
		return fmt.Errorf("%s: peer has no such path it shares (an older peer's refused): %w", what, store.ErrNotFound)
	case StatusError:
		return &RemoteError{Msg: string(a.Payload)}
	}
	return nil
}

// RemoteError is an error answer: the peer could not serve the request.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return "peer answered error: " + e.Msg }

// Unwrap makes an error answer a swarm.ErrRemote.
func (e *RemoteError) Unwrap() error { return swarm.ErrRemote }

// encodeAnswer builds an answer payload.
func encodeAnswer(status byte, payload []byte) []byte {
	b := make([]byte, 1+len(payload))
	b[0] = status
	copy(b[1:], payload)
	return b
}

// errorAnswer builds an error answer, cutting the message to the limit on a
// UTF-8 boundary.
func errorAnswer(msg string) []byte {
	if len(msg) > MaxErrorMessage {
		msg = msg[:MaxErrorMessage]
		for len(msg) > 0 && !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	return encodeAnswer(StatusError, []byte(msg))
}

// DecodeNarInfoAnswer checks a narinfo answer frame's payload.
func DecodeNarInfoAnswer(b []byte) (Answer, error) {
	a, err := decodeStatus(b)
	if err != nil {
		return Answer{}, err
	}
	if a.Status == StatusFound && len(a.Payload) == 0 {
		return Answer{}, protocolErrorf("empty narinfo")
	}
	return a, nil
}

// DecodeNarAnswer checks a NAR status frame's payload; for found it returns
// the NAR's size.
func DecodeNarAnswer(b []byte) (Answer, int64, error) {
	a, err := decodeStatus(b)
	if err != nil {
		return Answer{}, 0, err
	}
	if a.Status != StatusFound {
		return a, 0, nil
	}
	if len(a.Payload) != 8 {
		return Answer{}, 0, protocolErrorf("NAR status frame of %d bytes", len(b))
	}
	return decodeSize(a)
}

// DecodeNarAnswer11 checks a /peerix/nar/1.1.0 status frame's payload; for
// found it returns the NAR's size and the body's encoding.
func DecodeNarAnswer11(b []byte) (Answer, int64, byte, error) {
	a, err := decodeStatus(b)
	if err != nil {
		return Answer{}, 0, 0, err
	}
	if a.Status != StatusFound {
		return a, 0, 0, nil
	}
	if len(a.Payload) != 9 || a.Payload[8] > EncodingBlocks {
		return Answer{}, 0, 0, protocolErrorf("NAR status frame of %d bytes", len(b))
	}
	enc := a.Payload[8]
	a.Payload = a.Payload[:8]
	a, size, err := decodeSize(a)
	return a, size, enc, err
}

// decodeSize reads a found answer's u64 NAR size.
func decodeSize(a Answer) (Answer, int64, error) {
	size := binary.BigEndian.Uint64(a.Payload)
	if size == 0 || size > 1<<62 {
		return Answer{}, 0, protocolErrorf("NAR size %d", size)
	}
	return a, int64(size), nil
}

// decodeStatus splits an answer payload and checks the status byte and
// the payload each status may carry.
func decodeStatus(b []byte) (Answer, error) {
	if len(b) == 0 {
		return Answer{}, protocolErrorf("empty answer")
	}
	a := Answer{Status: b[0], Payload: b[1:]}
	switch a.Status {
	case StatusFound:
	case StatusNotFound, StatusRefused:
		if len(a.Payload) != 0 {
			return Answer{}, protocolErrorf("status %d with a payload", a.Status)
		}
	case StatusError:
		if len(a.Payload) > MaxErrorMessage || !utf8.Valid(a.Payload) {
			return Answer{}, protocolErrorf("malformed error message")
		}
	default:
		return Answer{}, protocolErrorf("unknown status byte 0x%02x", a.Status)
	}
	return a, nil
}

// ReadStatus reads one answer frame of at most max bytes and decodes its
// status.
func ReadStatus(r io.Reader, max int) (Answer, error) {
	b, err := readFrame(r, max)
	if err != nil {
		return Answer{}, err
	}
	return decodeStatus(b)
}
