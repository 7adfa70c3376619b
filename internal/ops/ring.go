package ops

// ring keeps the last len(buf) values pushed, overwriting the oldest: the
// dashboard's recent activity and finished transfers. Pushing costs one
// copy, however full it is. The caller serialises access.
type ring[T any] struct {
	buf  []T
	next int // where the next value goes
	n    int // values held, at most len(buf)
}

func newRing[T any](size int) ring[T] { return ring[T]{buf: make([]T, size)} }

func (r *ring[T]) push(v T) {
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
}

// newestFirst returns up to max values, the newest first.
func (r *ring[T]) newestFirst(max int) []T {
	max = min(max, r.n)
	out := make([]T, 0, max)
	for i := 1; i <= max; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out
}
