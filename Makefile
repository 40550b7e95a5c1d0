# containerd-shim-runc-v2 — see README.md.
SHELL      := /bin/bash
ROOT       := $(abspath .)
BIN        := $(ROOT)/bin
SHIM       := $(BIN)/containerd-shim-runc-v2
TOOLS_BIN  := $(ROOT)/.tools/bin
IMAGE_TAR  := $(ROOT)/.tools/images/busybox.tar
PREFIX     ?= /usr/local
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS    := -s -w -X oomshim/shim.Version=$(VERSION) -X oomshim/shim.Revision=$(REVISION)
# no_grpc drops the gRPC stubs of containerd's API packages: the shim speaks
# ttrpc only, and gRPC (with net/http, x509, templates) is a third of a binary.
GO_TAGS    := no_grpc
GO_SOURCES := $(shell find . -name '*.go' -not -path './integration/*' -not -path './bench/*' -not -path './testkit/*' -not -path './.tools/*') go.mod go.sum

# The shim the suites test: ours unless given (SHIM_BINARY=<containerd's
# shim> in the environment or on the command line runs them against it).
SHIM_BINARY ?= $(SHIM)
export SHIM_BINARY
export TOOLS_BIN
export TEST_IMAGE_TAR := $(IMAGE_TAR)

.PHONY: all build install tools image test unit integration integration-race critest test-cgroup2 critest-cgroup2 test-systemd fuzz stress bench bench-cgroup2 soak compat demo clean

all: build

build: $(SHIM)

$(SHIM): $(GO_SOURCES)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -tags $(GO_TAGS) -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/containerd-shim-runc-v2

