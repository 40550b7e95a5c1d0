#!/usr/bin/env bash
# run-vm.sh: boot the cgroup v2 test VM on $VM_DIR/initramfs.cpio, run the
# integration suite in it, bring its output back and judge the run.
#
#   run-vm.sh               boot, run, judge
#   run-vm.sh --judge-only  judge the last run in $VM_DIR/run again
#
# qemu runs under TCG (KVM does not work on these machines) with no network
# device at all; the guest only has loopback. Results come back through a 9p
# share ($VM_DIR/run/share: test.log, suite.rc, guest-facts, containerd logs,
# dmesg) and marker lines on the serial console ($VM_DIR/run/console.log).
#
# Exit status: 0 only when the guest proved cgroup2 and its kernel, the suite
# ran at least one test and exited 0. Otherwise 1, with one line saying which:
# the VM did not boot, guest setup failed, the VM hit its hard timeout, the
# suite timed out, or tests failed (named, with their output and the tail of
# containerd's and the shim's logs).
#
# Environment:
#   VM_CYCLES     stress-test cycles in the guest (CYCLES there; default 100)
#   VM_TIMEOUT    hard limit on the VM in seconds (default 2100); the suite's
#                 -test.timeout is 150s less
#   TEST_RUN      -test.run filter for the suite (default: every test)
#   VERBOSE=1     stream the guest console (and the suite's output) live
#   VM_MEM        guest memory in MiB (default 3072), VM_SMP cpus (default 2)
#   BENCH_FLAGS   the benchmark's flags (VM_SUITE=bench)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
resolve_kernel
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

VM_CYCLES="${VM_CYCLES:-100}"
VM_TIMEOUT="${VM_TIMEOUT:-2100}"
VM_MEM="${VM_MEM:-3072}"
VM_SMP="${VM_SMP:-2}"
TEST_RUN="${TEST_RUN:-}"
BENCH_FLAGS="${BENCH_FLAGS:-}"
VERBOSE="${VERBOSE:-0}"
INITRD="$VM_INITRD"
RUN="$VM_DIR/run"
SHARE="$RUN/share"
CONSOLE="$RUN/console.log"
TEST_LOG="$SHARE/test.log"
# Leaves the suite time to time out by itself (with a goroutine dump) and
# the guest time to copy logs before the VM's hard limit.
SUITE_TIMEOUT=$((VM_TIMEOUT - 150))

log() { printf '[vm] %s\n' "$*" >&2; }

# verdict FAIL|PASS MESSAGE: the run's one-line outcome, then exit.
verdict() {
	local outcome="$1"
	shift
	printf '\n[vm] cgroup2 lane: %s: %s\n' "$outcome" "$*" >&2
	printf '[vm] console: %s  suite output: %s\n' "$CONSOLE" "$TEST_LOG" >&2
	[[ "$outcome" == PASS ]] && exit 0
	exit 1
}

# sq VALUE: VALUE quoted for a POSIX shell.
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# start_follow / stop_follow: show the run while it goes. VERBOSE=1 streams
# the console (which then carries the suite's output too); otherwise only the
# guest's marker lines and each top-level test's result.
follow_pid=""
start_follow() {
	local pidfile="$RUN/follow.pid"
	if [[ "$VERBOSE" == 1 ]]; then
		(
			echo "$BASHPID" >"$pidfile"
			exec tail -n +1 -F "$CONSOLE" 2>/dev/null
		) | tr -d '\r' >&2 &
	else
		(
			echo "$BASHPID" >"$pidfile"
			exec tail -q -n +1 -F "$CONSOLE" "$TEST_LOG" 2>/dev/null
		) | tr -d '\r' | grep --line-buffered -E 'OOMSHIM-VM |^--- (PASS|FAIL|SKIP)|^(PASS|FAIL)$|^panic: ' |
			sed -u 's/^.*OOMSHIM-VM /[guest] /; s/^\([^[]\)/[suite] \1/' >&2 &
	fi
	for _ in $(seq 20); do
		[[ -s "$pidfile" ]] && break
		sleep 0.1
	done
	follow_pid="$(cat "$pidfile" 2>/dev/null || true)"
}
stop_follow() {
	sleep 0.5 # let tail print the last lines
	[[ -z "$follow_pid" ]] || kill "$follow_pid" 2>/dev/null || true
	wait 2>/dev/null || true
}

