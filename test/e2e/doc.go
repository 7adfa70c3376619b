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
// The LAN tests (TestLAN*) also need root and iproute2: each builds its own
// simulated LAN from network namespaces named pxe2e-* (hosts with private
// addresses joined by a bridge, no route anywhere else), runs a peerix per
// host with `ip netns exec`, and removes them at the end; namespaces left by
// an aborted run are removed by the next one. Without root or ip they skip,
// again unless CI=true.
//
//	go test ./test/e2e/ -count=1 -v
//
// PEERIX_E2E_BINARY=/path/to/peerix tests a prebuilt binary instead of
// building ./cmd/peerix.
package e2e
