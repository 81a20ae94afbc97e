# redpush — `make test` is the one command that runs every test on a fresh
# Debian machine: it installs what is missing (redis-server: the tests start
# their own on free ports; docker-compose, Compose v1 from Debian, to validate
# docker-compose.yml (Compose v2's `docker compose` reads the same file);
# chromium: the browser tests), vets, validates the compose file, builds the
# binary as the Dockerfile does, and runs all tests with the race detector.

GO ?= go
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test deps vet compose-check build run fuzz bench bench-scale bench-compare chaos clean

# The server's tests run twice: with the epoll reactor (Linux's default)
# and with a goroutine per connection (the portable build, forced by the
# redpush_goroutines tag).
test: deps vet compose-check build
	$(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -tags redpush_goroutines ./server

vet:
	$(GO) vet ./...
	$(GO) vet -tags redpush_goroutines ./server

# Debian's packages, installed only if missing; apt-get update first, as a
# fresh machine has no package lists.
PKGS := redis-server:redis-server docker-compose:docker-compose chromium:chromium
deps:
	@missing=""; for p in $(PKGS); do command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@redis-server --version

# The compose file must stay valid (no engine needed for this check).
compose-check:
	docker-compose config -q

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

# The section "Scale: 100,000 users" of BENCHMARKS.md: six redpush processes
# sharing one port (-reuseport), six bench processes connecting from sixteen
# loopback addresses at 5,000/s, 60 s idle, then 2,000 msg/s for 60 s (about
# 5 minutes and 5 GiB of memory per run; SCALE_RUNS=3 for medians).
SCALE_RUNS ?= 1
bench-scale: deps build
	$(GO) build -o redpush-bench ./cmd/redpush-bench
	./redpush-bench suite -scale -server ./redpush -runs $(SCALE_RUNS) -out BENCHMARKS.md

# The section "Against the PHP original" of BENCHMARKS.md: the side-by-side
# scenarios, the original as A and this redpush as B. PHP_ORIGINAL is the
# command that starts the original's swoole.php (see the README); it listens
# on 0.0.0.0:9502 and expects Redis at 127.0.0.1:6379. PHP_ORIGINAL_NOTE, if
# given, is printed under the section's heading (the PHP and Swoole versions).
bench-compare: deps build
	@[ -n "$(PHP_ORIGINAL)" ] || { echo "set PHP_ORIGINAL to the command that starts swoole.php"; exit 2; }
	$(GO) build -o redpush-bench ./cmd/redpush-bench
	./redpush-bench suite -server ./redpush -runs $(RUNS) -out BENCHMARKS.md \
		-against "$(PHP_ORIGINAL)" -against-addr 0.0.0.0:9502 -against-redis 127.0.0.1:6379 -against-note "$(PHP_ORIGINAL_NOTE)"

# The chaos soak: 3,000 users on 3 redpush instances and one Redis, 2,000 msg/s,
# Redis restarts, instance kills and stops, dropped connections, slow and
# stopped readers, for CHAOS_FOR (10 minutes by default); make test runs a
# 60-second version. Writes chaos.json and chaos.html.
CHAOS_FOR ?= 10m
chaos: deps build
	$(GO) build -o redpush-bench ./cmd/redpush-bench
	./redpush-bench chaos -server ./redpush -duration $(CHAOS_FOR) -json chaos.json -report chaos.html

# The quick start: an in-process Redis, nothing to install.
run:
	$(GO) run ./cmd/redpush -redis embedded

# Explore the parsers of untrusted input beyond their seed corpora
# (server/testdata/fuzz, run by make test), FUZZTIME each; not part of CI.
FUZZTIME ?= 60s
FUZZ_TARGETS := FuzzUserFromURI FuzzReadHead FuzzHandshake FuzzFrameReader
fuzz:
	@for f in $(FUZZ_TARGETS); do \
		$(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./server || exit 1; \
	done

clean:
	rm -f redpush redpush-bench
