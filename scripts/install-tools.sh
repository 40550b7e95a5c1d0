#!/usr/bin/env bash
# install-tools.sh: install the pinned toolchain the integration tests and the
# demo run against, into $TOOLS_DIR (default: <repo>/.tools, git-ignored).
#
#   .tools/bin/containerd                  containerd v2.4.2
#   .tools/bin/ctr                         ctr v2.4.2
#   .tools/bin/runc                        runc v1.5.3
#   .tools/bin/ref/containerd-shim-runc-v2 the reference shim v2.4.2 (own dir so
#                                          it never shadows ours on PATH)
#
# plus the Debian packages the tests need (busybox-static for the test image).
#
# Idempotent: a binary is rebuilt only when it is missing or `go version -m`
# says it was built from another module version. Needs only the Go module
# proxy and Debian's apt.
#
# Environment:
#   TOOLS_DIR        where to install (default <repo>/.tools)
#   SKIP_APT=1       do not touch Debian packages
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib.sh"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"

CONTAINERD_MOD="github.com/containerd/containerd/v2"
CONTAINERD_VERSION="v2.4.2"
RUNC_MOD="github.com/opencontainers/runc"
RUNC_VERSION="v1.5.3"
# gcc: runc is cgo (its nsenter is C), and so is the shim built with -race.
DEBIAN_PACKAGES=(busybox-static gcc libc6-dev)

log() { printf '[install-tools] %s\n' "$*" >&2; }

# has_version BINARY MODULE VERSION: true when BINARY exists and was built
# from MODULE at VERSION (main module or dependency line of `go version -m`).
has_version() {
	local bin="$1" mod="$2" ver="$3"
	[[ -x "$bin" ]] || return 1
	go version -m "$bin" 2>/dev/null |
		awk -v m="$mod" -v v="$ver" '($1=="mod"||$1=="dep") && $2==m && $3==v {ok=1} END {exit !ok}'
}

# go_install GOBIN PKG...: install packages (all from one module version).
go_install() {
	local gobin="$1"
	shift
	mkdir -p "$gobin"
	log "go install $* -> $gobin"
	# Build outside any module so the repo's go.mod plays no part.
	(cd / && GOBIN="$gobin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install "$@")
}

install_go_tools() {
	command -v go >/dev/null || { log "go is not on PATH"; exit 1; }

	local missing=()
	for name in containerd ctr; do
		has_version "$BIN/$name" "$CONTAINERD_MOD" "$CONTAINERD_VERSION" ||
			missing+=("$CONTAINERD_MOD/cmd/$name@$CONTAINERD_VERSION")
	done
	if ((${#missing[@]})); then
		go_install "$BIN" "${missing[@]}"
	else
		log "containerd, ctr $CONTAINERD_VERSION: already installed"
	fi

	if has_version "$BIN/ref/containerd-shim-runc-v2" "$CONTAINERD_MOD" "$CONTAINERD_VERSION"; then
		log "reference shim $CONTAINERD_VERSION: already installed"
	else
		go_install "$BIN/ref" "$CONTAINERD_MOD/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
	fi

	if has_version "$BIN/runc" "$RUNC_MOD" "$RUNC_VERSION"; then
		log "runc $RUNC_VERSION: already installed"
	else
		go_install "$BIN" "$RUNC_MOD@$RUNC_VERSION"
	fi

	"$BIN/containerd" --version >&2
	"$BIN/runc" --version | sed -n 1p >&2 # sed reads all: no SIGPIPE under pipefail
}

install_debian_packages() {
	if [[ "${SKIP_APT:-}" == 1 ]]; then
		log "SKIP_APT=1: not checking Debian packages"
		return
	fi
	apt_install_missing "${DEBIAN_PACKAGES[@]}"
}

install_debian_packages
install_go_tools
log "tools ready in $BIN"
