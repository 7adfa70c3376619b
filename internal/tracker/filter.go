package tracker

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Filter is a Bloom filter of store hashes: the tracker's index of which
// hashes any peer holds (GET /v1/index, docs/protocol.md section 3). Has
// never answers false for a hash that was added; it answers true for a
// hash never added with a small probability (the false-positive rate).
//
// Has and Add may run concurrently (the words are read and set
// atomically), so a peer applies deltas while lookups go on.
type Filter struct {
	m     uint64 // size in bits, a multiple of 64
	k     int    // probes per hash
	words []uint64
}

// Index parameters. Twelve bits and eight probes a hash give a
// false-positive rate of about 0.3% at build time (at most 1% before the
// tracker rebuilds): the share of misses that still ask the tracker.
const (
	IndexBitsPerEntry = 12
	IndexProbes       = 8
	// MinIndexBits is the smallest filter the tracker builds (8 KiB).
	MinIndexBits = 1 << 16
	// MaxIndexBits bounds a filter (128 MiB, about 89 M hashes).
	MaxIndexBits = 1 << 30
	// MaxIndexDelta bounds the hashes of one delta answer.
	MaxIndexDelta = 1 << 20
	maxProbes     = 16
)

// HashBytes is the length of a decoded store hash part.
const HashBytes = 20

// NewFilter returns an empty filter of bits bits (rounded up to a
// multiple of 64) probing k positions per hash.
func NewFilter(bits uint64, k int) *Filter {
	bits = max((bits+63)&^63, 64)
	return &Filter{m: bits, k: k, words: make([]uint64, bits/64)}
}

// Bits is the filter's size in bits.
func (f *Filter) Bits() uint64 { return f.m }

// Probes is how many bits a hash sets.
func (f *Filter) Probes() int { return f.k }

// ParseHash decodes a 32-character Nix base-32 hash part.
func ParseHash(s string) (h [HashBytes]byte, ok bool) {
	if len(s) != 32 {
		return h, false
	}
	b, err := nixbase32.DecodeString(s)
	if err != nil || len(b) != HashBytes {
		return h, false
	}
	return [HashBytes]byte(b), true
}

// probes derives the probe sequence of a hash: position i is
// (a + i*b) mod m. Store hashes are uniform already; the mixing keeps
// hashes that share bytes (crafted, or test fixtures) apart.
func probes(h *[HashBytes]byte) (a, b uint64) {
	x := binary.BigEndian.Uint64(h[0:8])
	y := binary.BigEndian.Uint64(h[8:16])
	z := uint64(binary.BigEndian.Uint32(h[16:20]))
	a = mix64(x ^ mix64(y^mix64(z)))
	b = mix64(a^0x9e3779b97f4a7c15) | 1
	return a, b
}

// mix64 is the splitmix64 finalizer.
func mix64(v uint64) uint64 {
	v ^= v >> 30
	v *= 0xbf58476d1ce4e5b9
	v ^= v >> 27
	v *= 0x94d049bb133111eb
	return v ^ v>>31
}

// Has reports whether hash may have been added: false means certainly not.
func (f *Filter) Has(hash [HashBytes]byte) bool {
	a, b := probes(&hash)
	for i := 0; i < f.k; i++ {
		p := a % f.m
		if atomic.LoadUint64(&f.words[p>>6])&(1<<(p&63)) == 0 {
			return false
		}
		a += b
	}
	return true
}

// Add adds hash and returns how many of its bits were not set before
// (0: the filter already answered true for it).
func (f *Filter) Add(hash [HashBytes]byte) int {
	a, b := probes(&hash)
	n := 0
	for i := 0; i < f.k; i++ {
		p := a % f.m
		bit := uint64(1) << (p & 63)
		if atomic.OrUint64(&f.words[p>>6], bit)&bit == 0 {
			n++
		}
		a += b
	}
	return n
}

// addOwned is Add for a filter no other goroutine can see yet (a build):
// plain stores, several times faster.
func (f *Filter) addOwned(hash *[HashBytes]byte) int {
	a, b := probes(hash)
	n := 0
	for i := 0; i < f.k; i++ {
		p := a % f.m
		w, bit := &f.words[p>>6], uint64(1)<<(p&63)
		if *w&bit == 0 {
			*w |= bit
			n++
		}
		a += b
	}
	return n
}

// Ones counts the set bits.
func (f *Filter) Ones() uint64 {
	var n uint64
	for i := range f.words {
		n += uint64(bits.OnesCount64(atomic.LoadUint64(&f.words[i])))
	}
	return n
}

// FalsePositiveRate estimates, from the share of bits set, how often Has
// answers true for a hash never added.
func (f *Filter) FalsePositiveRate() float64 {
	return fpRate(f.Ones(), f.m, f.k)
}

func fpRate(ones, m uint64, k int) float64 {
	return math.Pow(float64(ones)/float64(m), float64(k))
}

// fold halves the filter while the half still has at least bits bits:
// a filter built large can be shrunk to what its content needs. It is
// exact, because position mod m/2 = (position mod m) mod m/2: bit p of the
// half is the OR of bits p and p+m/2 of the whole, just as if every hash
// had been added to the half. Only for a filter no one else sees yet.
func (f *Filter) fold(bits uint64) {
	for f.m%128 == 0 && f.m/2 >= max(bits, MinIndexBits) {
		half := len(f.words) / 2
		for i := range half {
			f.words[i] |= f.words[half+i]
		}
		f.words = f.words[:half:half]
		f.m /= 2
	}
}