# boot: run the VM once; leaves qemu's status and the wall time in $RUN.
boot() {
	[[ -f "$INITRD" ]] || { log "no $INITRD: run build-initramfs.sh"; exit 1; }
	command -v qemu-system-x86_64 >/dev/null ||
		{ log "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"; exit 1; }
	rm -rf "$RUN"
	mkdir -p "$SHARE"
	: >"$CONSOLE"
	: >"$TEST_LOG"
	{
		echo "SUITE=$(sq "$VM_SUITE")"
		echo "CYCLES=$(sq "$VM_CYCLES")"
		echo "TEST_TIMEOUT=$(sq "${SUITE_TIMEOUT}s")"
		echo "TEST_RUN=$(sq "$TEST_RUN")"
		echo "VERBOSE=$(sq "$VERBOSE")"
		echo "BENCH_FLAGS=$(sq "$BENCH_FLAGS")"
	} >"$SHARE/params.env"

	local cmdline="console=ttyS0 quiet panic=-1 cgroup_no_v1=all mitigations=off"
	# critest runs its AppArmor specs when the kernel has AppArmor on, and
	# needs the host tools (apparmor_parser) for them: off, as on the host.
	[[ "$VM_SUITE" == critest ]] && cmdline+=" apparmor=0"
	local qemu=(qemu-system-x86_64 -accel tcg -cpu max -m "$VM_MEM" -smp "$VM_SMP"
		-nodefaults -display none -monitor none -no-reboot
		-nic none
		-serial "file:$CONSOLE"
		-kernel "$VM_KERNEL" -initrd "$INITRD" -append "$cmdline"
		-virtfs "local,path=$SHARE,mount_tag=results,security_model=none,id=results")

	local load_before
	load_before="$(cut -d' ' -f1 /proc/loadavg)"
	log "booting $VM_KERNEL_RELEASE under TCG (-m $VM_MEM -smp $VM_SMP, hard limit ${VM_TIMEOUT}s, CYCLES=$VM_CYCLES${TEST_RUN:+, -test.run=$TEST_RUN}; host load $load_before on $(nproc) cpus)"
	start_follow
	local started=$SECONDS rc=0
	timeout -k 10 "$VM_TIMEOUT" "${qemu[@]}" </dev/null 2>"$RUN/qemu.err" || rc=$?
	stop_follow
	echo "$rc $((SECONDS - started)) $load_before $(cut -d' ' -f1 /proc/loadavg)" >"$RUN/qemu.status"
}

[[ "$VM_CYCLES" =~ ^[1-9][0-9]*$ ]] || { log "VM_CYCLES=$VM_CYCLES: want a positive integer"; exit 1; }
if ! [[ "$VM_TIMEOUT" =~ ^[0-9]+$ ]] || ((VM_TIMEOUT < 300)); then
	log "VM_TIMEOUT=$VM_TIMEOUT: want seconds, at least 300"
	exit 1
fi
if [[ "${1:-}" == --judge-only ]]; then
	[[ -s "$RUN/qemu.status" ]] || { log "no finished run in $RUN to judge"; exit 1; }
else
	boot
fi
read -r qemu_rc elapsed load_before load_after <"$RUN/qemu.status"
# TCG slows down with the host's load: say so beside every verdict, since a
# timing-sensitive test can fail on a crowded host.
timing="VM ${elapsed}s, host load ${load_before:-?} -> ${load_after:-?} on $(nproc) cpus"

# --- did the VM boot, and is it what we claim? ------------------------------
clean_console="$RUN/console.txt"
tr -d '\r' <"$CONSOLE" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >"$clean_console"
marker() { grep -a -o "OOMSHIM-VM $1.*" "$clean_console" | head -n1 || true; }

if ((qemu_rc == 124 || qemu_rc == 137)); then
	section "guest console" "$clean_console" 40
	section "suite output" "$TEST_LOG" 80
	verdict FAIL "the VM hit its hard timeout of ${VM_TIMEOUT}s (VM_TIMEOUT); the guest hung or the suite is too slow ($timing)"
fi
if ((qemu_rc != 0)); then
	section "qemu stderr" "$RUN/qemu.err" 20
	section "guest console" "$clean_console" 40
	verdict FAIL "qemu exited with status $qemu_rc"
fi
if [[ -z "$(marker 'boot stage2')" ]]; then
	section "guest console" "$clean_console" 60
	verdict FAIL "the VM did not boot: init never reported stage 2"
fi
if [[ -n "$(marker error)" ]]; then
	section "guest console" "$clean_console" 40
	verdict FAIL "guest setup failed: $(marker error | sed 's/^OOMSHIM-VM error //')"
fi

# The honest-proof lines, echoed so every log of this lane shows them.
kernel_line="$(marker 'kernel ')"
cgroup_line="$(marker 'cgroupfs ')"
controllers_line="$(marker 'controllers ')"
log "guest: ${kernel_line#OOMSHIM-VM }"
log "guest: ${cgroup_line#OOMSHIM-VM }"
log "guest: ${controllers_line#OOMSHIM-VM }"
read -r _ _ guest_release _ <<<"$kernel_line"
if [[ -z "$kernel_line" || "$guest_release" != "$VM_KERNEL_RELEASE" ]]; then
	verdict FAIL "the guest did not report kernel $VM_KERNEL_RELEASE (got: ${kernel_line:-nothing})"
fi
read -r _ _ cg_path cg_type cg_magic _ <<<"$cgroup_line"
if [[ "$cg_path" != /sys/fs/cgroup || "$cg_type" != cgroup2 || "$cg_magic" != 0x63677270 ]]; then
	verdict FAIL "the guest did not prove cgroup2 at /sys/fs/cgroup (got: ${cgroup_line:-nothing})"
