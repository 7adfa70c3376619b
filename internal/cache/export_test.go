package cache

// ParseRange exposes parseRange to the black-box tests: a single range
// start..end (end -1: to the end of the NAR) or the last suffix bytes.
func ParseRange(h string) (start, end, suffix int64, err error) {
	r, err := parseRange(h)
	return r.start, r.end, r.suffix, err
}

// ErrUnsatisfiable is what ParseRange returns for a well-formed range that
// no byte can satisfy.
var ErrUnsatisfiable = errUnsatisfiable
