package summary

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// randHashes returns n pseudo-random decoded hashes.
func randHashes(seed uint64, n int) [][HashBytes]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([][HashBytes]byte, n)
	for i := range out {
		for j := 0; j < HashBytes; j += 4 {
			binary.LittleEndian.PutUint32(out[i][j:], r.Uint32())
		}
	}
	return out
}

func TestFilterHasAndFalsePositives(t *testing.T) {
	t.Parallel()
	const n = 20000
	in := randHashes(1, n)
	f := NewFilter(Size(n), DefaultProbes)
	for _, h := range in {
		f.Add(h)
	}
	for _, h := range in {
		if !f.Has(h) {
			t.Fatalf("false negative for %x", h)
		}
	}
	// Hashes that share most bytes (like test fixtures) still spread.
	var fixture [HashBytes]byte
	for i := range 1000 {
		fixture[19] = byte(i)
		fixture[18] = byte(i >> 8)
		f.Add(fixture)
	}
	fp := 0
	for _, h := range randHashes(2, 100000) {
		if f.Has(h) {
			fp++
		}
	}
	rate, est := float64(fp)/100000, f.FalsePositiveRate()
	if rate > 0.006 || est > 0.006 {
		t.Errorf("false-positive rate %.4f (estimated %.4f) at %d bits for %d hashes; want about 0.003",
			rate, est, f.Bits(), n+1000)
	}
	t.Logf("%d hashes in %d bytes: false-positive rate %.4f, estimated %.4f", n+1000, f.Bits()/8, rate, est)
}

func TestSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n          uint64
		atLeast    uint64
		atMostOver float64
	}{
		{0, MinBits, 1},
		{1, MinBits, 1},
		{5000, 5000 * BitsPerEntry, 1.6},
		{20000, 20000 * BitsPerEntry, 1.13},
		{1_000_000, 1_000_000 * BitsPerEntry, 1.13},
		{20_000_000, 20_000_000 * BitsPerEntry, 1.13},
		{1 << 40, MaxBits, 1},
	}
	for _, tt := range tests {
		m := Size(tt.n)
		if m%64 != 0 || m < min(tt.atLeast, MaxBits) || float64(m) > float64(tt.atLeast)*tt.atMostOver || m > MaxBits {
			t.Errorf("Size(%d) = %d bits; want a multiple of 64 in [%d, %.0f]", tt.n, m, tt.atLeast, float64(tt.atLeast)*tt.atMostOver)
		}
	}
	if m := Size(20_000_000); m/8 != 30<<20 {
		t.Errorf("20 M hashes: %d bytes, want 30 MiB", m/8)
	}
}

// Folding a filter built large gives exactly the filter built small.
func TestFilterFold(t *testing.T) {
	t.Parallel()
	in := randHashes(3, 3000)
	big := NewFilter(Size(1_000_000), DefaultProbes)
	for i := range in {
		big.AddOwned(&in[i])
	}
	big.Fold(3000 * BitsPerEntry)
	if big.Bits() < 3000*BitsPerEntry || big.Bits() >= 2*max(3000*BitsPerEntry, MinBits) {
		t.Fatalf("folded to %d bits, want [%d, %d)", big.Bits(), 3000*BitsPerEntry, 2*3000*BitsPerEntry)
	}
	small := NewFilter(big.Bits(), DefaultProbes)
	for _, h := range in {
		small.Add(h)
	}
	if !slices.Equal(big.words, small.words) {
		t.Fatal("folded filter differs from one built at its size")
	}
}

func encode(t testing.TB, u *Update) []byte {
	t.Helper()
	b, err := u.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUpdateCodec(t *testing.T) {
	t.Parallel()
	f := NewFilter(MinBits, DefaultProbes)
	for _, h := range randHashes(4, 500) {
		f.Add(h)
	}
	full := &Update{Epoch: 0xfeedface01020304, Gen: 7, Lag: 1500 * time.Millisecond, Entries: 500, Filter: f}
	delta := &Update{Epoch: 0xfeedface01020304, Gen: 9, Bits: f.Bits(), Probes: f.Probes(), Add: randHashes(5, 3)}
	empty := &Update{Epoch: 1, Gen: 9, Bits: 64, Probes: 1, Add: [][HashBytes]byte{}}
	good := map[string]*Update{"full": full, "delta": delta, "empty delta": empty}
	for name, u := range good {
		b := encode(t, u)
		got, err := ReadUpdate(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Epoch != u.Epoch || got.Gen != u.Gen || got.Lag != u.Lag || got.Full() != u.Full() {
			t.Errorf("%s: got %+v, want %+v", name, got, u)
		}
		if u.Full() {
			if got.Bits != f.Bits() || got.Probes != f.Probes() || got.Entries != 500 || !slices.Equal(got.Filter.words, f.words) {
				t.Errorf("%s: filter differs", name)
			}
		} else if got.Bits != u.Bits || got.Probes != u.Probes || !slices.Equal(got.Add, u.Add) {
			t.Errorf("%s: delta differs: %+v", name, got)
		}
		if again := encode(t, got); !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoding differs", name)
		}
	}

	d := encode(t, delta)
	fb := encode(t, full)
	with := func(b []byte, at int, v ...byte) []byte {
		b = slices.Clone(b)
		copy(b[at:], v)
		return b
	}
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	bad := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short header", d[:39]},
		{"bad magic", with(d, 0, 'X')},
		{"version 2", with(d, 4, 2)},
		{"unknown kind", with(d, 5, 2)},
		{"no probes", with(d, 6, 0)},
		{"17 probes", with(d, 6, 17)},
		{"bits not a multiple of 64", with(d, 24, u64(65)...)},
		{"no bits", with(d, 24, u64(0)...)},
		{"too many bits", with(d, 24, u64(MaxBits+64)...)},
		{"delta truncated", d[:len(d)-1]},
		{"delta count larger than body", with(d, 36, u32(4)...)},
		{"delta count over the limit", with(d, 36, u32(MaxDelta+1)...)},
		{"delta trailing byte", append(slices.Clone(d), 0)},
		{"full truncated", fb[:len(fb)-8]},
		{"full trailing bytes", append(slices.Clone(fb), 1, 2, 3)},
		{"full claims 128 MiB", with(fb, 24, u64(MaxBits)...)},
	}
	for _, tt := range bad {
		if u, err := ReadUpdate(bytes.NewReader(tt.b)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %+v, %v; want ErrFormat", tt.name, u, err)
		}
	}
}

// FuzzReadUpdate: index answers are network input. The decoder must
// never panic, never allocate for bytes that did not arrive, and what it
// accepts must encode back to the same bytes.
func FuzzReadUpdate(f *testing.F) {
	flt := NewFilter(64*3, 3)
	flt.Add([HashBytes]byte{1, 2, 3})
	for _, u := range []*Update{
		{Epoch: 1, Gen: 2, Lag: time.Second, Entries: 1, Filter: flt},
		{Epoch: 1, Gen: 3, Bits: 192, Probes: 3, Add: randHashes(6, 2)},
		{Epoch: 1, Gen: 3, Bits: 192, Probes: 3},
	} {
		b, _ := u.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte("PXIX\x01\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ReadUpdate(bytes.NewReader(b))
		if err != nil {
			if u != nil {
				t.Fatal("an error with an update")
			}
			return
		}
		if b[7] != 0 {
			return // reserved byte: ignored, encoded as 0
		}
		again, err := u.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
		if u.Full() {
			var h [HashBytes]byte
			u.Filter.Has(h) // must not panic
		}
	})
}
