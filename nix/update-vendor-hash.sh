#!/usr/bin/env bash
# Computes the vendorHash of nix/package.nix without `nix build`: runs `go mod vendor` on
# the same files the package builds from (go.mod, go.sum, cmd/, internal/;
# those git knows or would add) and hashes the result as Nix hashes a
# fixed-output directory. Needs go and nix; modules come from Go's module
# cache (the proxy is asked only for missing ones).
#
#   nix/update-vendor-hash.sh          print the hash
#   nix/update-vendor-hash.sh --write  also put it into nix/package.nix
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Tracked and untracked-but-not-ignored files: what a flake build sees
  # once they are committed.
  git ls-files -z --cached --others --exclude-standard -- go.mod go.sum cmd internal |
    while IFS= read -r -d '' f; do
      [ -e "$f" ] || continue # deleted in the work tree
      mkdir -p "$tmp/src/$(dirname "$f")"
      cp -p "$f" "$tmp/src/$f"
    done
else
  mkdir -p "$tmp/src"
  cp -rp go.mod go.sum cmd internal "$tmp/src/"
fi

(cd "$tmp/src" && GOFLAGS= GOTOOLCHAIN=local GOWORK=off go mod vendor)
hash=$(nix --extra-experimental-features nix-command hash path --type sha256 --sri "$tmp/src/vendor")
echo "$hash"
if [ "${1:-}" = --write ]; then
  sed -i -E "s|vendorHash = \"[^\"]*\";|vendorHash = \"$hash\";|" "$root/nix/package.nix"
  echo "written to nix/package.nix" >&2
fi
