package cache

import (
	"strconv"

	"github.com/nix-community/go-nix/pkg/narinfo"
)

// AppendNarInfo appends ni in the narinfo text format Nix reads. It writes
// what go-nix's NarInfo.String writes, without fmt, because it runs on every
// narinfo request.
func AppendNarInfo(b []byte, ni *narinfo.NarInfo) []byte {
	b = appendField(b, "StorePath: ", ni.StorePath)
	b = appendField(b, "URL: ", ni.URL)
	b = appendField(b, "Compression: ", ni.Compression)
	if ni.FileHash != nil && ni.FileSize != 0 {
		b = appendField(b, "FileHash: ", ni.FileHash.String())
		b = append(b, "FileSize: "...)
		b = strconv.AppendUint(b, ni.FileSize, 10)
		b = append(b, '\n')
	}
	if ni.NarHash != nil {
		b = appendField(b, "NarHash: ", ni.NarHash.String())
	}
	b = append(b, "NarSize: "...)
	b = strconv.AppendUint(b, ni.NarSize, 10)
	b = append(b, "\nReferences:"...)
	if len(ni.References) == 0 {
		b = append(b, ' ')
	}
	for _, r := range ni.References {
		b = append(b, ' ')
		b = append(b, r...)
	}
	b = append(b, '\n')
	if ni.Deriver != "" {
		b = appendField(b, "Deriver: ", ni.Deriver)
	}
	if ni.System != "" {
		b = appendField(b, "System: ", ni.System)
	}
	for _, s := range ni.Signatures {
		b = appendField(b, "Sig: ", s.String())
	}
	if ni.CA != "" {
		b = appendField(b, "CA: ", ni.CA)
	}
	return b
}

func appendField(b []byte, key, value string) []byte {
	b = append(b, key...)
	b = append(b, value...)
	return append(b, '\n')
}
