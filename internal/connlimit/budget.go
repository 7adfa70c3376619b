// Package connlimit keeps what peers may hold of a daemon bounded, so that
// serving this machine's own Nix (over loopback) always wins: a budget of
// file descriptors for peers, taken from RLIMIT_NOFILE, and a net.Listener
// that enforces it on the HTTP side with a per-client connection cap, sheds
// idle and stalled peer connections first, and cuts any response that makes
// no progress for a while.
//
//	budget := connlimit.FromRlimit()
//	ln := connlimit.NewListener(tcpListener, connlimit.Options{Budget: budget, Log: log})
//	srv := &http.Server{Handler: h, ConnState: ln.ConnState}
//	srv.Serve(ln)
//	p2p.New(p2p.Config{FDs: budget.P2PFDs, MaxTransfers: budget.PeerTransfers, ...})
package connlimit

// Budget is how much of the process's file descriptors peers may hold.
// What is left (at least a quarter of the limit) is for this machine's Nix
// over loopback, the Nix database, spool files, and UDP sockets.
type Budget struct {
	// Limit is the process's RLIMIT_NOFILE (soft; Go raises it to the hard
	// limit at start).
	Limit int
	// PeerConns: HTTP connections from other machines at once. Each may
	// hold a second descriptor (the file of the NAR it is sent).
	PeerConns int
	// PerClient: of those, from one client (an IPv4 address, an IPv6 /64).
	PerClient int
	// PeerTransfers: NARs sent to peers over P2P at once (each holds a
	// file open).
	PeerTransfers int
	// P2PFDs: descriptors libp2p's resource manager may use for its
	// connections.
	P2PFDs int
}

// ForLimit is the budget under a descriptor limit of n: an eighth of it
// for peers' HTTP connections (twice that with their files), a sixteenth
// for P2P transfers, a quarter for libp2p's connections.
func ForLimit(n int) Budget {
	b := Budget{
		Limit:         n,
		PeerConns:     clamp(n/8, 8, 8192),
		PeerTransfers: clamp(n/16, 4, 1024),
		P2PFDs:        clamp(n/4, 16, 1<<20),
	}
	b.PerClient = clamp(b.PeerConns/4, 2, 32)
	return b
}

func clamp(v, lo, hi int) int {
	return max(lo, min(v, hi))
}

// FromRlimit is ForLimit of the process's RLIMIT_NOFILE (1024 if it cannot
// be read, or is unlimited beyond reason).
func FromRlimit() Budget {
	n := nofile()
	if n <= 0 || n > 1<<24 {
		n = 1024
	}
	return ForLimit(n)
}
