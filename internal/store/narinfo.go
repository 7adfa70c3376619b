package store

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// StoreDir is the logical store directory every narinfo names paths in.
const StoreDir = "/nix/store"

// MaxNarSize bounds the NarSize a narinfo may claim (4 EiB): far beyond any
// real path, small enough that offsets never overflow.
const MaxNarSize = 1 << 62

// HashOfPath returns the hash part of a store path /nix/store/<hash>-<name>.
func HashOfPath(storePath string) (string, bool) {
	base, ok := strings.CutPrefix(storePath, StoreDir+"/")
	if !ok || !ValidPathName(base) {
		return "", false
	}
	return base[:HashLen], true
}

// CheckNarInfo checks that ni describes the store path with hash part hash
// (a well-formed /nix/store/<hash>-<name>, references of the same form) and
// carries a SHA-256 NarHash and a NarSize: what any narinfo, from the
// upstream or from a peer, must have before anything else is believed.
func CheckNarInfo(ni *narinfo.NarInfo, hash string) error {
	if ni == nil {
		return errors.New("no narinfo")
	}
	if h, ok := HashOfPath(ni.StorePath); !ok || h != hash {
		return fmt.Errorf("narinfo is for %q, not %s", ni.StorePath, hash)
	}
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || len(ni.NarHash.Digest()) != 32 {
		return fmt.Errorf("narinfo for %s lacks a sha256 NarHash", ni.StorePath)
	}
	if ni.NarSize == 0 || ni.NarSize > MaxNarSize {
		return fmt.Errorf("narinfo for %s has NarSize %d", ni.StorePath, ni.NarSize)
	}
	for _, ref := range ni.References {
		if !ValidPathName(ref) {
			return fmt.Errorf("narinfo for %s names reference %q", ni.StorePath, ref)
		}
	}
	return nil
}

// CheckPeerNarInfo is CheckNarInfo plus what peerix asks of a peer's
// narinfo: an uncompressed NAR, and a URL (if any) that is a plain relative
// path, so that resolving it against the peer's address can only ever
// reach the peer itself.
func CheckPeerNarInfo(ni *narinfo.NarInfo, hash string) error {
	if err := CheckNarInfo(ni, hash); err != nil {
		return err
	}
	if ni.Compression != "" && ni.Compression != "none" {
		return fmt.Errorf("narinfo for %s: compression %q (only none is taken from peers)", ni.StorePath, ni.Compression)
	}
	if ni.URL != "" && !ValidRelativeURL(ni.URL) {
		return fmt.Errorf("narinfo for %s: URL %q", ni.StorePath, ni.URL)
	}
	return nil
}

// ValidPathName reports whether s is the last segment of a store path:
// a hash part, '-', and a name of at most 211 characters from Nix's
// alphabet for names, not starting with '.'.
func ValidPathName(s string) bool {
	if len(s) < HashLen+2 || len(s) > HashLen+1+211 || s[HashLen] != '-' || !ValidHash(s[:HashLen]) {
		return false
	}
	name := s[HashLen+1:]
	if name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return false
		}
	}
	return true
}

// ValidRelativeURL reports whether u is a relative URL path of plain
// segments: no scheme, host, query, "." or "..", and only the characters
// NAR URLs use.
func ValidRelativeURL(u string) bool {
	if u == "" || strings.HasPrefix(u, "/") || len(u) > 512 {
		return false
	}
	for _, seg := range strings.Split(u, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/-_.+=", c) >= 0) {
			return false
		}
	}
	return true
}

// PeerNarInfo is the narinfo a daemon hands its own Nix for a path found
// on peers of source ("lan", "p2p"): ni with an uncompressed NAR at the
// content-addressed URL nar/<source>/<hash>-<NarHash>.nar. ni has passed
// CheckNarInfo.
func PeerNarInfo(ni *narinfo.NarInfo, source string) *narinfo.NarInfo {
	out := *ni
	base := strings.TrimPrefix(ni.StorePath, StoreDir+"/")
	out.URL = NarRef{Source: source, Hash: base[:HashLen], NarHash: ni.NarHash.Format(nixhash.NixBase32, false)}.URL()
	out.Compression = "none"
	out.FileHash, out.FileSize = ni.NarHash, ni.NarSize
	return &out
}
