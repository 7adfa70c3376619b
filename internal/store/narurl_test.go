package store

import (
	"errors"
	"strings"
	"testing"
)

const (
	urlHash    = "0123456789abcdfghijklmnpqrsvwxyz"
	urlNarHash = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
)

// The NAR URL forms of the local store and of peer sources parse back to
// what rendered them; anything else is a bad request. (These cases were
// p2p.ParseURL's before the form moved here.)
func TestParseNarURL(t *testing.T) {
	for _, r := range []NarRef{
		{Hash: urlHash, NarHash: urlNarHash},
		{Source: "p2p", Hash: urlHash, NarHash: urlNarHash},
		{Source: "lan", Hash: urlHash, NarHash: urlNarHash},
	} {
		got, err := ParseNarURL(r.URL())
		if err != nil || got != r {
			t.Errorf("ParseNarURL(%q) = %+v, %v; want %+v", r.URL(), got, err, r)
		}
	}
	if u := (NarRef{Source: "p2p", Hash: urlHash, NarHash: urlNarHash}).URL(); u != "nar/p2p/"+urlHash+"-"+urlNarHash+".nar" {
		t.Errorf("URL %q", u)
	}
	for _, u := range []string{
		"",
		"nar/",
		"nar/p2p/",
		"nar/p2p/x.nar",
		"nar/p2p/" + urlHash + "-" + urlNarHash, // no .nar
		"nar/p2p/" + urlHash + "-" + urlNarHash + ".nar.xz", // compressed
		"nar/p2p/" + urlHash + "_" + urlNarHash + ".nar",
		"nar/p2p/" + urlHash + "-" + urlNarHash[1:] + ".nar",  // short NarHash
		"nar/p2p/" + urlHash + "-e" + urlNarHash[1:] + ".nar", // 'e' is not Nix base-32
		"nar/p2p/" + "../" + urlHash[3:] + "-" + urlNarHash + ".nar",
		"nar/p2p/" + urlHash + "-" + urlNarHash + ".nar/..",
		"nar/P2P/" + urlHash + "-" + urlNarHash + ".nar",                             // source not lowercase
		"nar/p2p/x/" + urlHash + "-" + urlNarHash + ".nar",                           // two segments
		"nar//" + urlHash + "-" + urlNarHash + ".nar",                                // empty source
		"/nar/" + urlHash + "-" + urlNarHash + ".nar",                                // absolute
		"nar/" + strings.Repeat("a", 17) + "/" + urlHash + "-" + urlNarHash + ".nar", // source too long
		"nar/" + urlHash + "-z" + urlNarHash[1:] + ".nar",                            // over 256 bits
		// The local form (these cases were nixstore.ParseNarURL's):
		"",
		"nar/",
		"nar/.nar",
		"nar/" + urlHash + ".nar", // no NarHash
		"nar/" + urlHash[1:] + "-" + urlNarHash + ".nar",                         // 31-char urlHash
		"nar/" + urlHash + "0-" + urlNarHash + ".nar",                            // 33-char urlHash
		"nar/" + urlHash + "-" + urlNarHash[1:] + ".nar",                         // 51-char NarHash
		"nar/" + urlHash + "-" + urlNarHash + "0.nar",                            // 53-char NarHash
		"nar/" + urlHash + "-sha256:" + urlNarHash[7:] + ".nar",                  // algorithm prefix
		"nar/" + urlHash + "_" + urlNarHash + ".nar",                             // wrong separator
		"nar/" + urlHash[:31] + "e-" + urlNarHash + ".nar",                       // 'e' is not base-32
		"nar/" + urlHash[:31] + "o-" + urlNarHash + ".nar",                       // 'o'
		"nar/" + urlHash[:31] + "u-" + urlNarHash + ".nar",                       // 'u'
		"nar/" + urlHash[:31] + "t-" + urlNarHash + ".nar",                       // 't'
		"nar/" + strings.ToUpper(urlHash) + "-" + urlNarHash + ".nar",            // upper case
		"nar/" + urlHash + "-" + strings.ToUpper(urlNarHash) + ".nar",            // upper case
		"nar/" + urlHash + "-" + urlNarHash[:51] + "e.nar",                       // 'e' in NarHash
		"nar/" + urlHash + "-" + urlNarHash,                                      // no .nar
		"nar/" + urlHash + "-" + urlNarHash + ".nar.xz",                          // compressed
		"nar/" + urlHash + "-" + urlNarHash + ".narinfo",                         //
		"nar/" + urlHash + "-" + urlNarHash + ".nar/",                            // trailing slash
		"/nar/" + urlHash + "-" + urlNarHash + ".nar",                            // absolute
		"nar//" + urlHash + "-" + urlNarHash + ".nar",                            // empty segment
		"nar/../" + urlHash + "-" + urlNarHash + ".nar",                          // ..
		"nar/" + urlHash + "-" + urlNarHash[:50] + "..nar",                       // .. inside
		"nar/../../../../etc/passwd-" + urlNarHash[:43] + ".nar",                 // traversal, right length
		"nar/" + urlHash[:31] + "\x00-" + urlNarHash + ".nar",                    // NUL
		"nar/" + urlHash + "-" + urlNarHash[:51] + "\x00.nar",                    // NUL
		"nar/" + urlHash + "-" + urlNarHash + ".nar\x00",                         // NUL after
		"nar/" + urlHash[:31] + "/-" + urlNarHash + ".nar",                       // slash inside
		"nar/" + urlHash[:31] + "\\-" + urlNarHash + ".nar",                      // backslash
		"nar/" + urlHash[:30] + "%2f-" + urlNarHash[:51] + ".nar",                // percent-encoding
		"nar/ " + urlHash[1:] + "-" + urlNarHash + ".nar",                        // space
		"NAR/" + urlHash + "-" + urlNarHash + ".nar",                             // case of prefix
		"nar/" + urlHash + "-" + urlNarHash + ".NAR",                             // case of suffix
		"xnar/" + urlHash + "-" + urlNarHash + ".nar",                            //
		"local/nar/" + urlHash + "-" + urlNarHash + ".nar",                       //
		"nar/" + urlHash + "-" + urlNarHash + ".nar?x=1",                         // query
		"nar/" + urlHash + "-" + urlNarHash[:50] + "\u00e9" + ".nar",             // non-ASCII, same byte length
		"nar/" + urlHash + "-" + urlNarHash + ".nar" + strings.Repeat("x", 4096), // long
	} {
		if r, err := ParseNarURL(u); !errors.Is(err, ErrBadRequest) {
			t.Errorf("ParseNarURL(%q) = %+v, %v; want ErrBadRequest", u, r, err)
		}
	}
}

// FuzzParseNarURL: NAR URLs come from Nix (and through it from whoever
// wrote a narinfo). What ParseNarURL accepts renders back to the same URL
// and names a valid hash part and NarHash.
func FuzzParseNarURL(f *testing.F) {
	f.Add("nar/p2p/" + urlHash + "-" + urlNarHash + ".nar")
	f.Add("nar/" + urlHash + "-" + urlNarHash + ".nar")
	f.Add("nar/p2p/../../etc/passwd")
	f.Fuzz(func(t *testing.T, u string) {
		r, err := ParseNarURL(u)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v is not ErrBadRequest", err)
			}
			return
		}
		if r.URL() != u || !ValidHash(r.Hash) || len(r.NarHash) != NarHashLen || !ValidBase32(r.NarHash) ||
			r.Source != "" && !validSource(r.Source) {
			t.Fatalf("accepted %q as %+v", u, r)
		}
	})
}
