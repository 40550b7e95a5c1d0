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
GO_SOURCES := $(shell find . -name '*.go' -not -path './integration/*' -not -path './.tools/*') go.mod go.sum

export SHIM_BINARY := $(SHIM)
export TOOLS_BIN
export TEST_IMAGE_TAR := $(IMAGE_TAR)

.PHONY: all build install tools image test unit integration demo clean

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

# Everything CI runs: unit tests, then the integration suite against a
# private containerd on this machine.
test: unit integration

unit:
	go vet -tags $(GO_TAGS) ./...
	go test -tags $(GO_TAGS) -race -count=1 ./...

integration: build image
	cd integration && REQUIRE_INTEGRATION=1 go test -count=1 -timeout 40m -v ./... 2>&1 | tee $(ROOT)/.tools/integration.log; exit $${PIPESTATUS[0]}

demo: build
	./scripts/demo.sh

clean:
	rm -rf $(BIN)
