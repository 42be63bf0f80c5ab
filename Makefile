# tapproxy developer and CI targets. `make test` is the whole CI check
# (.ci/run installs the tools and then runs it). Targets document themselves:
# a "## " comment after the target name is its help text.

GO          ?= go
GOBIN_DIR   := $(shell $(GO) env GOPATH 2>/dev/null)/bin
STATICCHECK ?= $(or $(shell command -v staticcheck 2>/dev/null),$(GOBIN_DIR)/staticcheck)
# Per test binary. Keeps a hung test from holding CI for long; the whole
# `make test` normally takes a few minutes on 2 cores.
TEST_TIMEOUT  ?= 8m
# Fuzz time per target: FUZZTIME for `make fuzz`, SMOKE_FUZZTIME in `make test`.
FUZZTIME       ?= 1m
# Counted, not timed: with a duration -fuzztime, Go 1.26's fuzz coordinator
# can report a spurious "context deadline exceeded" at the deadline
# (go.dev/issue/75804, fixed in Go 1.27); an execution count has no deadline.
SMOKE_FUZZTIME ?= 5000x
# Bound on minimizing each new input (the default, 60 s, can dominate short runs).
FUZZ_MINIMIZE  ?= 5s
# Debian 12 packages the tests run (real servers and dnstap tools) or build
# with (make, gcc for -race). The single list: .ci/run installs it with
# `make deps`. internal/testenv names the package when a tool is missing.
DEBIAN_PACKAGES := unbound bind9 bind9-utils bind9-dnsutils knot-dnsutils dnsperf \
	fstrm-bin golang-github-dnstap-golang-dnstap-cli dnstap-ldns dnsdist python3 \
	iproute2 make gcc libc6-dev chromium shellcheck systemd dpkg python3-yaml

.DEFAULT_GOAL := help
.PHONY: help build demo deps test check fmt vet staticcheck unit fuzz fuzz-smoke bench clean packaging

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# CGO_ENABLED=0 -trimpath: a static binary, built as the packages build it
# (packaging/), so that what bench/ measures is what ships; symbols are kept
# (the packages strip them with -s -w) so that perf can name functions.
build: ## Build bin/tapproxy (static, as packaged)
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/tapproxy ./cmd/tapproxy

demo: ## Run tapproxy in front of a local test responder; show answers and the dnstap log (needs only Go)
	bash bench/demo.sh

deps: ## Install the Debian 12 packages the tests need (as root; .ci/run does this)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES)

# The race-enabled test run comes last so the output ends with go test's
# ok/FAIL lines.
test: check packaging bench fuzz-smoke unit ## The whole CI check: check, packaging, every benchmark once, a short fuzz per target (5000 executions), then go test -race

packaging: ## Build the .deb (install into a scratch root, systemd-analyze verify), the OpenWrt files and the cross-builds
	bash packaging/test.sh

check: fmt vet staticcheck ## gofmt, go vet and staticcheck only

fmt: ## Fail if any Go file is not gofmt-formatted
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; fi

vet: ## go vet ./... (and the small router build)
	$(GO) vet ./...
	$(GO) vet -tags tapproxy_small ./cmd/tapproxy

staticcheck: ## staticcheck ./... (go install honnef.co/go/tools/cmd/staticcheck@v0.8.2)
	@test -x "$(STATICCHECK)" || { echo "staticcheck not found; go install honnef.co/go/tools/cmd/staticcheck@v0.8.2"; exit 1; }
	$(STATICCHECK) ./...

unit: ## go test -race -shuffle=on -count=1 ./...
	$(GO) test -race -shuffle=on -count=1 -timeout $(TEST_TIMEOUT) ./...

bench: ## Run every benchmark once (-benchtime=1x), so benchmarks keep working
	$(GO) test -run '^$$' -bench . -benchtime=1x -timeout $(TEST_TIMEOUT) ./...

fuzz: ## Fuzz every Fuzz* target for FUZZTIME each (default 1m)
	@$(MAKE) --no-print-directory fuzz-run FUZZ_FOR=$(FUZZTIME)

fuzz-smoke: ## Fuzz every Fuzz* target for SMOKE_FUZZTIME each (default 5000 executions)
	@$(MAKE) --no-print-directory fuzz-run FUZZ_FOR=$(SMOKE_FUZZTIME)

# Targets are discovered with `go test -list`, so new ones are picked up;
# go test -fuzz takes one package and one target at a time.
.PHONY: fuzz-run
fuzz-run:
	@set -e; n=0; \
	for pkg in $$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
	  targets="$$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true)"; \
	  for f in $$targets; do \
	    echo "== fuzz $$pkg $$f ($(FUZZ_FOR))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZ_FOR) -fuzzminimizetime $(FUZZ_MINIMIZE) $$pkg; \
	    n=$$((n+1)); \
	  done; \
	done; \
	echo "fuzzed $$n target(s)"

# SOAK_TIME (default 10m) and the other knobs are documented in bench/soak.sh.
.PHONY: soak
soak: ## Soak: mixed UDP/TCP load, 1 % hostile, collector restarts, SIGHUPs for SOAK_TIME (default 10m)
	SOAK_TIME=$(or $(SOAK_TIME),10m) bash bench/soak.sh

# OVERLOAD_TIME (default 3m) and the other knobs are documented in bench/overload.sh.
.PHONY: overload
overload: ## Overload: 2x the measured capacity for OVERLOAD_TIME (default 3m), sampled, then recovery; appends to bench/RESULTS.md
	OVERLOAD_TIME=$(or $(OVERLOAD_TIME),3m) bash bench/overload.sh --out bench/RESULTS.md

clean: ## Remove build outputs and the test cache
	rm -rf bin/
	$(GO) clean -testcache
