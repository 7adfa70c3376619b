package nixstore

// CachedNARs is how many NARs the store holds in memory.
func (l *Local) CachedNARs() int {
	n, _ := l.nars.size()
	return n
}
