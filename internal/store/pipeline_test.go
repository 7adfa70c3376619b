package store

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("client went away")
	}
	w.after--
	return len(p), nil
}

func TestPipeline(t *testing.T) {
	t.Parallel()
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	tests := []struct {
		name    string
		src     io.Reader
		w       io.Writer
		want    []byte
		wantErr bool
	}{
		{"whole", bytes.NewReader(data), &bytes.Buffer{}, data, false},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data[:70000])), &bytes.Buffer{}, data[:70000], false},
		{"empty", bytes.NewReader(nil), &bytes.Buffer{}, nil, false},
		{"read error after data", io.MultiReader(bytes.NewReader(data[:1000]), iotest.ErrReader(errors.New("peer broke"))), &bytes.Buffer{}, data[:1000], true},
		{"write error", bytes.NewReader(data), &failingWriter{after: 2}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := pipeline(tt.w, tt.src)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if buf, ok := tt.w.(*bytes.Buffer); ok {
				if !bytes.Equal(buf.Bytes(), tt.want) || n != int64(len(tt.want)) {
					t.Fatalf("copied %d bytes (n=%d), want %d equal bytes", buf.Len(), n, len(tt.want))
				}
			}
		})
	}
}
