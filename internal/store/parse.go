package store

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// MaxNarInfoSize bounds the narinfo text ParseNarInfo takes (the
// upstream's, which may name thousands of references); peers' narinfos
// are bounded tighter by their transports (64 KiB).
const MaxNarInfoSize = 1 << 20

// ParseNarInfo parses narinfo text (from a peer or the upstream) the way
// go-nix's narinfo.Parse does, into its type, with two differences that
// matter on a hot path and on network input: it allocates only what the
// text needs (narinfo.Parse zeroes a 1 MiB line buffer for every call:
// most of a lookup's CPU), and a line it does not know is skipped, not an
// error (a newer Nix's field is no reason to refuse a path; nothing
// unknown is ever handed on). Text over MaxNarInfoSize is refused.
func ParseNarInfo(b []byte) (*narinfo.NarInfo, error) {
	if len(b) > MaxNarInfoSize {
		return nil, fmt.Errorf("narinfo of %d bytes, at most %d", len(b), MaxNarInfoSize)
	}
	ni := &narinfo.NarInfo{}
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(line), ": ")
		if !ok || strings.Contains(v, ": ") {
			return nil, fmt.Errorf("narinfo line %q is not \"Key: value\"", truncate(line))
		}
		var err error
		switch k {
		case "StorePath":
			ni.StorePath = v
		case "URL":
			ni.URL = v
		case "Compression":
			ni.Compression = v
		case "FileHash":
			ni.FileHash, err = nixhash.ParseAny(v, nil)
		case "FileSize":
			ni.FileSize, err = strconv.ParseUint(v, 10, 64)
		case "NarHash":
			ni.NarHash, err = nixhash.ParseAny(v, nil)
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(v, 10, 64)
		case "References":
			if v != "" {
				ni.References = append(ni.References, strings.Split(v, " ")...)
			}
		case "Deriver":
			if v != "unknown-deriver" {
				ni.Deriver = v
			}
		case "System":
			ni.System = v
		case "Sig":
			var sig signature.Signature
			if sig, err = signature.ParseSignature(v); err == nil {
				ni.Signatures = append(ni.Signatures, sig)
			}
		case "CA":
			ni.CA = v
		}
		if err != nil {
			return nil, fmt.Errorf("narinfo %s %q: %w", k, truncate([]byte(v)), err)
		}
	}
	if ni.StorePath == "" {
		return nil, errors.New("narinfo without StorePath")
	}
	// No Compression line means bzip2 (Nix's default).
	if ni.Compression == "" {
		ni.Compression = "bzip2"
	}
	return ni, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
