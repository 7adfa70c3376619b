package ops

import (
	"slices"
	"testing"
)

func TestRing(t *testing.T) {
	tests := []struct {
		pushes, max int
		want        []int
	}{
		{pushes: 0, max: 5, want: []int{}},
		{pushes: 2, max: 5, want: []int{2, 1}},
		{pushes: 3, max: 3, want: []int{3, 2, 1}},
		{pushes: 7, max: 5, want: []int{7, 6, 5}}, // the ring holds 3
		{pushes: 7, max: 2, want: []int{7, 6}},
	}
	for _, tt := range tests {
		r := newRing[int](3)
		for i := 1; i <= tt.pushes; i++ {
			r.push(i)
		}
		if got := r.newestFirst(tt.max); !slices.Equal(got, tt.want) || got == nil {
			t.Errorf("%d pushes, newestFirst(%d) = %v, want %v", tt.pushes, tt.max, got, tt.want)
		}
	}
}
