package summary

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"time"
)

// Update is one answer of a summary route (the tracker's GET /v1/index, a
// daemon's GET /local/summary): the whole filter, or the hashes added
// since the generation the asker holds.
type Update struct {
	// Epoch names the filter: its size and probes, and the process that
	// built it. A delta applies only to a filter of the same
	// epoch.
	Epoch uint64
	// Gen is the generation the answer brings the asker to.
	Gen uint64
	// Lag: the answer may lack hashes added in the last Lag (a tracker
	// sharing a database with others); 0 when the publisher sees every add.
	Lag time.Duration
	// Entries: for a full filter, about how many distinct hashes it holds.
	Entries uint64
	// Filter is the whole filter (a full answer), or nil (a delta).
	Filter *Filter
	// Bits and Probes of the epoch's filter (also in a delta, as a check).
	Bits   uint64
	Probes int
	// Add is a delta's hashes, to Add to the filter of the same epoch.
	Add [][HashBytes]byte
}

// Full reports whether the answer carries a whole filter.
func (u *Update) Full() bool { return u.Filter != nil }

// The binary form of an Update (docs/protocol.md): a 40-byte header,
// big-endian, then the filter's bytes or the delta's hashes.
const (
	indexMagic     = "PXIX"
	indexVersion   = 1
	indexKindFull  = 0
	indexKindDelta = 1
	HeaderSize     = 40
	// ContentType is the media type of an answer.
	ContentType = "application/vnd.peerix.index"
)

// ErrFormat: an index answer that does not decode.
var ErrFormat = errors.New("malformed index answer")

// MarshalBinary encodes the update.
func (u *Update) MarshalBinary() ([]byte, error) {
	var hdr [HeaderSize]byte
	copy(hdr[0:4], indexMagic)
	hdr[4] = indexVersion
	lag := min(max(u.Lag.Milliseconds(), 0), math.MaxUint32)
	binary.BigEndian.PutUint64(hdr[8:], u.Epoch)
	binary.BigEndian.PutUint64(hdr[16:], u.Gen)
	binary.BigEndian.PutUint32(hdr[32:], uint32(lag))
	if u.Filter != nil {
		f := u.Filter
		hdr[5], hdr[6] = indexKindFull, byte(f.k)
		binary.BigEndian.PutUint64(hdr[24:], f.m)
		binary.BigEndian.PutUint32(hdr[36:], uint32(min(u.Entries, math.MaxUint32)))
		out := make([]byte, HeaderSize, HeaderSize+f.m/8)
		copy(out, hdr[:])
		for i := range f.words {
			out = binary.LittleEndian.AppendUint64(out, atomic.LoadUint64(&f.words[i]))
		}
		return out, nil
	}
	if len(u.Add) > MaxDelta {
		return nil, fmt.Errorf("index delta of %d hashes, at most %d", len(u.Add), MaxDelta)
	}
	hdr[5], hdr[6] = indexKindDelta, byte(u.Probes)
	binary.BigEndian.PutUint64(hdr[24:], u.Bits)
	binary.BigEndian.PutUint32(hdr[36:], uint32(len(u.Add)))
	out := make([]byte, HeaderSize, HeaderSize+HashBytes*len(u.Add))
	copy(out, hdr[:])
	for i := range u.Add {
		out = append(out, u.Add[i][:]...)
	}
	return out, nil
}

// ReadUpdate decodes one answer from r, which must end with it. It
// never allocates much more than the bytes that actually arrive, whatever
// the header claims.
func ReadUpdate(r io.Reader) (*Update, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	if string(hdr[0:4]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrFormat, hdr[0:4])
	}
	if hdr[4] != indexVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrFormat, hdr[4], indexVersion)
	}
	kind, k := hdr[5], int(hdr[6])
	u := &Update{
		Epoch:  binary.BigEndian.Uint64(hdr[8:]),
		Gen:    binary.BigEndian.Uint64(hdr[16:]),
		Bits:   binary.BigEndian.Uint64(hdr[24:]),
		Lag:    time.Duration(binary.BigEndian.Uint32(hdr[32:])) * time.Millisecond,
		Probes: k,
	}
	count := uint64(binary.BigEndian.Uint32(hdr[36:]))
	if k < 1 || k > maxProbes {
		return nil, fmt.Errorf("%w: %d probes", ErrFormat, k)
	}
	if u.Bits < 64 || u.Bits > MaxBits || u.Bits%64 != 0 {
		return nil, fmt.Errorf("%w: filter of %d bits", ErrFormat, u.Bits)
	}
	switch kind {
	case indexKindFull:
		u.Entries = count
		words := make([]uint64, 0, min(u.Bits/64, 1<<16))
		var buf [8 << 10]byte
		for left := u.Bits / 8; left > 0; {
			chunk := buf[:min(left, uint64(len(buf)))]
			if _, err := io.ReadFull(br, chunk); err != nil {
				return nil, fmt.Errorf("%w: filter: %v", ErrFormat, err)
			}
			for i := 0; i < len(chunk); i += 8 {
				words = append(words, binary.LittleEndian.Uint64(chunk[i:]))
			}
			left -= uint64(len(chunk))
		}
		u.Filter = &Filter{m: u.Bits, k: k, words: words}
	case indexKindDelta:
		if count > MaxDelta {
			return nil, fmt.Errorf("%w: delta of %d hashes", ErrFormat, count)
		}
		u.Add = make([][HashBytes]byte, 0, min(count, 4096))
		var h [HashBytes]byte
		for range count {
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return nil, fmt.Errorf("%w: delta: %v", ErrFormat, err)
			}
			u.Add = append(u.Add, h)
		}
	default:
		return nil, fmt.Errorf("%w: kind %d", ErrFormat, kind)
	}
	if n, _ := br.Read(hdr[:1]); n != 0 {
		return nil, fmt.Errorf("%w: trailing bytes", ErrFormat)
	}
	return u, nil
}
