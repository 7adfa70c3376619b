package store

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

const sampleNarInfo = `StorePath: /nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12
URL: nar/0123456789abcdfghijklmnpqrsvwxyz-1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar
Compression: none
FileHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s
FileSize: 226488
NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s
NarSize: 226488
References: 0123456789abcdfghijklmnpqrsvwxyz-hello-2.12 1123456789abcdfghijklmnpqrsvwxyz-glibc-2.37
Deriver: 2123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv
Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==
CA: fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s
`

// ParseNarInfo reads what go-nix's Parse reads, the same way.
func TestParseNarInfoAsGoNix(t *testing.T) {
	for _, text := range []string{
		sampleNarInfo,
		strings.Replace(sampleNarInfo, "Compression: none\n", "", 1), // bzip2 by default
		strings.Replace(sampleNarInfo, "Deriver: 2123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv", "Deriver: unknown-deriver", 1),
		strings.Replace(sampleNarInfo, "References: 0123", "References: \nReferences: 0123", 1),
		strings.ReplaceAll(sampleNarInfo, "\n", "\r\n"),
		"\n" + sampleNarInfo + "\n\n",
	} {
		want, err := narinfo.Parse(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseNarInfo([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ParseNarInfo = %+v\ngo-nix Parse = %+v", got, want)
		}
	}
}

func TestParseNarInfoRefuses(t *testing.T) {
	for name, text := range map[string]string{
		"no separator":   "StorePath /nix/store/x\n",
		"two separators": "StorePath: a: b\n",
		"bad NarHash":    strings.Replace(sampleNarInfo, "NarHash: sha256:1", "NarHash: sha256:e", 1),
		"bad NarSize":    strings.Replace(sampleNarInfo, "NarSize: 226488", "NarSize: -1", 1),
		"bad signature":  "StorePath: x\nSig: nocolon\n",
		"no StorePath":   "URL: nar/x.nar\n",
		"too large":      sampleNarInfo + strings.Repeat("References: "+strings.Repeat("x", 100)+"\n", 11000),
		"empty":          "",
	} {
		if ni, err := ParseNarInfo([]byte(text)); err == nil {
			t.Errorf("%s: accepted (%.80s...)", name, ni.StorePath)
		}
	}
	// A field it does not know is skipped.
	ni, err := ParseNarInfo([]byte(sampleNarInfo + "Future: thing\n"))
	if err != nil || ni.StorePath == "" {
		t.Errorf("unknown field: %v", err)
	}
}

// FuzzParseNarInfo: narinfos come from peers. ParseNarInfo never panics,
// and what go-nix accepts it reads the same.
func FuzzParseNarInfo(f *testing.F) {
	f.Add([]byte(sampleNarInfo))
	f.Add([]byte("StorePath: x\nNarHash: sha256:\n"))
	f.Add([]byte("Sig: a:b\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseNarInfo(b)
		want, werr := func() (ni *narinfo.NarInfo, err error) {
			defer func() {
				if recover() != nil {
					ni, err = nil, errPanic
				}
			}()
			return narinfo.Parse(bytes.NewReader(b))
		}()
		if err == nil && werr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseNarInfo(%q) = %+v, go-nix %+v", b, got, want)
		}
	})
}

var errPanic = bytesErr("go-nix panicked")

type bytesErr string

func (e bytesErr) Error() string { return string(e) }
