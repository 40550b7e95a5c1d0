#!/usr/bin/env bash
# build-initramfs.sh: pack the cgroup v2 test VM's initramfs.
#
#   output: $VM_INITRD (lib.sh: one per VM_SUITE; uncompressed newc: under
#           TCG the kernel unpacks plain cpio much faster than it inflates gzip)
#
# Contents: /init (scripts/vm/init), Debian's static busybox with its applets,
# /dev/console, the kernel modules the guest needs with their dependencies
# (overlay for containerd's snapshotter; virtio_pci and 9p for the results
# share) in load order, and under /oomshim the shim, static containerd, ctr
# and runc, containerd's own shim (under ref/), the integration test binary
# and the test image (and for VM_SUITE=bench the benchmark, bench/); criu and
# iptables (xtables-nft-multi) with their libraries for the checkpoint tests.
#
# Inputs come from the environment (run by test-cgroup2.sh):
#   SHIM_BINARY, TEST_IMAGE_TAR, VM_KERNEL (lib.sh), BUSYBOX (/bin/busybox)
#
# Cached: the archive is rebuilt only when a hash over every input file (and
# this script and init) differs from the one stored beside it; FORCE=1
# rebuilds anyway. Needs root (mknod /dev/console).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
resolve_kernel

SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
TEST_IMAGE_TAR="${TEST_IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
OUT="$VM_INITRD"
MODDIR="/lib/modules/$VM_KERNEL_RELEASE"
# Modules the guest loads; their dependencies are added from modules.dep.
# ext4 and loop: the integration suite's loop-mounted rootfs (with
# mkfs.ext4 from the host); crc32c_generic is the soft dependency
# (modules.softdep) of ext4 and libcrc32c, which modules.dep does not list.
MODULES=(overlay virtio_pci 9pnet_virtio 9p crc32c_generic ext4 loop)
# critest's pods: the CNI bridge and veth pairs, portmap's iptables (nft).
CRITEST_MODULES=(veth bridge br_netfilter nf_tables nft_compat nft_chain_nat nft_masq
	xt_comment xt_mark xt_multiport xt_addrtype xt_conntrack xt_nat xt_MASQUERADE)
CRITEST_DIR="${TOOLS_DIR:-$ROOT/.tools}/critest"
# criu (checkpoint/restore tests): its socket diag modules (a container's network
# namespace is dumped only when criu can list every socket family in it: without
# af_packet_diag the dump fails with no error line), the veth and tun
# pairs and nftables that `criu check` probes, xt_mark for its network lock,
# conntrack's netlink for the namespace's connection table (without it the
# dump fails with "-22 reported by netlink").
CRIU_MODULES=(unix_diag inet_diag tcp_diag udp_diag raw_diag netlink_diag af_packet_diag veth tun nfnetlink
	nf_tables nft_compat xt_mark nf_conntrack_netlink)
CRIU="${CRIU:-/usr/sbin/criu}"
if [[ "$VM_SUITE" == critest ]]; then
	MODULES+=("${CRITEST_MODULES[@]}")
else
	MODULES+=("${CRIU_MODULES[@]}")
fi

