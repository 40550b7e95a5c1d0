# shellcheck shell=bash
# lib.sh: settings shared by the scripts in scripts/vm (sourced, not run).
#
#   ROOT            the repository
#   VM_DIR          build artifacts and run output (default <repo>/.tools/vm)
#   VM_KERNEL       the kernel image to boot (default: newest /boot/vmlinuz-*)
#   VM_KERNEL_RELEASE  its release (uname -r), naming /lib/modules/<release>

#   VM_SUITE        what the guest runs: integration (the Go suite), critest
#                   (scripts/critest/run.sh) or bench (bench/, BENCH_FLAGS);
#                   each has its own initramfs

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VM_DIR="${VM_DIR:-$ROOT/.tools/vm}"
VM_SUITE="${VM_SUITE:-integration}"
case "$VM_SUITE" in
integration) VM_INITRD="$VM_DIR/initramfs.cpio" ;;
critest) VM_INITRD="$VM_DIR/initramfs-critest.cpio" ;;
bench) VM_INITRD="$VM_DIR/initramfs-bench.cpio" ;;
*)
	echo "VM_SUITE=$VM_SUITE: want integration, critest or bench" >&2
	exit 1
	;;
esac

# resolve_kernel: set VM_KERNEL and VM_KERNEL_RELEASE, or fail.
resolve_kernel() {
	if [[ -z "${VM_KERNEL:-}" ]]; then
		local images=(/boot/vmlinuz-*)
		[[ -e "${images[0]}" ]] && VM_KERNEL="$(printf '%s\n' "${images[@]}" | sort -V | tail -n1)"
	fi
	if [[ -z "$VM_KERNEL" || ! -r "$VM_KERNEL" ]]; then
		echo "no kernel image: install linux-image-amd64 or set VM_KERNEL" >&2
		return 1
	fi
	VM_KERNEL_RELEASE="${VM_KERNEL_RELEASE:-$(basename "$VM_KERNEL")}"
	VM_KERNEL_RELEASE="${VM_KERNEL_RELEASE#vmlinuz-}"
	if [[ ! -f "/lib/modules/$VM_KERNEL_RELEASE/modules.dep" ]]; then
		echo "no /lib/modules/$VM_KERNEL_RELEASE/modules.dep for $VM_KERNEL" >&2
		return 1
	fi
	export VM_KERNEL VM_KERNEL_RELEASE
}

# section TITLE FILE LINES: the last LINES lines of FILE, if it has any,
# under a title, on stderr.
section() {
	local title="$1" file="$2" lines="$3"
	[[ -s "$file" ]] || return 0
	printf '\n----- %s (last %d lines of %s) -----\n' "$title" "$lines" "$file" >&2
	tail -n "$lines" "$file" | tr -d '\r' >&2
}
