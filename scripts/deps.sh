#!/usr/bin/env bash
# Installs what peerix and its tests need on a Debian machine, skipping what
# is already there: Nix (Debian's nix-bin), nginx and wrk (benchmarks),
# iproute2 and iptables (network-namespace tests), chromium (dashboard test),
# postgresql (tracker tests and scripts/bench-tracker.sh), zsh and fish (the
# completion scripts are run in them), jq (benchmarks).
# Usage: scripts/deps.sh [run|test|bench]
set -euo pipefail
want=${1:-test}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=()
command -v nix-store >/dev/null || pkgs+=(nix-bin)
if [ "$want" != run ]; then
  command -v ip >/dev/null || pkgs+=(iproute2)
  command -v iptables >/dev/null || pkgs+=(iptables)
  command -v nginx >/dev/null || pkgs+=(nginx-light)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v chromium >/dev/null || pkgs+=(chromium)
  command -v zsh >/dev/null || pkgs+=(zsh)
  command -v fish >/dev/null || pkgs+=(fish)
  # The tracker's tests start a private PostgreSQL server from these binaries.
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || pkgs+=(postgresql)
fi
if [ "$want" = bench ]; then
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v jq >/dev/null || pkgs+=(jq)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing: ${pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# A fresh nix-bin has no store database until something creates it. Without
# Debian's nix-setup-systemd there is no nixbld group, which Nix's default
# build-users-group names: --init needs no build users, so say so instead of
# printing a warning about the missing group. (The tests bring their own
# nix.conf: internal/nixtest.)
if [ "$(id -u)" = 0 ] && [ ! -e /nix/var/nix/db/db.sqlite ]; then
  NIX_REMOTE=local NIX_CONFIG='build-users-group =' nix-store --init
fi
