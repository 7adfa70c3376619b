.PHONY: run test bench bench-net lint build

build:
	go build -o bin/peerix ./cmd/peerix

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

lint:
	gofmt -l cmd internal test
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...
