package swarm

// Observer watches a Finder's NAR transfers, so that the daemon can show
// them to the operator while they run. Its methods must not block.
type Observer interface {
	// NARTransfer is called when the transfer of the NAR of storePath
	// (size bytes) starts; the Progress follows it to its end.
	NARTransfer(storePath string, size int64) Progress
}

// Progress follows one NAR transfer, which may come from several holders
// at once.
type Progress interface {
	// Add: nar more NAR bytes moved, from holder (its Holder.ID; "" for an
	// upload: the peer it goes to), and wire more bytes on the link (fewer
	// than nar when compressed). Either may be 0: each is counted where
	// it is seen. Bytes fetched again (after a NAR failed its hash) count
	// again: they moved.
	Add(holder string, nar, wire int64)
	// Done ends the transfer: err is nil when the NAR was verified.
	Done(err error)
}

// noProgress is the Progress of a Finder without an Observer.
type noProgress struct{}

func (noProgress) Add(string, int64, int64) {}
func (noProgress) Done(error)               {}

// progressOf starts the observed progress of a transfer.
func (f *Finder) progressOf(storePath string, size int64) Progress {
	if f.opt.Observer == nil {
		return noProgress{}
	}
	if p := f.opt.Observer.NARTransfer(storePath, size); p != nil {
		return p
	}
	return noProgress{}
}
