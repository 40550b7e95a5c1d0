#!/usr/bin/env bash
# install.sh: what the critest lane needs, into $TOOLS_DIR/critest (default
# <repo>/.tools/critest, git-ignored), idempotent:
#
#   bin/runc          runc v1.5.3 with seccomp (cgo, Debian's libseccomp-dev)
#   bin/critest       cri-tools v1.37.0's critest (go test -c ./cmd/critest
#                     in a copy of the module: its go.mod is not installable)
#   cni/bin/          CNI plugins v1.10.0: bridge, loopback, host-local, portmap
#   bin/criregistry   the loopback registry (integration/cmd/criregistry)
#   bin/ginkgoreport  lists the specs that did not pass (cmd/ginkgoreport)
#   images/           stand-in images (integration/cmd/criimages, cmd/standin,
#                     Debian's dynamically linked busybox)
#
# Debian packages: libseccomp-dev, pkg-config, gcc (cgo), iptables (portmap),
# iproute2 (ip netns), util-linux (unshare, ipcmk).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/scripts/lib.sh"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
DIR="$TOOLS_DIR/critest"
BIN="$DIR/bin"

RUNC_MOD=github.com/opencontainers/runc
RUNC_VERSION=v1.5.3
CRITOOLS_MOD=sigs.k8s.io/cri-tools
CRITOOLS_VERSION=v1.37.0
CNI_MOD=github.com/containernetworking/plugins
CNI_VERSION=v1.10.0

log() { printf '[critest-install] %s\n' "$*" >&2; }

# has_build BINARY MODULE VERSION [SETTING]: built from MODULE@VERSION (and
# with the build setting, e.g. -tags=seccomp).
has_build() {
	local bin="$1" mod="$2" ver="$3" setting="${4:-}"
	[[ -x "$bin" ]] || return 1
	go version -m "$bin" 2>/dev/null | awk -v m="$mod" -v v="$ver" -v s="$setting" '
		($1=="mod"||$1=="dep") && $2==m && $3==v {mod=1}
		s=="" || ($1=="build" && $2==s) {set=1}
		END {exit !(mod && set)}'
}

apt_install_missing libseccomp-dev pkg-config gcc iptables iproute2 util-linux

if has_build "$BIN/runc" "$RUNC_MOD" "$RUNC_VERSION" "-tags=seccomp"; then
	log "runc $RUNC_VERSION with seccomp: up to date"
else
	log "go install -tags seccomp $RUNC_MOD@$RUNC_VERSION"
	mkdir -p "$BIN"
	(cd / && CGO_ENABLED=1 GOBIN="$BIN" GOFLAGS="-buildvcs=false" go install -tags seccomp "$RUNC_MOD@$RUNC_VERSION")
fi
"$BIN/runc" --version | grep -q seccomp || { log "$BIN/runc lacks seccomp"; exit 1; }

# Built in a copy of the module, critest records no module version: a
# stamp beside it does.
if [[ -x "$BIN/critest" && "$(cat "$BIN/critest.version" 2>/dev/null)" == "$CRITOOLS_VERSION" ]]; then
	log "critest $CRITOOLS_VERSION: up to date"
else
	src="$(cd / && go mod download -json "$CRITOOLS_MOD@$CRITOOLS_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$src" ]] || { log "go mod download $CRITOOLS_MOD@$CRITOOLS_VERSION gave no directory"; exit 1; }
	copy="$DIR/src/cri-tools"
	rm -rf "$copy"
	mkdir -p "$(dirname "$copy")"
	cp -r "$src" "$copy"
	chmod -R u+w "$copy"
	# GOWORK=off: the copy lies below this repository's go.work, outside it.
	log "go test -c ./cmd/critest in a copy of $CRITOOLS_MOD@$CRITOOLS_VERSION"
	(cd "$copy" && GOWORK=off GOFLAGS="-buildvcs=false -mod=mod" go test -c -o "$BIN/critest" ./cmd/critest)
	rm -rf "$copy"
	printf '%s\n' "$CRITOOLS_VERSION" >"$BIN/critest.version"
fi

missing=()
for p in main/bridge main/loopback ipam/host-local meta/portmap; do
	has_build "$DIR/cni/bin/${p##*/}" "$CNI_MOD" "$CNI_VERSION" || missing+=("$CNI_MOD/plugins/$p@$CNI_VERSION")
done
if ((${#missing[@]})); then
	log "go install ${missing[*]}"
	mkdir -p "$DIR/cni/bin"
	(cd / && CGO_ENABLED=0 GOBIN="$DIR/cni/bin" GOFLAGS="-buildvcs=false" go install "${missing[@]}")
else
	log "CNI plugins $CNI_VERSION: up to date"
fi

(cd "$ROOT/integration" && CGO_ENABLED=0 go build -o "$BIN/criregistry" ./cmd/criregistry &&
	CGO_ENABLED=0 go build -o "$BIN/ginkgoreport" ./cmd/ginkgoreport &&
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$DIR/standin" ./cmd/standin)

# Debian's dynamically linked busybox, unpacked, not installed.
if [[ ! -x "$DIR/busybox/bin/busybox" ]]; then
	tmp="$(mktemp -d)"
	# apt-get download needs package lists: fetch them if it finds none.
	(cd "$tmp" && { apt-get download busybox >/dev/null 2>&1 ||
		{ apt-get update -qq && apt-get download busybox >/dev/null; }; })
	dpkg -x "$tmp"/busybox_*.deb "$DIR/busybox"
	rm -rf "$tmp"
fi

stamp="$DIR/images.stamp"
want="$(sha256sum "$DIR/busybox/bin/busybox" "$DIR/standin" "$ROOT/integration/cmd/criimages/main.go" | awk '{print $1}' | tr '\n' ' ')"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$DIR/images/index.json" ]]; then
	log "stand-in images: up to date"
else
	(cd "$ROOT/integration" && go run ./cmd/criimages -busybox "$DIR/busybox/bin/busybox" -standin "$DIR/standin" -out "$DIR/images") >&2
	printf '%s' "$want" >"$stamp"
fi
log "ready in $DIR"
