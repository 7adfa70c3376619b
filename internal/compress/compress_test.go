package compress

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

func TestRoundTripAndSample(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 30000)
	for _, tt := range []struct {
		name  string
		data  []byte
		worth bool
	}{
		{"random", random, false},
		{"text", text, true},
		{"tiny", []byte("x"), false},
	} {
		r, worth, err := Sample(bytes.NewReader(tt.data))
		if err != nil || worth != tt.worth {
			t.Fatalf("%s: Sample = %v, %v; want worth %v", tt.name, worth, err, tt.worth)
		}
		var wire bytes.Buffer
		w := NewWriter(&wire)
		if _, err := io.Copy(w, r); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		c := &Counter{R: &wire}
		zr, err := NewReader(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		zr.Close()
		if err != nil || !bytes.Equal(got, tt.data) {
			t.Fatalf("%s: round trip: %d bytes, %v", tt.name, len(got), err)
		}
		t.Logf("%s: %d bytes, %d on the wire", tt.name, len(tt.data), c.N)
	}
}

// FuzzReader: compressed streams come from peers. Decoding garbage fails,
// never panics.
func FuzzReader(f *testing.F) {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Write([]byte("hello hello hello"))
	w.Close()
	f.Add(b.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
		r.Close()
	})
}
