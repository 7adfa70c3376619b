package tracker

import (
	"reflect"
	"testing"
)

// TestParseStandings: the one text value both registries read peers'
// standings as (a line "key,since,last_seen,peer_id,net" each).
func TestParseStandings(t *testing.T) {
	t.Parallel()
	st := func(key, since, lastSeen int64, id, net string) Standing {
		return Standing{Holder: Holder{Key: key, Net: net, Since: since}, PeerID: id, LastSeen: lastSeen}
	}
	tests := []struct {
		name    string
		in      string
		want    []Standing
		wantErr bool
	}{
		{"none", "", []Standing{}, false},
		{"one", "7,1700000000000,1700000005000,12D3KooWA,198.51.100.0/24",
			[]Standing{st(7, 1700000000000, 1700000005000, "12D3KooWA", "198.51.100.0/24")}, false},
		{"several, any order", "9,4,8,B,unknown\n1,5,6,A,2001:db8:1::/48",
			[]Standing{st(9, 4, 8, "B", "unknown"), st(1, 5, 6, "A", "2001:db8:1::/48")}, false},
		{"empty net (loopback)", "3,0,1,C,", []Standing{st(3, 0, 1, "C", "")}, false},
		{"negative times", "1,-1,-2,A,a", []Standing{st(1, -1, -2, "A", "a")}, false},
		{"missing net", "1,5,6,A", nil, true},
		{"missing peer id", "1,5,6", nil, true},
		{"bad key", "x,5,6,A,a", nil, true},
		{"bad since", "1,x,6,A,a", nil, true},
		{"bad last seen", "1,5,x,A,a", nil, true},
		{"empty line", "1,5,6,A,a\n\n2,3,4,B,b", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseStandings(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStandings(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseStandings(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestParseKeys: the one text value SQLite reads a hash's holder keys as,
// back in key order.
func TestParseKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []int64
		wantErr bool
	}{
		{"none", "", []int64{}, false},
		{"one", "7", []int64{7}, false},
		{"in order", "1,2,9", []int64{1, 2, 9}, false},
		{"out of order", "9,1,2", []int64{1, 2, 9}, false},
		{"bad key", "1,x", nil, true},
		{"empty key", "1,,2", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseKeys(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseKeys(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseKeys(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
