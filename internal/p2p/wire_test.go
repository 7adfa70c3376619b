package p2p

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/peerix/peerix/internal/store"
)

const (
	seedHash    = "0123456789abcdfghijklmnpqrsvwxyz"
	seedNarHash = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
)

func TestNarRequestRoundTrip(t *testing.T) {
	for _, off := range []int64{0, 1, 1 << 40} {
		r := NarRequest{Hash: seedHash, NarHash: seedNarHash, Offset: off}
		b := EncodeNarRequest(r)
		if len(b) != narRequestLen {
			t.Fatalf("request of %d bytes", len(b))
		}
		got, err := DecodeNarRequest(b)
		if err != nil || got != r {
			t.Errorf("round trip: %+v %v", got, err)
		}
	}
	for _, b := range [][]byte{
		nil,
		make([]byte, narRequestLen),
		EncodeNarRequest(NarRequest{Hash: strings.ToUpper(seedHash), NarHash: seedNarHash}),
		EncodeNarRequest(NarRequest{Hash: seedHash, NarHash: "z" + seedNarHash[1:]}),
		EncodeNarRequest(NarRequest{Hash: seedHash, NarHash: seedNarHash, Offset: -1}),
		append(EncodeNarRequest(NarRequest{Hash: seedHash, NarHash: seedNarHash}), 0),
	} {
		if _, err := DecodeNarRequest(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("DecodeNarRequest(%q) = %v, want ErrProtocol", b, err)
		}
	}
}

func TestAnswers(t *testing.T) {
	for _, tc := range []struct {
		b      []byte
		ok     bool
		status byte
	}{
		{[]byte{StatusNotFound}, true, StatusNotFound},
		{[]byte{StatusRefused}, true, StatusRefused},
		{[]byte{StatusError}, true, StatusError},
		{append([]byte{StatusError}, "disk on fire"...), true, StatusError},
		{append([]byte{StatusError}, 0xff, 0xfe), false, 0},
		{append([]byte{StatusError}, bytes.Repeat([]byte("x"), MaxErrorMessage+1)...), false, 0},
		{[]byte{StatusNotFound, 0}, false, 0},
		{[]byte{0x04}, false, 0},
		{nil, false, 0},
	} {
		a, err := decodeStatus(tc.b)
		if (err == nil) != tc.ok || tc.ok && a.Status != tc.status {
			t.Errorf("decodeStatus(%q) = %+v, %v", tc.b, a, err)
		}
	}
	if _, size, err := DecodeNarAnswer(binary.BigEndian.AppendUint64([]byte{StatusFound}, 1234)); err != nil || size != 1234 {
		t.Errorf("found NAR answer: %d %v", size, err)
	}
	for _, b := range [][]byte{{StatusFound}, {StatusFound, 0, 0, 0, 0, 0, 0, 0, 0}, {StatusFound, 1, 2, 3}} {
		if _, _, err := DecodeNarAnswer(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("DecodeNarAnswer(%v) = %v", b, err)
		}
	}
	// Error messages are cut at the limit on a rune boundary.
	msg := strings.Repeat("é", MaxErrorMessage)
	a, err := decodeStatus(errorAnswer(msg))
	if err != nil || len(a.Payload) > MaxErrorMessage || !utf8.Valid(a.Payload) {
		t.Errorf("long error message: %d bytes, %v", len(a.Payload), err)
	}
	if err := (Answer{Status: StatusNotFound}).Err("x"); !errors.Is(err, store.ErrNotFound) {
		t.Error(err)
	}
	// An older peer's refused is not found, nothing more.
	if err := (Answer{Status: StatusRefused}).Err("x"); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrRefused) {
		t.Error(err)
	}
}

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	writeFrame(&buf, []byte("hello"))
	if b, err := readFrame(bytes.NewReader(buf.Bytes()), 5); err != nil || string(b) != "hello" {
		t.Errorf("frame: %q %v", b, err)
	}
	if _, err := readFrame(bytes.NewReader(buf.Bytes()), 4); !errors.Is(err, ErrProtocol) {
		t.Errorf("oversized frame: %v", err)
	}
	if _, err := readFrame(bytes.NewReader(buf.Bytes()[:6]), 5); !errors.Is(err, ErrProtocol) {
		t.Errorf("truncated frame: %v", err)
	}
	if _, err := readFrame(bytes.NewReader(nil), 5); err != io.EOF {
		t.Errorf("no frame: %v", err)
	}
	if _, err := readExactFrame(bytes.NewReader(buf.Bytes()), 4); !errors.Is(err, ErrProtocol) {
		t.Errorf("frame of the wrong length: %v", err)
	}
}