# Install the shim where containerd finds io.containerd.runc.v2 on its PATH.
install: build
	install -D -m 0755 $(SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-runc-v2

tools:
	./scripts/install-tools.sh

image: tools
	./scripts/build-image.sh

# Everything CI runs: unit tests, the integration suite against a private
# containerd on this machine (cgroup v1 memory), the smoke set under five
# containerd versions (compat), critest here, then the integration suite and
# critest in a VM on a cgroup v2 kernel, and the integration suite again in a
# VM booting systemd (systemd cgroup driver).
test: unit integration integration-race compat critest test-cgroup2 critest-cgroup2 test-systemd

# unit: the modules of go.work are tidy and agree on shared versions
# (scripts/check-modules.sh), then vet and the unit tests of each; the
# fuzz targets' seed corpora run as tests here (make fuzz fuzzes).
unit:
	./scripts/check-modules.sh
	go vet -tags $(GO_TAGS) ./...
	REQUIRE_INTEGRATION=1 go test -tags $(GO_TAGS) -race -count=1 ./...
	cd testkit && go vet ./... && go test -count=1 ./...
	cd bench && go vet ./... && go test -count=1 ./...

integration: build image
	cd integration && REQUIRE_INTEGRATION=1 go test -count=1 -timeout 40m -v ./... 2>&1 | tee $(ROOT)/.tools/integration.log; exit $${PIPESTATUS[0]}

# The concurrency tests again with the shim built with -race: a data race
# the shim reports lands in containerd's log, and the suite fails on it.
RACE_SHIM  := $(BIN)/containerd-shim-runc-v2.race
RACE_TESTS := ^(TestConcurrentCalls|TestConcurrentExecStarts|TestConcurrentStartActions|TestExec|TestInitDiesWhileExecStarts|TestSharedPIDNamespace|TestStdinReattachCloseIO|TestPauseResume|TestTerminal|TestOOM|TestKill|TestStateTransitions|TestIdleServerExits)$$

integration-race: build image
	CGO_ENABLED=1 go build -race -tags $(GO_TAGS) -o $(RACE_SHIM) ./cmd/containerd-shim-runc-v2
	cd integration && SHIM_BINARY=$(RACE_SHIM) REQUIRE_INTEGRATION=1 go test -count=1 -timeout 20m -run '$(RACE_TESTS)' -v . 2>&1 | tee $(ROOT)/.tools/integration-race.log; exit $${PIPESTATUS[0]}

# cri-tools v1.37.0's critest against a private containerd with CRI, CNI and
# NRI, our shim as runc's, inside a network and an IPC namespace of its own,
# images from a loopback registry of locally built stand-ins
# (scripts/critest/). Last line: "critest: N passed, N failed, N skipped".
# Knobs: CRITEST_FOCUS, CRITEST_SKIP (ginkgo regexps), SHIM_BINARY.
critest: build tools
	./scripts/critest/install.sh
	./scripts/critest/run.sh

# cgroup v2 lane: the integration suite inside a qemu (TCG) VM that boots
# Debian's kernel with only the unified hierarchy (scripts/vm/README.md).
# Knobs: VM_CYCLES (stress cycles in the guest: CYCLES when given on the
# command line or in the environment, else 100), VM_TIMEOUT (hard limit in
# seconds, default 2100), TEST_RUN (-test.run filter), VERBOSE=1 (stream the
# guest console), VM_MEM, VM_SMP.
VM_CYCLES ?= $(if $(filter command line environment,$(origin CYCLES)),$(CYCLES),100)

test-cgroup2: build image
	VM_CYCLES=$(VM_CYCLES) ./scripts/vm/test-cgroup2.sh

# critest in the cgroup v2 VM (scripts/critest/ run inside the guest of
# scripts/vm/): containerd, CNI bridge and portmap, the loopback registry and
# critest under Debian's kernel with only the unified hierarchy. Knobs as for
# test-cgroup2; TEST_RUN is critest's -ginkgo.focus.
CRITEST_VM_TIMEOUT ?= 2700

critest-cgroup2: build image tools
	VM_SUITE=critest VM_TIMEOUT=$(CRITEST_VM_TIMEOUT) ./scripts/vm/test-cgroup2.sh

# The systemd lane: a VM booting a minimal Debian with systemd as PID 1 and
# D-Bus (mmdebstrap), cgroup v2, containerd with this shim under the systemd
# cgroup driver (scripts/vm/systemd/): a smoke set (a container in its
# scope, 10 OOM-killed containers with TaskOOM before TaskExit, no scope
# left), then the integration suite with TEST_CGROUP_DRIVER=systemd. Knobs
# as for test-cgroup2 (VM_CYCLES, VM_TIMEOUT, TEST_RUN); SUITE=smoke runs
# the smoke set only.
test-systemd: build image
	VM_CYCLES=$(VM_CYCLES) ./scripts/vm/systemd/lane.sh

# Every Go fuzz target (func FuzzXxx: the parsers of outside input) for
# FUZZTIME each; `make test` runs their seed corpora (f.Add and
# testdata/fuzz) as ordinary tests. A crash leaves its input in the
# package's testdata/fuzz, to be fixed and committed as a regression seed.
FUZZTIME ?= 60s
FUZZ_PKGS := ./oom ./task ./shim ./process

fuzz:
	@set -e; for pkg in $(FUZZ_PKGS); do \
		for target in $$(go test -tags $(GO_TAGS) -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			go test -tags $(GO_TAGS) -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# OOM stress on demand: OOM_STRESS_ROUNDS rounds of OOM_STRESS_CONTAINERS
# containers OOM-killed at once; each must exit 137 with exactly one TaskOOM
# published before its TaskExit. `make test` runs the same test at 8 x 10.
OOM_STRESS_CONTAINERS ?= 100
OOM_STRESS_ROUNDS     ?= 100
# go test's own limit; the test also bounds itself (per round:
# 2 min + 1 s per container).
STRESS_TIMEOUT        ?= 6h

stress: build image
	cd integration && REQUIRE_INTEGRATION=1 \
		OOM_STRESS_CONTAINERS=$(OOM_STRESS_CONTAINERS) OOM_STRESS_ROUNDS=$(OOM_STRESS_ROUNDS) \
		go test -count=1 -timeout $(STRESS_TIMEOUT) -run '^TestOOMStress$$' -v . 2>&1 | tee $(ROOT)/.tools/stress.log; exit $${PIPESTATUS[0]}

# Our shim against the reference (containerd v2.4.2's containerd-shim-runc-v2,
# installed into .tools/bin/ref by `make tools`) on one private containerd,
# alternating sample by sample. Prints one markdown table and writes it, with
# the command, date and machine, to bench/RESULTS.md. Needs root; about 20
# minutes (most of it the pods' exec probes: 250 per pod at 20 and at 110
# pods). Never part of `make test`; it prints figures and asserts none.
#   make bench BENCH_FLAGS=-quick        smoke test of the benchmark itself
#   make bench BENCH_FLAGS='-steps pods -pods 20' BENCH_OUT=/tmp/r.md   one step, for profiling
#   make bench BENCH_OUT=/tmp/r.md       leave bench/RESULTS.md alone
BENCH_BIN   := $(BIN)/bench
BENCH_OUT   ?= $(ROOT)/bench/RESULTS.md
BENCH_FLAGS ?=

bench: build image
	cd bench && CGO_ENABLED=0 go build -o $(BENCH_BIN) .
	cd bench && CGO_ENABLED=0 go build -tags $(GO_TAGS) -trimpath -ldflags '-s -w' -o $(BIN)/bench-floor ./floor
	$(BENCH_BIN) -shim $(SHIM) -ref $(TOOLS_BIN)/ref/containerd-shim-runc-v2 -floor $(BIN)/bench-floor \
		-tools $(TOOLS_BIN) -image $(IMAGE_TAR) -out $(BENCH_OUT) \
		-command 'make bench $(BENCH_FLAGS)' $(BENCH_FLAGS)

# make bench-cgroup2: the benchmark inside the cgroup v2 VM (scripts/vm/ with
# VM_SUITE=bench), ours against containerd's own shim (a static build of the
# same version), for the figures whose mechanism differs between cgroup
# versions: the OOM steps (on v2 both shims learn of a kill from
# memory.events). Under TCG every time is several times the host's; the
# ratios compare the two shims within one run. Writes
# bench/RESULTS-cgroup2.md. Never part of `make test`.
BENCH_CGROUP2_FLAGS   ?= -steps oom,storm
BENCH_CGROUP2_OUT     ?= $(ROOT)/bench/RESULTS-cgroup2.md
BENCH_CGROUP2_TIMEOUT ?= 2400

bench-cgroup2: build image
	VM_SUITE=bench BENCH_FLAGS='$(BENCH_CGROUP2_FLAGS)' VM_TIMEOUT=$(BENCH_CGROUP2_TIMEOUT) \
		./scripts/vm/test-cgroup2.sh
	cp $(ROOT)/.tools/vm/run/share/RESULTS.md $(BENCH_CGROUP2_OUT)

# make soak: 10 pods per shim binary (ours, then the reference), each a
# sandbox and a workload container in one shim, x 2,000 exec probes and 100
# workload restarts; prints one `soak:` line per binary (RSS, goroutine, fd
# and inotify watch growth) and writes its section of bench/RESULTS.md.
# About half an hour; never part of `make test`.
#   make soak SOAK_FLAGS=-quick                 a smoke test of the soak
#   make soak SOAK_FLAGS='-soak-ref=false'      our shim only
SOAK_FLAGS ?=

soak: build image
	cd bench && CGO_ENABLED=0 go build -o $(BENCH_BIN) .
	$(BENCH_BIN) -soak -shim $(SHIM) -ref $(TOOLS_BIN)/ref/containerd-shim-runc-v2 \
		-tools $(TOOLS_BIN) -image $(IMAGE_TAR) -out $(BENCH_OUT) \
		-command 'make soak $(SOAK_FLAGS)' $(SOAK_FLAGS)

# make compat: the shim under containerd 1.6.20 (Debian 12's package,
# unpacked), 1.7.35, 2.2.9, 2.3.7 and 2.4.2, one smoke set each (ctr run,
# exec, tty, pause/resume, OOM-killed init and exec with TaskOOM before
# TaskExit, a CRI pod's container OOMKilled); prints a table and fails on
# any red cell. COMPAT_VERSIONS picks versions.
compat: build tools
	./scripts/compat/run.sh

demo: build
	./scripts/demo.sh

clean:
	rm -rf $(BIN)
