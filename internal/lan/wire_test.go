package lan

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

const testHash = "8vxafijim41pzr4531ndr322wmldzc0v"

func TestDecode(t *testing.T) {
	t.Parallel()
	req := AppendRequest(nil, Request{ID: 0x01020304, Hash: testHash})
	resp := AppendResponse(nil, Response{ID: 7, HTTPPort: 12304, Path: "local/" + testHash + ".narinfo"})
	beacon := AppendBeacon(nil, Beacon{HTTPPort: 12304, Epoch: 0x0102030405060708, Gen: 9, Hello: true})
	tests := []struct {
		name string
		in   []byte
		want any
	}{
		{"request", req, &Request{ID: 0x01020304, Hash: testHash}},
		{"response", resp, &Response{ID: 7, HTTPPort: 12304, Path: "local/" + testHash + ".narinfo"}},
		{"original peer's bytes", append([]byte{0, 0, 0, 0, 42}, testHash...), &Request{ID: 42, Hash: testHash}},
		{"empty", nil, nil},
		{"beacon", beacon, &Beacon{HTTPPort: 12304, Epoch: 0x0102030405060708, Gen: 9, Hello: true}},
		{"bye", AppendBeacon(nil, Beacon{HTTPPort: 1, Bye: true}), &Beacon{HTTPPort: 1, Bye: true}},
		{"beacon of a newer version", append([]byte{2, 2}, beacon[2:]...), nil},
		{"beacon short", beacon[:len(beacon)-1], nil},
		{"beacon long", append(bytes.Clone(beacon), 0), nil},
		{"beacon port 0", AppendBeacon(nil, Beacon{}), nil},
		{"beacon unknown flag", append(bytes.Clone(beacon[:20]), 0x80), nil},
		{"unknown kind", append([]byte{3}, req[1:]...), nil},
		{"short request", req[:len(req)-1], nil},
		{"long request", append(bytes.Clone(req), 'a'), nil},
		{"hash with e", append([]byte{0, 0, 0, 0, 1}, strings.Repeat("e", 32)...), nil},
		{"upper-case hash", append([]byte{0, 0, 0, 0, 1}, strings.ToUpper(testHash)...), nil},
		{"response port 0", AppendResponse(nil, Response{ID: 1, HTTPPort: 0, Path: "local/" + testHash + ".narinfo"}), nil},
		{"response absolute path", AppendResponse(nil, Response{ID: 1, HTTPPort: 1, Path: "/local/" + testHash + ".narinfo"}), nil},
		{"response dot-dot", AppendResponse(nil, Response{ID: 1, HTTPPort: 1, Path: "../" + testHash + ".narinfo"}), nil},
		{"response url", AppendResponse(nil, Response{ID: 1, HTTPPort: 1, Path: "http://evil/" + testHash + ".narinfo"}), nil},
		{"response not narinfo", AppendResponse(nil, Response{ID: 1, HTTPPort: 1, Path: "etc/passwd"}), nil},
		{"response truncated", resp[:8], nil},
		{"response oversized", AppendResponse(nil, Response{ID: 1, HTTPPort: 1, Path: strings.Repeat("a/", 200) + testHash + ".narinfo"}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("Decode(%q) = %#v, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Decode = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestResponsePortBigEndian32(t *testing.T) {
	t.Parallel()
	b := AppendResponse(nil, Response{ID: 1, HTTPPort: 12304, Path: "local/" + testHash + ".narinfo"})
	if !bytes.Equal(b[5:9], []byte{0, 0, 0x30, 0x10}) {
		t.Fatalf("port bytes = %x, want 00003010", b[5:9])
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(AppendRequest(nil, Request{ID: 1, Hash: testHash}))
	f.Add(AppendResponse(nil, Response{ID: 1, HTTPPort: 80, Path: "local/" + testHash + ".narinfo"}))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 80})
	f.Add(AppendBeacon(nil, Beacon{HTTPPort: 12304, Epoch: 1, Gen: 2, Bye: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same bytes.
		var again []byte
		switch m := m.(type) {
		case *Request:
			again = AppendRequest(nil, *m)
		case *Response:
			again = AppendResponse(nil, *m)
		case *Beacon:
			again = AppendBeacon(nil, *m)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip %x -> %#v -> %x", b, m, again)
		}
	})
}
