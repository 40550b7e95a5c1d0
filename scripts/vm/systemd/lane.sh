#!/usr/bin/env bash
# lane.sh: the systemd lane (`make test-systemd`): a qemu (TCG) VM that boots
# a minimal Debian with systemd as PID 1 and D-Bus, cgroup v2 only, and runs
# containerd with this shim under the systemd cgroup driver (runc
# --systemd-cgroup): guest.sh's smoke set. Prints the guest's proof line
#   systemd-lane: systemd <version> pid1=systemd cgroup2 SystemdCgroup=true
# and each check; exits non-zero on any failed check.
#
# The root filesystem comes from Debian's packages through mmdebstrap
# (systemd, systemd-sysv, dbus, kmod, iproute2, util-linux), with the host's
# kernel modules, the static containerd, ctr and runc of scripts/vm, the
# shim and the test image under /oomshim, on an ext4 image booted with
# Debian's own kernel and initrd. Cached by a hash of its inputs.
#
# Environment: SHIM_BINARY, TEST_IMAGE_TAR, VM_TIMEOUT (default 600), VM_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../lib.sh"
. "$HERE/../../lib.sh"
resolve_kernel
SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
TEST_IMAGE_TAR="${TEST_IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
VM_TIMEOUT="${VM_TIMEOUT:-600}"
SYS_DIR="$VM_DIR/systemd"
IMG="$SYS_DIR/root.img"
RUN="$SYS_DIR/run"
INITRD="/boot/initrd.img-$VM_KERNEL_RELEASE"

log() { printf '[systemd-lane] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "needs root"; exit 1; }
apt_install_missing mmdebstrap qemu-system-x86 linux-image-amd64 e2fsprogs
"$HERE/../build-tools.sh"
[[ -r "$INITRD" ]] || { log "no $INITRD"; exit 1; }

# --- the image ---------------------------------------------------------------
inputs=("$HERE/lane.sh" "$HERE/guest.sh" "$SHIM_BINARY" "$TEST_IMAGE_TAR"
	"$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc")
want="$(sha256sum "${inputs[@]}" | sha256sum | cut -d' ' -f1) $VM_KERNEL_RELEASE"
mkdir -p "$SYS_DIR"
if [[ -f "$IMG" && "$(cat "$IMG.stamp" 2>/dev/null)" == "$want" ]]; then
	log "$IMG is up to date"
else
	root="$SYS_DIR/rootfs"
	rm -rf "$root" "$IMG"
	mkdir -p "$root"
	log "mmdebstrap (systemd, dbus) into $root"
	mmdebstrap --quiet --variant=minbase --include=systemd,systemd-sysv,dbus,kmod,iproute2,util-linux \
		bookworm "$root" >&2
	mkdir -p "$root/lib/modules"
	cp -a "/lib/modules/$VM_KERNEL_RELEASE" "$root/lib/modules/"
	mkdir -p "$root/oomshim/bin" "$root/oomshim/path" "$root/etc/systemd/system/multi-user.target.wants"
	install -m 0755 "$SHIM_BINARY" "$root/oomshim/path/containerd-shim-runc-v2"
	install -m 0755 "$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc" "$root/oomshim/bin/"
	install -m 0644 "$TEST_IMAGE_TAR" "$root/oomshim/busybox.tar"
	install -m 0755 "$HERE/guest.sh" "$root/oomshim/guest.sh"
	cat >"$root/oomshim/containerd.toml" <<'TOML'
version = 3
root = "/var/lib/oomshim"
state = "/run/oomshim/state"
[debug]
  level = "debug"
[grpc]
  address = "/run/oomshim/c.sock"
[ttrpc]
  address = "/run/oomshim/c.sock.ttrpc"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = true
TOML
	cat >"$root/etc/systemd/system/oomshim-lane.service" <<'UNIT'
[Unit]
Description=oomshim systemd lane
After=dbus.service
Wants=dbus.service

[Service]
Type=oneshot
ExecStart=/oomshim/guest.sh
StandardOutput=journal+console
StandardError=journal+console
UNIT
	ln -s ../oomshim-lane.service "$root/etc/systemd/system/multi-user.target.wants/oomshim-lane.service"
	# A short boot: no getty, no network or time units it does not need.
	for u in getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service \
		apt-daily.timer apt-daily-upgrade.timer; do
		ln -sf /dev/null "$root/etc/systemd/system/$u"
	done
	echo oomshim-systemd >"$root/etc/hostname"
	echo "127.0.0.1 localhost oomshim-systemd" >"$root/etc/hosts"
	printf '/dev/vda / ext4 rw 0 1\n' >"$root/etc/fstab"
	log "mkfs.ext4 -d (2 GiB sparse image)"
	mkfs.ext4 -q -F -d "$root" "$IMG" 2G
	rm -rf "$root"
	printf '%s' "$want" >"$IMG.stamp"
fi

# --- the run -----------------------------------------------------------------
rm -rf "$RUN"
mkdir -p "$RUN/share"
log "booting $VM_KERNEL_RELEASE with systemd under TCG (hard limit ${VM_TIMEOUT}s)"
started=$SECONDS
rc=0
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 3072 -smp 2 \
	-nodefaults -display none -monitor none -no-reboot -nic none \
	-serial "file:$RUN/console.log" \
	-kernel "$VM_KERNEL" -initrd "$INITRD" \
	-append "console=ttyS0 root=/dev/vda rw quiet panic=-1 systemd.unified_cgroup_hierarchy=1 mitigations=off" \
	-drive "file=$IMG,if=virtio,format=raw,snapshot=on" \
	-virtfs "local,path=$RUN/share,mount_tag=results,security_model=none,id=results" \
	</dev/null 2>"$RUN/qemu.err" || rc=$?
log "VM ran $((SECONDS - started))s (qemu status $rc)"
tr -d '\r' <"$RUN/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a -o 'OOMSHIM-SYSTEMD .*' |
	sed 's/^OOMSHIM-SYSTEMD //' | awk '!seen[$0]++' | tee "$RUN/markers.txt" >&2
if ((rc == 124 || rc == 137)); then
	log "FAIL: the VM hit its hard timeout"
	tail -30 "$RUN/console.log" >&2
	exit 1
fi
failures="$(cat "$RUN/share/failures" 2>/dev/null || true)"
if ! grep -q '^systemd-lane: systemd [0-9]* pid1=systemd cgroup2 SystemdCgroup=true$' "$RUN/markers.txt"; then
	log "FAIL: no proof line (systemd as PID 1 on cgroup2 with SystemdCgroup=true)"
	tail -30 "$RUN/console.log" >&2
	exit 1
fi
if [[ "$failures" != 0 ]]; then
	log "FAIL: ${failures:-no result} failed checks (guest output: $RUN/share/lane.log)"
	exit 1
fi
log "PASS"
