#!/usr/bin/env bash
# build-image.sh: build the busybox test image as an OCI image-layout tarball,
# without any registry, from Debian's static busybox (/bin/busybox).
#
#   output: $ROOT/.tools/images/busybox.tar   (override with IMAGE_TAR)
#   name:   docker.io/library/busybox:latest (override with IMAGE_NAME)
#   cmd:    sh (override with IMAGE_CMD, e.g. "sleep 2147483647" for a pause image)
#
# Import it with either of:
#   ctr -n <ns> images import .tools/images/busybox.tar
#   ctr -n <ns> images import --base-name docker.io/library/busybox .tools/images/busybox.tar
# (index.json carries both org.opencontainers.image.ref.name=latest and
# containerd's io.containerd.image.name=<full name>).
#
# The output is deterministic: fixed mtimes, sorted entries, so the same
# busybox binary always gives the same image digest. It is rebuilt only when
# the busybox binary or the generator changed (FORCE=1 rebuilds anyway).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
IMAGE_TAR="${IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
IMAGE_NAME="${IMAGE_NAME:-docker.io/library/busybox:latest}"
IMAGE_CMD="${IMAGE_CMD:-sh}"

log() { printf '[build-image] %s\n' "$*" >&2; }

if ! dpkg -s busybox-static >/dev/null 2>&1 && [[ ! -x "$BUSYBOX" ]]; then
	log "$BUSYBOX missing: run scripts/install-tools.sh (installs busybox-static)"
	exit 1
fi
[[ -x "$BUSYBOX" ]] || { log "$BUSYBOX is not executable"; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	log "warning: $BUSYBOX is dynamically linked; the image has no libc (use busybox-static)"
fi

stamp="$IMAGE_TAR.stamp"
want="$(sha256sum "$BUSYBOX" "$ROOT/integration/cmd/mkimage/main.go" | awk '{print $1}' | tr '\n' ' ')$IMAGE_NAME $IMAGE_CMD"
if [[ "${FORCE:-}" != 1 && -f "$IMAGE_TAR" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	log "$IMAGE_TAR is up to date ($IMAGE_NAME)"
	exit 0
fi

mkdir -p "$(dirname "$IMAGE_TAR")"
(cd "$ROOT/integration" && go run ./cmd/mkimage -busybox "$BUSYBOX" -name "$IMAGE_NAME" -cmd "$IMAGE_CMD" -out "$IMAGE_TAR") >&2
printf '%s' "$want" >"$stamp"
log "built $IMAGE_TAR ($IMAGE_NAME)"