fi
for c in cpu memory pids; do
	[[ " ${controllers_line#OOMSHIM-VM controllers } " == *" $c "* ]] ||
		verdict FAIL "controller $c is not enabled for children (${controllers_line:-no controllers line})"
done

# --- the suite's outcome ------------------------------------------------------
if [[ -z "$(marker 'suite start')" ]]; then
	section "guest console" "$clean_console" 40
	verdict FAIL "the suite never started in the guest"
fi
if [[ ! -s "$SHARE/suite.rc" ]]; then
	section "guest console" "$clean_console" 40
	section "suite output" "$TEST_LOG" 80
	verdict FAIL "the suite did not finish (no exit code came back)"
fi
suite_rc="$(tr -dc 0-9 <"$SHARE/suite.rc")"
read -r _ _ _ console_rc suite_secs _ <<<"$(marker 'suite exit')"
if [[ "${console_rc:-}" != "$suite_rc" ]]; then
	verdict FAIL "exit codes disagree: share says $suite_rc, console says ${console_rc:-nothing}"
fi
timing="VM ${elapsed}s, suite ${suite_secs:-?}s, host load ${load_before:-?} -> ${load_after:-?} on $(nproc) cpus"

if [[ "$VM_SUITE" == bench ]]; then
	if [[ "$suite_rc" == 0 && -s "$SHARE/RESULTS.md" ]]; then
		verdict PASS "the benchmark ran on cgroup2, kernel $guest_release; report $SHARE/RESULTS.md ($timing)"
	fi
	section "benchmark output" "$TEST_LOG" 60
	report=missing
	[[ -s "$SHARE/RESULTS.md" ]] && report=written
	verdict FAIL "the benchmark's exit status $suite_rc, report $report ($timing)"
fi
if [[ "$suite_rc" == 0 ]]; then
	passed="$(grep -c -E '^--- PASS: ' "$TEST_LOG" || true)"
	if [[ "$VM_SUITE" == critest ]]; then
		# critest's own tally: "critest: N passed, N failed, N skipped".
		passed="$(grep -a -E '^critest: ' "$TEST_LOG" | tail -n1 | awk '{ print $2 }')"
		passed="${passed:-0}"
	fi
	skipped="$(grep -E '^--- SKIP: ' "$TEST_LOG" | awk '{ print $3 }' | paste -sd' ' || true)"
	if ((passed == 0)); then
		section "suite output" "$TEST_LOG" 40
		verdict FAIL "the suite exited 0 but no test passed (-test.run matched nothing?)"
	fi
	[[ -z "$skipped" ]] || log "skipped: $skipped"
	if [[ "$VM_SUITE" == critest ]]; then
		verdict PASS "$(grep -a -E '^critest: ' "$TEST_LOG" | tail -n1) on cgroup2, kernel $guest_release ($timing)"
	fi
	verdict PASS "$passed tests passed on cgroup2, kernel $guest_release ($timing)"
fi

# --- failure: which tests, and why ------------------------------------------
awk -v keep=15 -f "$HERE/failed-tests.awk" "$TEST_LOG" >"$RUN/failed-tests.txt" || true
failed="$(awk -v list=1 -f "$HERE/failed-tests.awk" "$TEST_LOG" | paste -sd' ' || true)"
if [[ -n "$failed" ]]; then
	printf '\n' >&2
	cat "$RUN/failed-tests.txt" >&2
	# TestMain's own verdicts (leaks after all tests, containerd trouble).
	grep -a -E '^integration: |^  - ' "$TEST_LOG" >"$RUN/testmain.txt" || true
	section "suite (TestMain) messages" "$RUN/testmain.txt" 30
else
	section "suite output" "$TEST_LOG" 80
fi
if grep -q '^panic: ' "$TEST_LOG"; then
	# The panic's header and the goroutines standing in test code.
	sed -n '/^panic: /,$p' "$TEST_LOG" |
		awk 'BEGIN { RS = ""; ORS = "\n\n" } NR == 1 || /_test\.go:/' | head -n 120 >"$RUN/panic.txt"
	section "panic" "$RUN/panic.txt" 120
fi
for clog in "$SHARE"/containerd-*.log; do
	[[ -f "$clog" ]] || continue
	# The shim's lines, as containerd copies them from the shim's log fifo:
	# tagged runtime=io.containerd.runc.v2 (except containerd's own "creating
	# task"), raw stderr such as a panic, and the delete action's output.
	shim_lines="$RUN/${clog##*/}.shim"
	awk '!/^time=/ || (/runtime=io\.containerd\.runc\.v2/ && !/msg="creating task"/) ||
		/warnings while cleaning up dead shim/' "$clog" >"$shim_lines"
	section "containerd log" "$clog" 60
	section "shim lines of the containerd log" "$shim_lines" 40
done
if grep -q '^panic: test timed out' "$TEST_LOG"; then
	verdict FAIL "the suite timed out (-test.timeout=${SUITE_TIMEOUT}s) in ${failed:-an unnamed test} ($timing)"
fi
verdict FAIL "suite exit status $suite_rc; failed: ${failed:-no test named (see the output above)} ($timing)"
