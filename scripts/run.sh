#!/usr/bin/env bash
# Builds peerix and runs `peerix serve`, installing Nix first if it is missing.
# Extra arguments go to `peerix serve`; without any, it serves this machine's
# store on 127.0.0.1:12304 in local mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh run
mkdir -p bin
# Static (no cgo), stamped with the commit as the Makefile does.
CGO_ENABLED=0 go build -trimpath \
  -ldflags "-X github.com/peerix/peerix/internal/daemon.Commit=$(git rev-parse HEAD 2>/dev/null)" \
  -o bin/peerix ./cmd/peerix
state=${PEERIX_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/peerix}
if [ $# -eq 0 ]; then
  set -- --mode local --listen 127.0.0.1:12304
fi
exec bin/peerix serve --state-dir "$state" "$@"
