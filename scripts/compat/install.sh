#!/usr/bin/env bash
# install.sh: the containerd versions `make compat` runs the shim under,
# each into $TOOLS_DIR/compat/<version>/ (containerd and ctr), touching
# nothing system-wide:
#
#   1.6.20  Debian 12's package, downloaded and unpacked (apt-get download,
#           dpkg -x), not installed
#   1.7.35  the module from the Go module proxy, built in a copy (`go
#           install` refuses it: its go.mod has exclude directives)
#   2.2.9, 2.3.7, 2.4.2  go install
#
# Idempotent: a version whose binaries are there is left alone.
# Environment: TOOLS_DIR (default <repo>/.tools), COMPAT_VERSIONS (default
# all of the above).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
COMPAT_DIR="$TOOLS_DIR/compat"
COMPAT_VERSIONS="${COMPAT_VERSIONS:-1.6.20 1.7.35 2.2.9 2.3.7 2.4.2}"

log() { printf '[compat/install] %s\n' "$*" >&2; }

have() { [[ -x "$1/containerd" && -x "$1/ctr" ]]; }

install_debian_1_6() {
	local dir="$1" tmp
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' RETURN
	log "1.6.20: Debian 12's containerd package, unpacked"
	if ! apt-cache show containerd >/dev/null 2>&1; then
		apt-get update -qq
	fi
	local ver
	ver="$(apt-cache madison containerd | awk '$3 ~ /^1\.6\.20/ {print $3; exit}')"
	[[ -n "$ver" ]] || { log "no containerd 1.6.20 in apt's sources (Debian 12 has it)"; return 1; }
	(cd "$tmp" && apt-get download -qq "containerd=$ver" 2>/dev/null)
	dpkg -x "$tmp"/containerd_*.deb "$tmp/root"
	mkdir -p "$dir"
	cp "$tmp/root/usr/bin/containerd" "$tmp/root/usr/bin/ctr" "$dir/"
}

install_built_1_7() {
	local version="$1" dir="$2" src tmp
	log "$version: module from the proxy, built in a copy"
	src="$(cd / && GOFLAGS=-mod=mod go mod download -json "github.com/containerd/containerd@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$src" ]] || { log "go mod download of containerd v$version failed"; return 1; }
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' RETURN
	cp -r "$src/." "$tmp/src"
	chmod -R u+w "$tmp/src"
	mkdir -p "$dir"
	(cd "$tmp/src" && GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" go build -tags "no_btrfs no_devmapper no_zfs" \
		-ldflags "-X github.com/containerd/containerd/version.Version=$version" -o "$dir/" ./cmd/containerd ./cmd/ctr)
}

install_go_2() {
	local version="$1" dir="$2"
	log "$version: go install"
	mkdir -p "$dir"
	(cd / && GOWORK=off CGO_ENABLED=0 GOBIN="$dir" GOFLAGS="-buildvcs=false" go install -tags "no_btrfs no_devmapper no_zfs" \
		"github.com/containerd/containerd/v2/cmd/containerd@v$version" "github.com/containerd/containerd/v2/cmd/ctr@v$version")
}

for v in $COMPAT_VERSIONS; do
	dir="$COMPAT_DIR/$v"
	if have "$dir"; then
		log "$v: present"
		continue
	fi
	case "$v" in
	1.6.*) install_debian_1_6 "$dir" ;;
	1.*) install_built_1_7 "$v" "$dir" ;;
	2.*) install_go_2 "$v" "$dir" ;;
	*) log "unknown version $v"; exit 1 ;;
	esac
	have "$dir" || { log "$v: no containerd and ctr in $dir"; exit 1; }
done
log "ready in $COMPAT_DIR"
