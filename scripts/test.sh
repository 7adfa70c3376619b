#!/usr/bin/env bash
# Runs every test: unit, fuzz seeds, and end-to-end tests with the real Nix.
# Installs what the tests need first (Debian packages; Go modules come
# through the module proxy). The end-to-end tests need root (Nix's store,
# network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
export NIX_REMOTE=local
gofmt_out=$(gofmt -l cmd internal test)
if [ -n "$gofmt_out" ]; then
  echo "gofmt would change:"; echo "$gofmt_out"; exit 1
fi
go vet ./...
go test -count=1 -timeout 15m "$@" ./...