func FuzzDecodeNarInfoRequest(f *testing.F) {
	f.Add(frame([]byte(seedHash)))
	f.Add(frame([]byte("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 32})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		payload, err := readExactFrame(r, narInfoRequestLen)
		if err != nil {
			if int(r.Size())-r.Len() > 4+narInfoRequestLen {
				t.Fatalf("read %d bytes", int(r.Size())-r.Len())
			}
			return
		}
		hash, err := DecodeNarInfoRequest(payload)
		if err == nil && !store.ValidHash(hash) {
			t.Fatalf("accepted %q", hash)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v is not a protocol error", err)
		}
	})
}

func FuzzDecodeNarRequest(f *testing.F) {
	f.Add(EncodeNarRequest(NarRequest{Hash: seedHash, NarHash: seedNarHash, Offset: 7}))
	f.Add(make([]byte, narRequestLen))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeNarRequest(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		if !store.ValidHash(r.Hash) || !validNarHash(r.NarHash) || r.Offset < 0 {
			t.Fatalf("accepted %+v", r)
		}
		if !bytes.Equal(EncodeNarRequest(r), b) {
			t.Fatalf("not a round trip: %+v", r)
		}
		// The URL built from it is always a plain local NAR URL.
		u := "nar/" + r.Hash + "-" + r.NarHash + ".nar"
		if strings.Contains(u, "..") || strings.Count(u, "/") != 1 {
			t.Fatalf("URL %q", u)
		}
	})
}

func FuzzReadStatus(f *testing.F) {
	f.Add(frame([]byte{StatusNotFound}))
	f.Add(frame(append([]byte{StatusFound}, "StorePath: /nix/store/x\n"...)))
	f.Add(frame(append([]byte{StatusError}, "boom"...)))
	f.Add(frame(binary.BigEndian.AppendUint64([]byte{StatusFound}, 99)))
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ReadStatus(bytes.NewReader(b), MaxNarInfoFrame)
		if err != nil {
			return
		}
		if a.Status > StatusError {
			t.Fatalf("status %d accepted", a.Status)
		}
		if a.Status == StatusError && (len(a.Payload) > MaxErrorMessage || !utf8.Valid(a.Payload)) {
			t.Fatalf("bad error message accepted")
		}
		if (a.Status == StatusNotFound || a.Status == StatusRefused) && len(a.Payload) != 0 {
			t.Fatalf("payload with status %d", a.Status)
		}
		payload := b[4 : 4+1+len(a.Payload)]
		if _, size, err := DecodeNarAnswer(payload); err == nil && a.Status == StatusFound && (size <= 0 || len(a.Payload) != 8) {
			t.Fatalf("NAR answer size %d from %d bytes", size, len(a.Payload))
		}
	})
}

// A peer's narinfo text never panics the parser or the checks.
func FuzzPeerNarInfo(f *testing.F) {
	f.Add([]byte("StorePath: /nix/store/" + seedHash + "-x\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:" + seedNarHash + "\nNarSize: 5\nReferences: \n"))
	f.Add([]byte("NarHash: md5:zzz\n"))
	f.Add([]byte("StorePath: \nReferences: a b c\nSig: x:y\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ni, err := parseNarInfo(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		if store.CheckPeerNarInfo(ni, seedHash) == nil {
			if ni.NarHash == nil || ni.NarSize == 0 {
				t.Fatal("accepted a narinfo without NarHash or NarSize")
			}
			// What the Store hands Nix names the NAR by a URL it parses back.
			out := store.PeerNarInfo(ni, Source)
			ref, err := store.ParseNarURL(out.URL)
			if err != nil || ref.Source != Source || ref.Hash != seedHash || out.Compression != "none" {
				t.Fatalf("peer narinfo URL %q: %+v, %v", out.URL, ref, err)
			}
		}
	})
}