log() { printf '[vm/build-initramfs] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "needs root (mknod /dev/console in the archive)"; exit 1; }
need=("$SHIM_BINARY" "$TEST_IMAGE_TAR" "$BUSYBOX" "$VM_DIR/integration.test"
	"$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc" /usr/sbin/mkfs.ext4
	/usr/sbin/xtables-nft-multi)
if [[ "$VM_SUITE" == critest ]]; then
	# What scripts/critest/install.sh made, and the host programs the lane
	# runs (dynamically linked: they come with their libraries).
	need+=("$CRITEST_DIR/bin/critest" "$CRITEST_DIR/bin/runc" "$CRITEST_DIR/bin/criregistry"
		"$CRITEST_DIR/bin/ginkgoreport" "$CRITEST_DIR/images/index.json"
		/usr/bin/bash /usr/bin/ipcmk)
else
	need+=("$CRIU" /usr/bin/tar /usr/bin/ip "$VM_DIR/bin/ref/containerd-shim-runc-v2")
fi
[[ "$VM_SUITE" == bench ]] && need+=("$VM_DIR/bench")
for f in "${need[@]}"; do
	[[ -f "$f" ]] || { log "missing input $f"; exit 1; }
done
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	log "$BUSYBOX is dynamically linked; install busybox-static"
	exit 1
fi

# --- modules in load order -------------------------------------------------
declare -A dep_of=() path_of=() seen=()
while IFS= read -r line; do
	mod="${line%%:*}"
	name="${mod##*/}"
	name="${name%.ko}"
	name="${name//-/_}"
	path_of[$name]="$mod"
	dep_of[$name]="${line#*:}"
done <"$MODDIR/modules.dep"

ordered=()
add_module() {
	local name="${1//-/_}" d
	[[ -n "${seen[$name]:-}" ]] && return
	seen[$name]=1
	[[ -n "${path_of[$name]:-}" ]] || { log "module $name not in $MODDIR/modules.dep"; exit 1; }
	for d in ${dep_of[$name]}; do
		d="${d##*/}"
		add_module "${d%.ko}"
	done
	ordered+=("${path_of[$name]}")
}
for m in "${MODULES[@]}"; do
	add_module "$m"
done

# --- cache check -----------------------------------------------------------
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
inputs=("$HERE/init" "$HERE/build-initramfs.sh" "${need[@]}")
if [[ "$VM_SUITE" == critest ]]; then
	inputs+=("$ROOT/scripts/critest/run.sh" "$CRITEST_DIR"/cni/bin/* "$CRITEST_DIR"/images/blobs/sha256/*)
fi
for ko in "${ordered[@]}"; do
	inputs+=("$MODDIR/$ko")
done
want="$({
	echo "release $VM_KERNEL_RELEASE"
	sha256sum "${inputs[@]}"
} | sha256sum | cut -d' ' -f1)"
stamp="$OUT.stamp"
if [[ "${FORCE:-}" != 1 && -f "$OUT" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	log "$OUT is up to date"
	exit 0
fi

# --- staging tree ----------------------------------------------------------
stage="$VM_DIR/initramfs.d"
rm -rf "$stage"
mkdir -p "$stage"/{bin,dev,etc,proc,sys,run,tmp,root,lib/modules,oomshim/bin,oomshim/integration}
chmod 1777 "$stage/tmp"
ln -s bin "$stage/sbin"
mkdir -p "$stage/usr"
ln -s ../bin "$stage/usr/bin"
ln -s ../bin "$stage/usr/sbin"

install -m 0755 "$HERE/init" "$stage/init"
install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[[ "$applet" == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
mknod -m 0600 "$stage/dev/console" c 5 1

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$stage/etc/group"
printf '127.0.0.1 localhost oomshim-vm\n::1 localhost\n' >"$stage/etc/hosts"
ln -s /proc/mounts "$stage/etc/mtab"

for ko in "${ordered[@]}"; do
	install -D -m 0644 "$MODDIR/$ko" "$stage/lib/modules/$ko"
	echo "$ko"
done >"$stage/lib/modules/modules.order"

install -m 0755 "$SHIM_BINARY" "$stage/oomshim/containerd-shim-runc-v2"
install -m 0755 "$VM_DIR/bin/containerd" "$VM_DIR/bin/ctr" "$VM_DIR/bin/runc" "$stage/oomshim/bin/"
install -m 0755 "$VM_DIR/integration.test" "$stage/oomshim/integration/integration.test"
install -m 0644 "$TEST_IMAGE_TAR" "$stage/oomshim/busybox.tar"
[[ "$VM_SUITE" != bench ]] || install -D -m 0755 "$VM_DIR/bench" "$stage/oomshim/bench/bench"

# copy_with_libs FILE DEST: FILE at DEST in the stage, with every library ldd
# names for it at its own path.
copy_with_libs() {
	install -D -m 0755 "$1" "$stage$2"
	local lib
	for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true); do
		[[ -e "$stage$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
	done
}

copy_with_libs "$(readlink -f /usr/sbin/mkfs.ext4)" /bin/mkfs.ext4
# iptables: critest's portmap, and criu's network lock (iptables-restore).
copy_with_libs /usr/sbin/xtables-nft-multi /bin/xtables-nft-multi
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf xtables-nft-multi "$stage/bin/$t"
done
# iptables loads its matches and targets at run time (ldd does not see them).
xt=/usr/lib/x86_64-linux-gnu/xtables
for so in "$xt"/*.so; do
	copy_with_libs "$so" "$so"
done
if [[ "$VM_SUITE" != critest ]]; then
	install -D -m 0755 "$VM_DIR/bin/ref/containerd-shim-runc-v2" "$stage/oomshim/ref/containerd-shim-runc-v2"
	copy_with_libs "$CRIU" /bin/criu
	# criu saves a container's tmpfs mounts with GNU tar's long options
	# (busybox's tar has none of them).
	rm -f "$stage/bin/tar"
	copy_with_libs "$(readlink -f /usr/bin/tar)" /bin/tar
	# ... and a network namespace's addresses and routes with iproute2's
	# `ip addr save` / `ip route save` (busybox's ip has no save).
	rm -f "$stage/bin/ip"
	copy_with_libs "$(readlink -f /usr/bin/ip)" /bin/ip
fi
if [[ "$VM_SUITE" == critest ]]; then
	copy_with_libs /usr/bin/bash /bin/bash
	copy_with_libs /usr/bin/ipcmk /bin/ipcmk
	mkdir -p "$stage/oomshim/tools/bin" "$stage/oomshim/scripts/critest"
	ln -s /oomshim/bin/containerd "$stage/oomshim/tools/bin/containerd"
	install -m 0755 "$ROOT/scripts/critest/run.sh" "$stage/oomshim/scripts/critest/run.sh"
	for b in critest runc criregistry ginkgoreport; do
		copy_with_libs "$CRITEST_DIR/bin/$b" "/oomshim/tools/critest/bin/$b"
	done
	mkdir -p "$stage/oomshim/tools/critest/cni"
	cp -a "$CRITEST_DIR/cni/bin" "$stage/oomshim/tools/critest/cni/"
	cp -a "$CRITEST_DIR/images" "$stage/oomshim/tools/critest/"
fi

# --- archive ---------------------------------------------------------------
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
	"$BUSYBOX" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes >"$OUT.tmp")
mv "$OUT.tmp" "$OUT"
printf '%s' "$want" >"$stamp"
rm -rf "$stage"
log "built $OUT ($(du -h "$OUT" | cut -f1); kernel $VM_KERNEL_RELEASE; modules: ${ordered[*]##*/})"
