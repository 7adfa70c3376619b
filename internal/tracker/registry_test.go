package tracker

import (
	"reflect"
	"testing"
)

// TestParseHolders: the one text value both registries read a hash's
// holders as (a line "key,since,net" each) back into Holders in key order.
func TestParseHolders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []Holder
		wantErr bool
	}{
		{"none", "", []Holder{}, false},
		{"one", "7,1700000000000,198.51.100.0/24", []Holder{{7, "198.51.100.0/24", 1700000000000}}, false},
		{"in order", "1,5,10.0.0.0/24\n2,3,2001:db8:1::/48\n9,4,unknown",
			[]Holder{{1, "10.0.0.0/24", 5}, {2, "2001:db8:1::/48", 3}, {9, "unknown", 4}}, false},
		{"empty net (loopback)", "3,0,\n4,1,", []Holder{{3, "", 0}, {4, "", 1}}, false},
		{"out of order", "9,4,c\n1,5,a\n2,3,b", []Holder{{1, "a", 5}, {2, "b", 3}, {9, "c", 4}}, false},
		{"negative since", "1,-1,a", []Holder{{1, "a", -1}}, false},
		{"missing net", "1,5", nil, true},
		{"missing since", "1", nil, true},
		{"bad key", "x,5,a", nil, true},
		{"bad since", "1,x,a", nil, true},
		{"empty line", "1,5,a\n\n2,3,b", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseHolders(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseHolders(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseHolders(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}
