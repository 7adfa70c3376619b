// Package e2e holds peerix's end-to-end tests: they build the real peerix
// binary, build fixture store paths with the real Nix, serve them with
// `peerix serve` and let Nix substitute from it as users do.
//
// Nix tools are required. Without them on PATH the tests skip, unless
// CI=true, where they fail: CI must really run them. Fixtures and Nix's
// configuration come from internal/nixtest: every Nix process runs with the
// tests' own nix.conf, so neither /etc/nix/nix.conf nor a nixbld group is
// needed.
//
// The LAN, NAT and trust tests also need root, iproute2 and nsenter
// (util-linux; the NAT tests iptables too): each builds its own simulated
// network from network namespaces named pxe2e-* (hosts with private
// addresses joined by a bridge, no route anywhere else), runs a peerix per
// host with `nsenter --net`, and removes them at the end; namespaces left
// by an aborted run are removed by the next one. Without root or those
// tools they skip, again unless CI=true.
//
//	go test ./test/e2e/ -count=1 -v
//
// Benchmarks on the same simulated networks (bench_test.go) run only when
// asked:
//
//	go test ./test/e2e/ -run '^$' -bench 'BenchmarkLAN|BenchmarkP2P' -benchtime 3x
//
// PEERIX_E2E_BINARY=/path/to/peerix tests a prebuilt binary instead of
// building ./cmd/peerix.
//
// TestOriginalPeerixInterop (original_test.go) runs the real original
// peerix (Python, github.com/cid-chan/peerix) on a simulated LAN beside
// peerix daemons, in both directions. It runs only when PEERIX_ORIGINAL
// names a checkout of the original (the directory holding its peerix/
// package) and skips otherwise, also under CI=true (CI has no original):
//
//	apt-get install -y python3-aiohttp python3-psutil python3-starlette python3-hypercorn python3-uvloop
//	PEERIX_ORIGINAL=/path/to/original-peerix go test ./test/e2e/ -count=1 -run TestOriginalPeerixInterop -v
//
// Besides what the LAN tests need, it needs unshare and mount (util-linux:
// the original gets a mount namespace with its chroot store over /nix), a
// Python 3 with those modules (python3 on PATH or /usr/bin/python3, or
// PEERIX_ORIGINAL_PYTHON), and `nix-serve` on PATH, which the original
// starts for its own store: the Perl one, or where it cannot run (no Nix
// Perl bindings) a stand-in that takes `--listen <unix socket>` and answers
// /nix-cache-info and /<hash>.narinfo from /nix/var/nix/db/db.sqlite,
// signing with NIX_SECRET_KEY_FILE. With PEERIX_ORIGINAL set, anything
// missing skips the test with the reason, or under CI=true fails it.
package e2e
