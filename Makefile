.PHONY: run test bench bench-net bench-lookups lint build

# A static binary (no cgo: SQLite is pure Go), stamped with its version and
# commit: `peerix --version` says which build runs.
VERSION ?= 0.1.0-dev
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  = -X github.com/peerix/peerix/internal/daemon.Version=$(VERSION) -X github.com/peerix/peerix/internal/daemon.Commit=$(COMMIT)

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/peerix ./cmd/peerix

run:
	scripts/run.sh

test:
	scripts/test.sh

bench:
	scripts/deps.sh bench
	go test -run '^$$' -bench . -benchmem ./internal/...
	scripts/bench-local.sh

# Between simulated hosts (network namespaces; root): LAN, and P2P across NAT.
bench-net:
	go test ./test/e2e -run '^$$' -bench 'BenchmarkLAN|BenchmarkP2P' -benchtime 3x -timeout 30m

# Nix realising a 202-path closure through peerix on a simulated LAN with an
# upstream cache (root, nginx; docs/benchmarks.md, "Lookups"). The e2e lock
# keeps it from sharing the machine with other network-namespace runs.
bench-lookups:
	CI=true NIX_REMOTE=local flock /tmp/peerix-e2e.lock go test ./test/e2e -run '^$$' -bench BenchmarkLookups -benchtime 1x -timeout 60m -v

# staticcheck pinned by module version: the module proxy refuses release
# names such as @2025.1.1. v0.8.2 is release 2026.2.2, made for Go 1.26.
# gofmt -l only lists files: any output fails the target.
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l cmd internal test); if [ -n "$$out" ]; then echo "gofmt -l:"; echo "$$out"; exit 1; fi
	go vet ./...
	go run $(STATICCHECK) ./...
