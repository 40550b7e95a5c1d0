#!/usr/bin/env bash
# build-tools.sh: static builds of what runs inside the cgroup v2 test VM,
# which has no libc: containerd, ctr and runc at the versions install-tools.sh
# pins, plus the integration test binary.
#
#   $VM_DIR/bin/containerd, ctr   CGO_ENABLED=0 (containerd needs no cgo)
#   $VM_DIR/bin/runc              cgo (runc's nsenter is C), linked -static
#   $VM_DIR/bin/ref/containerd-shim-runc-v2  containerd's own shim, the same
#                                 version, CGO_ENABLED=0 (the cross-shim
#                                 checkpoint test)
#   $VM_DIR/integration.test      go test -c of integration/, CGO_ENABLED=0
#   $VM_DIR/bench                 go build of bench/, CGO_ENABLED=0 (only for
#                                 VM_SUITE=bench)
#
# Idempotent: a tool is rebuilt only when it is missing, dynamically linked,
# or `go version -m` names another module version. The test binary is always
# relinked (Go's build cache makes that a second or two).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VM_DIR="${VM_DIR:-$ROOT/.tools/vm}"
BIN="$VM_DIR/bin"

# Same pins as scripts/install-tools.sh.
CONTAINERD_MOD="github.com/containerd/containerd/v2"
CONTAINERD_VERSION="v2.4.2"
RUNC_MOD="github.com/opencontainers/runc"
RUNC_VERSION="v1.5.3"

log() { printf '[vm/build-tools] %s\n' "$*" >&2; }

# is_static_version BINARY MODULE VERSION: BINARY exists, has no ELF
# interpreter (ldd refuses it) and was built from MODULE at VERSION.
is_static_version() {
	local bin="$1" mod="$2" ver="$3"
	[[ -x "$bin" ]] || return 1
	if ldd "$bin" >/dev/null 2>&1; then
		return 1
	fi
	go version -m "$bin" 2>/dev/null |
		awk -v m="$mod" -v v="$ver" '($1=="mod"||$1=="dep") && $2==m && $3==v {ok=1} END {exit !ok}'
}

# go_install ENV... -- ARGS...: go install outside any module, into $BIN.
go_install() {
	local env=()
	while [[ "$1" != -- ]]; do
		env+=("$1")
		shift
	done
	shift
	mkdir -p "$BIN"
	log "go install $*"
	(cd / && env "${env[@]}" GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install -trimpath "$@")
}

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }

missing=()
for name in containerd ctr; do
	is_static_version "$BIN/$name" "$CONTAINERD_MOD" "$CONTAINERD_VERSION" ||
		missing+=("$CONTAINERD_MOD/cmd/$name@$CONTAINERD_VERSION")
done
if ((${#missing[@]})); then
	go_install CGO_ENABLED=0 -- -ldflags '-s -w' "${missing[@]}"
else
	log "static containerd, ctr $CONTAINERD_VERSION: up to date"
fi

if is_static_version "$BIN/runc" "$RUNC_MOD" "$RUNC_VERSION"; then
	log "static runc $RUNC_VERSION: up to date"
else
	# Same build tags as the host's runc (none: no seccomp), only linked
	# statically; netgo/osusergo keep glibc's NSS out of the static link.
	go_install CGO_ENABLED=1 -- -tags netgo,osusergo -ldflags '-s -w -extldflags -static' "$RUNC_MOD@$RUNC_VERSION"
fi

REF="$BIN/ref/containerd-shim-runc-v2"
if is_static_version "$REF" "$CONTAINERD_MOD" "$CONTAINERD_VERSION"; then
	log "static reference shim $CONTAINERD_VERSION: up to date"
else
	mkdir -p "$BIN/ref"
	log "go install $CONTAINERD_MOD/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION (reference shim)"
	(cd / && CGO_ENABLED=0 GOBIN="$BIN/ref" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install -trimpath -ldflags '-s -w' \
		"$CONTAINERD_MOD/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")
fi

for name in containerd ctr runc ref/containerd-shim-runc-v2; do
	if ldd "$BIN/$name" >/dev/null 2>&1; then
		log "$BIN/$name is dynamically linked; the VM has no libc"
		exit 1
	fi
done

log "go test -c ./integration -> $VM_DIR/integration.test"
(cd "$ROOT/integration" && CGO_ENABLED=0 go test -c -trimpath -ldflags '-s -w' -o "$VM_DIR/integration.test" .)
if ldd "$VM_DIR/integration.test" >/dev/null 2>&1; then
	log "$VM_DIR/integration.test is dynamically linked; the VM has no libc"
	exit 1
fi
if [[ "${VM_SUITE:-integration}" == bench ]]; then
	log "go build ./bench -> $VM_DIR/bench"
	(cd "$ROOT/bench" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$VM_DIR/bench" .)
fi
