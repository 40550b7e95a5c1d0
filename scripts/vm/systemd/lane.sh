#!/usr/bin/env bash
# lane.sh: the systemd lane (`make test-systemd`): a qemu (TCG) VM that boots
# a minimal Debian with systemd as PID 1 and D-Bus, cgroup v2 only, and runs
# containerd with this shim under the systemd cgroup driver (runc
# --systemd-cgroup): guest.sh's smoke set, then the integration suite with
# TEST_CGROUP_DRIVER=systemd. Prints the guest's proof line
#   systemd-lane: systemd <version> pid1=systemd cgroup2 SystemdCgroup=true
# the boot time, each smoke check and the suite's verdict; exits non-zero on
# any failure.
#
# The root filesystem comes from Debian's packages through mmdebstrap
# (systemd, systemd-sysv, dbus, kmod, iproute2, util-linux, e2fsprogs,
# busybox-static for the suite's hand-made rootfs, criu and iptables for the
# checkpoint tests), with
# the host's kernel modules and the static containerd, ctr and runc of
# scripts/vm, on an ext4 image booted with Debian's own kernel and initrd. It
# is cached by a hash of its inputs. What changes from run to run (the shim,
# integration.test, the test image, containerd's own shim, guest.sh) reaches
# the guest on a 9p share, which also brings the results back.
#
# Environment: SHIM_BINARY, TEST_IMAGE_TAR, VM_CYCLES (the stress test's
# cycles, default 100), TEST_RUN (-test.run; SUITE=smoke runs no suite),
# VM_TIMEOUT (hard limit in seconds, default 2700), VM_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
. "$HERE/../../lib.sh"
resolve_kernel
SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
TEST_IMAGE_TAR="${TEST_IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
VM_TIMEOUT="${VM_TIMEOUT:-2700}"
VM_CYCLES="${VM_CYCLES:-100}"
SUITE="${SUITE:-integration}"
SYS_DIR="$VM_DIR/systemd"
IMG="$SYS_DIR/root.img"
RUN="$SYS_DIR/run"
SHARE="$RUN/share"
INITRD="/boot/initrd.img-$VM_KERNEL_RELEASE"

log() { printf '[systemd-lane] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "needs root"; exit 1; }
[[ -x "$SHIM_BINARY" ]] || { log "no shim at $SHIM_BINARY: run make build"; exit 1; }
if ldd "$SHIM_BINARY" >/dev/null 2>&1; then
	log "$SHIM_BINARY is dynamically linked; build it with CGO_ENABLED=0"
	exit 1
fi
lane_start=$SECONDS
apt_install_missing mmdebstrap qemu-system-x86 linux-image-amd64 e2fsprogs
"$HERE/../build-tools.sh"
[[ -r "$INITRD" ]] || { log "no $INITRD"; exit 1; }

# --- the image ---------------------------------------------------------------
# boot.sh is the oneshot unit's command: it mounts the share and runs the
# guest.sh of this run from it.
BOOT_SH='#!/bin/sh
modprobe 9pnet_virtio && modprobe 9p && mkdir -p /share &&
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none results /share ||
	{ echo "OOMSHIM-SYSTEMD error mount the 9p share" >/dev/ttyS0; systemctl poweroff --no-block; exit 0; }
exec /bin/bash /share/in/guest.sh'
UNIT='[Unit]
Description=oomshim systemd lane
After=dbus.service
Wants=dbus.service

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/oomshim/boot.sh
StandardOutput=journal+console
StandardError=journal+console'
# criu and iptables (its network lock) for the checkpoint tests.
PACKAGES=systemd,systemd-sysv,dbus,kmod,iproute2,util-linux,e2fsprogs,busybox-static,criu,iptables
# Units a container host needs none of here: no login prompt or login
# sessions, no clock sync, no periodic jobs.
MASKED=(getty@tty1.service serial-getty@ttyS0.service systemd-logind.service
	systemd-user-sessions.service systemd-update-utmp.service systemd-timesyncd.service
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
	e2scrub_reap.service fstrim.timer systemd-tmpfiles-clean.timer)
want="$({
	printf '%s\n' "$BOOT_SH" "$UNIT" "$PACKAGES" "${MASKED[@]}" "$VM_KERNEL_RELEASE"
	sha256sum "$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc" | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)"
mkdir -p "$SYS_DIR"
if [[ -f "$IMG" && "$(cat "$IMG.stamp" 2>/dev/null)" == "$want" ]]; then
	log "$IMG is up to date"
else
	root="$SYS_DIR/rootfs"
	rm -rf "$root" "$IMG"
	mkdir -p "$root"
	log "mmdebstrap ($PACKAGES) into $root"
	mmdebstrap --quiet --variant=minbase --include="$PACKAGES" bookworm "$root" >&2
	mkdir -p "$root/lib/modules"
	cp -a "/lib/modules/$VM_KERNEL_RELEASE" "$root/lib/modules/"
	mkdir -p "$root/oomshim/bin" "$root/etc/systemd/system/multi-user.target.wants"
	install -m 0755 "$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc" "$root/oomshim/bin/"
	printf '%s\n' "$BOOT_SH" >"$root/oomshim/boot.sh"
	chmod 0755 "$root/oomshim/boot.sh"
	printf '%s\n' "$UNIT" >"$root/etc/systemd/system/oomshim-lane.service"
	ln -s ../oomshim-lane.service "$root/etc/systemd/system/multi-user.target.wants/oomshim-lane.service"
	for u in "${MASKED[@]}"; do
		ln -sf /dev/null "$root/etc/systemd/system/$u"
	done
	echo oomshim-systemd >"$root/etc/hostname"
	echo "127.0.0.1 localhost oomshim-systemd" >"$root/etc/hosts"
	printf '/dev/vda / ext4 rw 0 1\n' >"$root/etc/fstab"
	log "mkfs.ext4 -d (4 GiB sparse image)"
	mkfs.ext4 -q -F -d "$root" "$IMG" 4G
	rm -rf "$root"
	printf '%s' "$want" >"$IMG.stamp"
