#!/usr/bin/env bash
# test-cgroup2.sh: the cgroup v2 lane (`make test-cgroup2`). Runs the
# integration suite inside a qemu VM booting Debian's kernel with only the
# unified hierarchy, whatever the host's cgroup setup.
#
#   1. Debian packages qemu-system-x86, linux-image-amd64, criu, iptables,
#      iproute2 and tar
#      (the last four go into the guest; installed only
#      when dpkg says they are missing)
#   2. build-tools.sh       static containerd, ctr, runc; integration.test
#   3. build-initramfs.sh   the guest's initramfs (cached by input hash)
#   4. run-vm.sh            boot, run the suite, bring back output, verdict
#
# Expects the shim (make build) and the test image (make image). Artifacts and
# the last run's output live in .tools/vm/. See run-vm.sh for the knobs
# (VM_CYCLES, VM_TIMEOUT, TEST_RUN, VERBOSE, VM_MEM, VM_SMP).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"
. "$HERE/../lib.sh"

# criu and iptables go into the guest (the checkpoint tests).
DEBIAN_PACKAGES=(qemu-system-x86 linux-image-amd64 criu iptables iproute2 tar)

log() { printf '[vm] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "the cgroup2 lane needs root (apt, mknod in the initramfs)"; exit 1; }
export SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
export TEST_IMAGE_TAR="${TEST_IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
[[ -x "$SHIM_BINARY" ]] || { log "no shim at $SHIM_BINARY: run make build"; exit 1; }
[[ -f "$TEST_IMAGE_TAR" ]] || { log "no test image at $TEST_IMAGE_TAR: run make image"; exit 1; }
if ldd "$SHIM_BINARY" >/dev/null 2>&1; then
	log "$SHIM_BINARY is dynamically linked; the VM has no libc (build it with CGO_ENABLED=0)"
	exit 1
fi

lane_start=$SECONDS
apt_install_missing "${DEBIAN_PACKAGES[@]}"
"$HERE/build-tools.sh"
[[ "$VM_SUITE" == critest ]] && "$ROOT/scripts/critest/install.sh"
"$HERE/build-initramfs.sh"
rc=0
"$HERE/run-vm.sh" || rc=$?
log "lane took $((SECONDS - lane_start))s"
exit "$rc"
