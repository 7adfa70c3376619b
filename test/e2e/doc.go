// Package e2e holds peerix's end-to-end tests: they build the real peerix
// binary, build fixture store paths with the real Nix, serve them with
// `peerix serve` and let Nix substitute from it as users do.
//
// Nix tools are required. Without nix-build on PATH the tests skip, unless
// CI=true, where they fail: CI must really run them.
//
//	go test ./test/e2e/ -count=1 -v
//
// PEERIX_E2E_BINARY=/path/to/peerix tests a prebuilt binary instead of
// building ./cmd/peerix.
package e2e
