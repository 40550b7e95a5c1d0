#!/usr/bin/env bash
# run.sh: `make compat`. Installs the containerd versions (install.sh), builds
# the busybox and pause images, then runs integration/cmd/compat: one smoke
# set of the shim under each version, printed as a table, containerd version
# x check. Fails on any cell that is not "ok".
#
# Environment: SHIM_BINARY (default bin/containerd-shim-runc-v2),
# COMPAT_VERSIONS (default "1.6.20 1.7.35 2.2.9 2.3.7 2.4.2"), TOOLS_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
export COMPAT_VERSIONS="${COMPAT_VERSIONS:-1.6.20 1.7.35 2.2.9 2.3.7 2.4.2}"

"$ROOT/scripts/compat/install.sh"
"$ROOT/scripts/build-image.sh"
IMAGE_TAR="$TOOLS_DIR/images/pause.tar" IMAGE_NAME="oomshim.test/pause:1" IMAGE_CMD="sleep 2147483647" \
	"$ROOT/scripts/build-image.sh"
(cd "$ROOT/integration" && go build -o "$TOOLS_DIR/compat/compat" ./cmd/compat)
exec "$TOOLS_DIR/compat/compat" -shim "$SHIM_BINARY" -compat "$TOOLS_DIR/compat" -tools "$TOOLS_DIR/bin" \
	-image "$TOOLS_DIR/images/busybox.tar" -pause "$TOOLS_DIR/images/pause.tar" -versions "$COMPAT_VERSIONS"
