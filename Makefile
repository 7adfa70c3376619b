.PHONY: run test bench lint build

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

lint:
	gofmt -l cmd internal test
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...
