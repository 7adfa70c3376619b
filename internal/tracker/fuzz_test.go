package tracker

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fuzzSigner is a fixed identity, so that seeds can name its peer_id.
func fuzzSigner(t testing.TB) signer {
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return signer{k, id}
}

// fuzzWrite feeds arbitrary bodies, validly signed, to a write route: the
// handler must never panic and never answer 5xx.
func fuzzWrite(f *testing.F, path string, seeds []string) {
	me := fuzzSigner(f)
	now := ms(t0)
	for _, s := range seeds {
		f.Add([]byte(fmt.Sprintf(s, me.id.String(), now)))
	}
	for _, s := range []string{``, `{}`, `null`, `[]`, `"x"`, `{"peer_id":null}`, `{"ts":1e400}`, `{"peer_id":"` + me.id.String() + `","ts":-1}`, "\x00\xff"} {
		f.Add([]byte(s))
	}
	s, _, clock := newTestServer(f, sqliteBackend, time.Minute)
	me.announce(f, s, now-10000)
	f.Fuzz(func(t *testing.T, body []byte) {
		clock.Advance(time.Millisecond)
		w := serve(s, me.request(t, "POST", path, body))
		if w.Code >= 500 {
			t.Fatalf("%d for %q: %s", w.Code, body, w.Body)
		}
	})
}

func FuzzAnnounceBody(f *testing.F) {
	fuzzWrite(f, "/v1/announce", []string{
		`{"peer_id":%q,"ts":%d,"addrs":["/ip4/198.51.100.7/udp/12306/quic-v1","/ip6/::1/tcp/1"]}`,
		`{"peer_id":%q,"ts":%d,"addrs":[]}`,
		`{"peer_id":%q,"ts":%d,"addrs":["/dns/x/tcp/1/p2p/12D3KooWRelay/p2p-circuit"]}`,
		`{"peer_id":%q,"ts":%d,"addrs":["/ip4/1.2.3.4/tcp/99999"]}`,
		`{"peer_id":%q,"ts":%d,"addrs":null,"PEER_ID":"x"}`,
	})
}

func FuzzPackagesBody(f *testing.F) {
	h1, h2 := hashN(1), hashN(2)
	fuzzWrite(f, "/v1/packages", []string{
		`{"peer_id":%q,"ts":%d,"full":true,"add":["` + h1 + `","` + h2 + `"]}`,
		`{"peer_id":%q,"ts":%d,"full":false,"add":["` + h2 + `"],"remove":["` + h1 + `"]}`,
		`{"peer_id":%q,"ts":%d,"full":false,"add":["` + h1 + `"],"remove":["` + h1 + `"]}`,
		`{"peer_id":%q,"ts":%d,"full":true}`,
		`{"peer_id":%q,"ts":%d,"add":["zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"]}`,
	})
}

// FuzzReadQueries feeds arbitrary query strings to the read routes (the
// paging of /v1/peers, the limit of /v1/find): never a panic, never 5xx.
func FuzzReadQueries(f *testing.F) {
	for _, s := range []string{"", "limit=5", "limit=0", "limit=-1", "limit=99999999999999999999", "after=12D3KooW", "after=&limit=1", "limit=1&limit=2", "after=%00%ff", "a=%zz"} {
		f.Add(s)
	}
	s, _, clock := newTestServer(f, sqliteBackend, time.Minute)
	for range 3 {
		p := newSigner(f)
		p.announce(f, s, ms(clock.Now()))
		p.packages(f, s, ms(clock.Now())+1, true, []string{hashN(1)}, nil)
	}
	f.Fuzz(func(t *testing.T, q string) {
		for _, path := range []string{"/v1/peers?", "/v1/find/" + hashN(1) + "?"} {
			r := httptest.NewRequest("GET", "/", nil)
			r.URL.Path, r.URL.RawQuery = strings.TrimSuffix(strings.SplitN(path, "?", 2)[0], "?"), q
			r.RemoteAddr = "198.51.100.7:1"
			w := serve(s, r)
			if w.Code >= 500 {
				t.Fatalf("GET %s%s: %d %s", path, q, w.Code, w.Body)
			}
		}
	})
}

// FuzzDecodeAddrs: the SQLite addrs column's fast path decodes what
// encoding/json decodes, for any text.
func FuzzDecodeAddrs(f *testing.F) {
	for _, s := range []string{`[]`, `["/ip4/1.2.3.4/tcp/1"]`, `["a","b"]`, `["a\",\"b"]`, `["a","b\"]`, `[""]`, `["",""]`, `["a""b"]`, `["a","b",]`, `null`, `["\u003c"]`, "[\"a\nb\"]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := decodeAddrs(s)
		var want []string
		if err := json.Unmarshal([]byte(s), &want); err != nil || want == nil {
			want = []string{}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("decodeAddrs(%q) = %q, encoding/json says %q", s, got, want)
		}
	})
}
