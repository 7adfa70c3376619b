package trackerapi

import (
	"encoding/base64"
	"errors"
	"strings"
)

// SignatureVersion is the signature scheme this package writes and the
// tracker accepts: "v2" binds the method, the route and the tracker into
// what is signed. Version 1 (a bare base64 signature over the body alone)
// let a body signed for one route be replayed on another (a DELETE's body
// is a valid announce) or at another tracker; it is refused with
// CodeOldSignature.
const SignatureVersion = "v2"

// signedPrefix starts every v2 signed message, so that a v2 signature can
// never be mistaken for a signature over anything else.
const signedPrefix = "peerix-tracker-write/2\n"

// SignedMessage is what the signature of a write covers (scheme v2):
//
//	"peerix-tracker-write/2\n" METHOD "\n" ROUTE "\n" TRACKER_ID "\n" BODY
//
// METHOD is the HTTP method ("POST", "DELETE"); ROUTE the request's path
// below the tracker's API root ("/v1/announce", "/v1/packages",
// "/v1/peers/<id>"), as the tracker's router sees it, so a reverse proxy
// may serve the API under a path prefix; TRACKER_ID the tracker's ID from
// GET /v1/info (its database's: trackers sharing one database share it);
// BODY the exact body bytes sent.
func SignedMessage(method, route, trackerID string, body []byte) []byte {
	b := make([]byte, 0, len(signedPrefix)+len(method)+len(route)+len(trackerID)+3+len(body))
	b = append(b, signedPrefix...)
	b = append(b, method...)
	b = append(b, '\n')
	b = append(b, route...)
	b = append(b, '\n')
	b = append(b, trackerID...)
	b = append(b, '\n')
	return append(b, body...)
}

// SignatureValue is the SignatureHeader value carrying sig: "v2 <base64>".
func SignatureValue(sig []byte) string {
	return SignatureVersion + " " + base64.StdEncoding.EncodeToString(sig)
}

// ErrOldSignature: a SignatureHeader value without a version, the body-only
// signatures of scheme v1.
var ErrOldSignature = errors.New("a v1 signature (over the body alone) is no longer accepted: sign v2 (method, route, tracker ID and body; docs/protocol.md)")

// ParseSignature returns the signature bytes of a SignatureHeader value:
// "v2 " and standard padded base64. A value that is plain base64 (scheme
// v1) is ErrOldSignature; anything else is another error.
func ParseSignature(v string) ([]byte, error) {
	version, b64, ok := strings.Cut(v, " ")
	if !ok {
		if sig, err := base64.StdEncoding.DecodeString(v); err == nil && len(sig) > 0 {
			return nil, ErrOldSignature
		}
		return nil, errors.New("malformed " + SignatureHeader + ": want \"v2 <standard base64>\"")
	}
	if version != SignatureVersion {
		return nil, errors.New("unknown signature version " + strings.ToValidUTF8(version[:min(len(version), 16)], "?") + ": this tracker accepts " + SignatureVersion)
	}
	// The decoder skips CR and LF; a signature is one exact form.
	sig, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(sig) == 0 || strings.ContainsAny(b64, "\r\n") {
		return nil, errors.New("malformed " + SignatureHeader + ": want \"v2 <standard base64>\"")
	}
	return sig, nil
}