fi

# --- the run -----------------------------------------------------------------
rm -rf "$RUN"
mkdir -p "$SHARE/in"
install -m 0755 "$SHIM_BINARY" "$SHARE/in/containerd-shim-runc-v2"
install -m 0755 "$VM_DIR/integration.test" "$SHARE/in/integration.test"
install -m 0755 "$VM_DIR/bin/ref/containerd-shim-runc-v2" "$SHARE/in/ref-shim"
install -m 0644 "$TEST_IMAGE_TAR" "$SHARE/in/busybox.tar"
install -m 0755 "$HERE/guest.sh" "$SHARE/in/guest.sh"
{
	printf 'SUITE=%q\n' "$SUITE"
	printf 'CYCLES=%q\n' "$VM_CYCLES"
	printf 'TEST_RUN=%q\n' "${TEST_RUN:-}"
	printf 'TEST_TIMEOUT=%q\n' "$((VM_TIMEOUT - 180))s"
} >"$SHARE/in/params.env"

log "booting $VM_KERNEL_RELEASE with systemd under TCG (hard limit ${VM_TIMEOUT}s, $VM_CYCLES stress cycles)"
started=$SECONDS
rc=0
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 3072 -smp 2 \
	-nodefaults -display none -monitor none -no-reboot -nic none \
	-serial "file:$RUN/console.log" \
	-kernel "$VM_KERNEL" -initrd "$INITRD" \
	-append "console=ttyS0 root=/dev/vda rw quiet panic=-1 systemd.unified_cgroup_hierarchy=1 mitigations=off" \
	-drive "file=$IMG,if=virtio,format=raw,snapshot=on" \
	-virtfs "local,path=$SHARE,mount_tag=results,security_model=none,id=results" \
	</dev/null 2>"$RUN/qemu.err" || rc=$?
elapsed=$((SECONDS - started))
log "VM ran ${elapsed}s (qemu status $rc)"
tr -d '\r' <"$RUN/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a -o 'OOMSHIM-SYSTEMD .*' |
	sed 's/^OOMSHIM-SYSTEMD //' | awk '!seen[$0]++' | tee "$RUN/markers.txt" >&2
TEST_LOG="$SHARE/test.log"
fail() {
	log "FAIL: $* (lane $((SECONDS - lane_start))s)"
	exit 1
}
if ((rc == 124 || rc == 137)); then
	section "guest console" "$RUN/console.log" 30
	section "suite output" "$TEST_LOG" 60
	fail "the VM hit its hard timeout of ${VM_TIMEOUT}s"
fi
if ! grep -q '^systemd-lane: systemd [0-9]* pid1=systemd cgroup2 SystemdCgroup=true$' "$RUN/markers.txt"; then
	section "guest console" "$RUN/console.log" 30
	fail "no proof line (systemd as PID 1 on cgroup2 with SystemdCgroup=true)"
fi
failures="$(cat "$SHARE/failures" 2>/dev/null || true)"
if [[ "$failures" != 0 ]]; then
	fail "${failures:-no result} failed smoke checks (guest output: $SHARE/lane.log)"
fi
if [[ "$SUITE" == smoke ]]; then
	log "PASS: the smoke set (lane $((SECONDS - lane_start))s)"
	exit 0
fi

# --- the suite's outcome ------------------------------------------------------
suite_rc="$(tr -dc 0-9 <"$SHARE/suite.rc" 2>/dev/null || true)"
read -r _ _ console_rc suite_secs _ <<<"$(grep -a '^suite exit ' "$RUN/markers.txt" | head -n1)"
if [[ -z "$suite_rc" ]]; then
	section "suite output" "$TEST_LOG" 60
	fail "the suite did not finish (no exit code came back)"
fi
[[ "${console_rc:-}" == "$suite_rc" ]] || fail "exit codes disagree: share says $suite_rc, console says ${console_rc:-nothing}"
timing="VM ${elapsed}s, suite ${suite_secs:-?}s"
if [[ "$suite_rc" == 0 ]]; then
	passed="$(grep -c -E '^--- PASS: ' "$TEST_LOG" || true)"
	((passed > 0)) || fail "the suite exited 0 but no test passed (-test.run matched nothing?)"
	skipped="$(grep -E '^--- SKIP: ' "$TEST_LOG" | awk '{ print $3 }' | paste -sd' ' || true)"
	[[ -z "$skipped" ]] || log "skipped: $skipped"
	log "PASS: $passed tests passed under systemd's cgroup driver ($timing, lane $((SECONDS - lane_start))s)"
	exit 0
fi
awk -v keep=15 -f "$HERE/../failed-tests.awk" "$TEST_LOG" >"$RUN/failed-tests.txt" || true
failed="$(awk -v list=1 -f "$HERE/../failed-tests.awk" "$TEST_LOG" | paste -sd' ' || true)"
if [[ -n "$failed" ]]; then
	cat "$RUN/failed-tests.txt" >&2
	grep -a -E '^integration: |^  - ' "$TEST_LOG" >"$RUN/testmain.txt" || true
	section "suite (TestMain) messages" "$RUN/testmain.txt" 30
else
	section "suite output" "$TEST_LOG" 80
fi
for clog in "$SHARE"/containerd-*.log; do
	section "containerd log" "$clog" 40
done
fail "suite exit status $suite_rc; failed: ${failed:-no test named (see the output above)} ($timing)"
