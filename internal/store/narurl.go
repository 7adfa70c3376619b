package store

import (
	"fmt"
	"strings"
)

// NarRef names a NAR by content: the store path's hash part and the NAR's
// NarHash. Every NAR URL peerix hands out is a NarRef in one of two shapes:
//
//	nar/<hash>-<NarHash>.nar           the local store's NARs
//	nar/<source>/<hash>-<NarHash>.nar  NARs found on peers ("lan", "p2p")
//
// The hash part finds the path with one indexed lookup; the NarHash turns a
// stale URL (the path was collected and built again differently) into a
// miss instead of a NAR that does not match what Nix remembered, and lets
// any holder of the same content serve a peer NAR URL.
type NarRef struct {
	// Source is "" for the local store, else the peer source's name: one
	// path segment of lowercase letters and digits.
	Source string
	// Hash is the store path's 32-character hash part.
	Hash string
	// NarHash is the SHA-256 of the NAR in Nix base-32 (52 characters).
	NarHash string
}

// NarHashLen is the length of a SHA-256 in Nix base-32.
const NarHashLen = 52

// URL renders the reference as a narinfo's URL field.
func (r NarRef) URL() string {
	if r.Source == "" {
		return "nar/" + r.Hash + "-" + r.NarHash + ".nar"
	}
	return "nar/" + r.Source + "/" + r.Hash + "-" + r.NarHash + ".nar"
}

// ParseNarURL parses a NAR URL of either shape, refusing anything else
// with an error wrapping ErrBadRequest.
func ParseNarURL(u string) (NarRef, error) {
	rest, ok := strings.CutPrefix(u, "nar/")
	if ok {
		rest, ok = strings.CutSuffix(rest, ".nar")
	}
	var r NarRef
	if ok {
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			r.Source, rest = rest[:i], rest[i+1:]
			ok = validSource(r.Source)
		}
	}
	if !ok || len(rest) != HashLen+1+NarHashLen || rest[HashLen] != '-' ||
		!ValidHash(rest[:HashLen]) || !ValidNarHash(rest[HashLen+1:]) {
		return NarRef{}, fmt.Errorf("NAR URL %q: %w", u, ErrBadRequest)
	}
	r.Hash, r.NarHash = rest[:HashLen], rest[HashLen+1:]
	return r, nil
}

func validSource(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ValidNarHash reports whether s is a SHA-256 in Nix base-32: 52
// characters of the alphabet, the first of which holds only the top bit
// (52 x 5 = 260 bits for 256), so it is 0 or 1.
func ValidNarHash(s string) bool {
	return len(s) == NarHashLen && ValidBase32(s) && (s[0] == '0' || s[0] == '1')
}