// IndexSize is the size of a filter for about n hashes at
// IndexBitsPerEntry bits each: c*2^j bits with 8 <= c < 16, so that it can
// be folded (halved) down to MinIndexBits and is at most 1/8 larger than
// needed.
func IndexSize(n uint64) uint64 {
	need := max(n*IndexBitsPerEntry, MinIndexBits)
	if need > MaxIndexBits {
		return MaxIndexBits
	}
	j := 6 // c*2^j must be a multiple of 64
	for 15<<j < need {
		j++
	}
	for c := uint64(8); ; c++ {
		if c<<j >= need {
			return min(c<<j, MaxIndexBits)
		}
	}
}

// IndexUpdate is one answer of GET /v1/index: the whole filter, or the
// hashes added since the generation the asker holds.
type IndexUpdate struct {
	// Epoch names the filter: its size and probes, and the tracker
	// process that built it. A delta applies only to a filter of the same
	// epoch.
	Epoch uint64
	// Gen is the generation the answer brings the asker to.
	Gen uint64
	// Lag: the answer may lack hashes added through other trackers (on the
	// same database) in the last Lag; 0 when this tracker sees every write.
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
func (u *IndexUpdate) Full() bool { return u.Filter != nil }

// The binary form of an IndexUpdate (docs/protocol.md): a 40-byte header,
// big-endian, then the filter's bytes or the delta's hashes.
const (
	indexMagic      = "PXIX"
	indexVersion    = 1
	indexKindFull   = 0
	indexKindDelta  = 1
	indexHeaderSize = 40
	// IndexContentType is the media type of a /v1/index answer.
	IndexContentType = "application/vnd.peerix.index"
)

// ErrIndexFormat: an index answer that does not decode.
var ErrIndexFormat = errors.New("malformed index answer")

// MarshalBinary encodes the update.
func (u *IndexUpdate) MarshalBinary() ([]byte, error) {
	var hdr [indexHeaderSize]byte
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
		out := make([]byte, indexHeaderSize, indexHeaderSize+f.m/8)
		copy(out, hdr[:])
		for i := range f.words {
			out = binary.LittleEndian.AppendUint64(out, atomic.LoadUint64(&f.words[i]))
		}
		return out, nil
	}
	if len(u.Add) > MaxIndexDelta {
		return nil, fmt.Errorf("index delta of %d hashes, at most %d", len(u.Add), MaxIndexDelta)
	}
	hdr[5], hdr[6] = indexKindDelta, byte(u.Probes)
	binary.BigEndian.PutUint64(hdr[24:], u.Bits)
	binary.BigEndian.PutUint32(hdr[36:], uint32(len(u.Add)))
	out := make([]byte, indexHeaderSize, indexHeaderSize+HashBytes*len(u.Add))
	copy(out, hdr[:])
	for i := range u.Add {
		out = append(out, u.Add[i][:]...)
	}
	return out, nil
}

// ReadIndexUpdate decodes one answer from r, which must end with it. It
// never allocates much more than the bytes that actually arrive, whatever
// the header claims.
func ReadIndexUpdate(r io.Reader) (*IndexUpdate, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [indexHeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrIndexFormat, err)
	}
	if string(hdr[0:4]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrIndexFormat, hdr[0:4])
	}
	if hdr[4] != indexVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrIndexFormat, hdr[4], indexVersion)
	}
	kind, k := hdr[5], int(hdr[6])
	u := &IndexUpdate{
		Epoch:  binary.BigEndian.Uint64(hdr[8:]),
		Gen:    binary.BigEndian.Uint64(hdr[16:]),
		Bits:   binary.BigEndian.Uint64(hdr[24:]),
		Lag:    time.Duration(binary.BigEndian.Uint32(hdr[32:])) * time.Millisecond,
		Probes: k,
	}
	count := uint64(binary.BigEndian.Uint32(hdr[36:]))
	if k < 1 || k > maxProbes {
		return nil, fmt.Errorf("%w: %d probes", ErrIndexFormat, k)
	}
	if u.Bits < 64 || u.Bits > MaxIndexBits || u.Bits%64 != 0 {
		return nil, fmt.Errorf("%w: filter of %d bits", ErrIndexFormat, u.Bits)
	}
	switch kind {
	case indexKindFull:
		u.Entries = count
		words := make([]uint64, 0, min(u.Bits/64, 1<<16))
		var buf [8 << 10]byte
		for left := u.Bits / 8; left > 0; {
			chunk := buf[:min(left, uint64(len(buf)))]
			if _, err := io.ReadFull(br, chunk); err != nil {
				return nil, fmt.Errorf("%w: filter: %v", ErrIndexFormat, err)
			}
			for i := 0; i < len(chunk); i += 8 {
				words = append(words, binary.LittleEndian.Uint64(chunk[i:]))
			}
			left -= uint64(len(chunk))
		}
		u.Filter = &Filter{m: u.Bits, k: k, words: words}
	case indexKindDelta:
		if count > MaxIndexDelta {
			return nil, fmt.Errorf("%w: delta of %d hashes", ErrIndexFormat, count)
		}
		u.Add = make([][HashBytes]byte, 0, min(count, 4096))
		var h [HashBytes]byte
		for range count {
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return nil, fmt.Errorf("%w: delta: %v", ErrIndexFormat, err)
			}
			u.Add = append(u.Add, h)
		}
	default:
		return nil, fmt.Errorf("%w: kind %d", ErrIndexFormat, kind)
	}
	if n, _ := br.Read(hdr[:1]); n != 0 {
		return nil, fmt.Errorf("%w: trailing bytes", ErrIndexFormat)
	}
	return u, nil
}
