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
package e2e
