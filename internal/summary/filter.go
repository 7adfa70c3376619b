package summary

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sync/atomic"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Filter is a Bloom filter of store hashes. Has never answers false for a
// hash that was added; it answers true for a hash never added with a small
// probability (the false-positive rate).
//
// Has and Add may run concurrently (the words are read and set
// atomically), so a peer applies deltas while lookups go on.
type Filter struct {
	m     uint64 // size in bits, a multiple of 64
	k     int    // probes per hash
	words []uint64
}

// Filter parameters. Twelve bits and eight probes a hash give a
// false-positive rate of about 0.3% at build time (at most 1% before the
// publisher rebuilds it): the share of misses that still ask a holder.
const (
	BitsPerEntry  = 12
	DefaultProbes = 8
	// MinBits is the smallest filter built (8 KiB).
	MinBits = 1 << 16
	// MaxBits bounds a filter (128 MiB, about 89 M hashes).
	MaxBits = 1 << 30
	// MaxDelta bounds the hashes of one delta answer.
	MaxDelta  = 1 << 20
	maxProbes = 16
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

// AddOwned is Add for a filter no other goroutine can see yet (a build):
// plain stores, several times faster.
func (f *Filter) AddOwned(hash *[HashBytes]byte) int {
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
	return FPRate(f.Ones(), f.m, f.k)
}

// FPRate is the false-positive rate of a filter of m bits, ones of them
// set, probing k.
func FPRate(ones, m uint64, k int) float64 {
	return math.Pow(float64(ones)/float64(m), float64(k))
}

// fold halves the filter while the half still has at least bits bits:
// a filter built large can be shrunk to what its content needs. It is
// exact, because position mod m/2 = (position mod m) mod m/2: bit p of the
// half is the OR of bits p and p+m/2 of the whole, just as if every hash
// had been added to the half. Only for a filter no one else sees yet.
func (f *Filter) Fold(bits uint64) {
	for f.m%128 == 0 && f.m/2 >= max(bits, MinBits) {
		half := len(f.words) / 2
		for i := range half {
			f.words[i] |= f.words[half+i]
		}
		f.words = f.words[:half:half]
		f.m /= 2
	}
}

// Size is the size of a filter for about n hashes at
// BitsPerEntry bits each: c*2^j bits with 8 <= c < 16, so that it can
// be folded (halved) down to MinBits and is at most 1/8 larger than
// needed.
func Size(n uint64) uint64 {
	need := max(n*BitsPerEntry, MinBits)
	if need > MaxBits {
		return MaxBits
	}
	j := 6 // c*2^j must be a multiple of 64
	for 15<<j < need {
		j++
	}
	for c := uint64(8); ; c++ {
		if c<<j >= need {
			return min(c<<j, MaxBits)
		}
	}
}
