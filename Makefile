# redpush — `make test` is the one command that runs every test on a fresh
# Debian machine: it installs redis-server when missing (the tests start their
# own on free ports), then vets and runs all tests with the race detector.

GO ?= go
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test deps vet build run fuzz bench clean

test: deps vet
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

# Debian's redis-server, installed only if missing; apt-get update first, as a
# fresh machine has no package lists.
deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version

# The binary, built as the Dockerfile will build it.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o redpush ./cmd/redpush

# The benchmark scenarios of BENCHMARKS.md, against a redis-server and a
# redpush that the suite starts itself (a few minutes; RUNS=1 for a quick look).
RUNS ?= 3
bench: deps build
	$(GO) build -o redpush-bench ./cmd/redpush-bench
	$(GO) test -run XXX -bench . -benchmem ./server ./redisq
	./redpush-bench suite -server ./redpush -runs $(RUNS) -out BENCHMARKS.md

# The quick start: an in-process Redis, nothing to install.
run:
	$(GO) run ./cmd/redpush -redis embedded

# Explore the pre-upgrade parsers beyond their seed corpus.
fuzz:
	$(GO) test -run XXX -fuzz FuzzReadHead -fuzztime 30s ./server
	$(GO) test -run XXX -fuzz FuzzUserFromURI -fuzztime 30s ./server

clean:
	rm -f redpush redpush-bench
