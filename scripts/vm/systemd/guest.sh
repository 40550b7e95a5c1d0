#!/bin/bash
# guest.sh: runs inside the systemd VM as the oneshot unit oomshim-lane
# (/oomshim/boot.sh mounts the 9p share at /share and runs this from
# /share/in, where lane.sh put it with the shim, integration.test, the test
# image and params.env). Prints the lane's proof line and the boot time,
# runs the smoke set against containerd with the systemd cgroup driver,
# then the integration suite with TEST_CGROUP_DRIVER=systemd; writes
# everything to the share and powers the VM off.
#
# Every line the host parses starts with "OOMSHIM-SYSTEMD " on the console:
#   systemd-lane: systemd <version> pid1=<comm> <cgroupfs> SystemdCgroup=<value>
#   boot kernel+initrd <s> userspace <s> unit <s>
#   check <name> ok|FAIL <why>
#   result failures=<n>
#   suite start|exit <code> <seconds>
set -u
say() { echo "OOMSHIM-SYSTEMD $*" >/dev/ttyS0; echo "OOMSHIM-SYSTEMD $*"; }
finish() {
	dmesg >/share/dmesg.log 2>&1
	journalctl -b --no-pager -o short-monotonic >/share/journal.log 2>&1
	sync
	systemctl poweroff --no-block
	exit 0
}
exec >/share/lane.log 2>&1

# Boot time: the manager's monotonic timestamps (microseconds since the
# kernel started) and the uptime now, when the lane's unit runs.
unit_at="$(cut -d' ' -f1 /proc/uptime)"
usec() { systemctl show -p "$1" --value; }
initrd="$(usec InitRDTimestampMonotonic)" userspace="$(usec UserspaceTimestampMonotonic)"
say "$(awk -v i="$initrd" -v u="$userspace" -v n="$unit_at" 'BEGIN {
	printf "boot kernel+initrd %.1fs userspace %.1fs unit %.1fs", u / 1e6, n - u / 1e6, n }')"
systemctl list-units --no-legend --plain --state=active >/share/units.txt 2>&1

# The proof line: every value read from the running system.
version="$(systemctl --version | awk 'NR == 1 { print $2 }')"
pid1="$(cat /proc/1/comm)"
fstype="$(stat -f -c %T /sys/fs/cgroup)"
[[ "$fstype" == cgroup2fs ]] && fstype=cgroup2
config=/oomshim/containerd.toml
cat >"$config" <<'TOML'
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
driver="$(awk -F' *= *' '$1 ~ /SystemdCgroup/ { print $2 }' "$config" | head -1)"
say "systemd-lane: systemd $version pid1=$pid1 $fstype SystemdCgroup=$driver"

SUITE=integration CYCLES=100 TEST_RUN='' TEST_TIMEOUT=20m
# shellcheck disable=SC1091 # written by lane.sh at each run
. /share/in/params.env
mkdir -p /oomshim/path /oomshim/integration
install -m 0755 /share/in/containerd-shim-runc-v2 /oomshim/path/
install -m 0755 /share/in/integration.test /oomshim/integration/
install -m 0644 /share/in/busybox.tar /oomshim/busybox.tar
# The suite's loop-mounted ext4 rootfs; overlay for the snapshotter.
for m in overlay loop ext4; do modprobe "$m"; done

# --- the smoke set ----------------------------------------------------------
export PATH=/oomshim/path:/oomshim/bin:$PATH
containerd --config "$config" >/share/containerd.log 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do [[ -S /run/oomshim/c.sock ]] && break; sleep 0.1; done
ctr() { command ctr --address /run/oomshim/c.sock --namespace lane "$@"; }
ctr images import /oomshim/busybox.tar >/dev/null || { say "error import the test image"; finish; }
image=docker.io/library/busybox:latest

OOM_ROUNDS=10
failures=0
check() { # check NAME COND-EXIT-STATUS MESSAGE
	if [[ "$2" == 0 ]]; then say "check $1 ok"; else say "check $1 FAIL $3"; failures=$((failures + 1)); fi
}

ctr events >/share/events.log 2>&1 &
events=$!
sleep 1

# 1. A container runs in a transient scope of its own, under the slice asked for.
ctr run -d --runc-systemd-cgroup --cgroup "oomshim.slice:oomshim:sleeper" "$image" sleeper sleep 1000
pid="$(ctr task ls | awk '$1 == "sleeper" { print $2 }')"
cg="$(cat "/proc/$pid/cgroup" 2>/dev/null)"
[[ "$cg" == "0::/oomshim.slice/oomshim-sleeper.scope" ]]
check scope $? "cgroup of the container: $cg"
ctr task kill -s KILL sleeper
ctr task delete sleeper >/dev/null 2>&1 || { sleep 1; ctr task delete sleeper >/dev/null; }
ctr container delete sleeper

# 2. OOM-killed containers: exit 137, one TaskOOM before the TaskExit, though
#    systemd collects the scope as soon as its only process is gone.
for i in $(seq "$OOM_ROUNDS"); do
	id="oom$i"
	ctr run --rm --runc-systemd-cgroup --cgroup "oomshim.slice:oomshim:$id" --memory-limit 20971520 \
		"$image" "$id" dd if=/dev/zero of=/dev/null bs=200M count=1
	rc=$?
	[[ $rc == 137 ]]
	check "$id-exit" $? "exit status $rc"
done
sleep 1
kill "$events"
for i in $(seq "$OOM_ROUNDS"); do
	id="oom$i"
	# ctr events: <time: 4 fields> <namespace> <topic> <event as JSON>
	order="$(grep -E "/tasks/(oom|exit) .*\"container_id\":\"$id\"" /share/events.log | awk '{ print $6 }' | paste -sd, -)"
	[[ "$order" == "/tasks/oom,/tasks/exit" ]]
	check "$id-events" $? "events: ${order:-none}"
done
# How many of those the shim could only see on the slice: the scope was
# gone before its final read (oom/parent.go).
say "oom kills seen on the parent slice: $(grep -c 'seen on its parent' /share/containerd.log)"

# 3. No scope of a container is left; the slice the containers were put in
#    (kubelet's pod slice, here the lane's own) stops once it is empty.
left="$(systemctl list-units --all --no-legend --type=scope | grep -c oomshim)"
[[ "$left" == 0 ]]
check "no-scopes-left" $? "$(systemctl list-units --all --no-legend --type=scope | grep oomshim | paste -sd' ')"
systemctl stop oomshim.slice
left="$(systemctl list-units --all --no-legend --type=slice | grep -c oomshim)"
[[ "$left" == 0 ]]
check "slice-stopped" $? "$(systemctl list-units --all --no-legend --type=slice | grep oomshim | paste -sd' ')"
kill "$containerd_pid"
wait "$containerd_pid"
say "result failures=$failures"
echo "$failures" >/share/failures
[[ "$SUITE" == smoke ]] && finish

# --- the integration suite --------------------------------------------------
export CYCLES TEST_CGROUP_DRIVER=systemd REQUIRE_INTEGRATION=1 HOME=/root TMPDIR=/tmp
export SHIM_BINARY=/oomshim/path/containerd-shim-runc-v2 TOOLS_BIN=/oomshim/bin TEST_IMAGE_TAR=/oomshim/busybox.tar
# criu is in the image: the checkpoint tests fail rather than skip; the
# test across shims restores under containerd's own shim.
mkdir -p /oomshim/ref
install -m 0755 /share/in/ref-shim /oomshim/ref/containerd-shim-runc-v2
export REQUIRE_CRIU=1 REF_SHIM_BINARY=/oomshim/ref/containerd-shim-runc-v2
# The daemons' directories on ext4, not /run's tmpfs: 6.1 can idmap ext4
# (user-namespace pods) but not tmpfs.
export TESTKIT_BASE_DIR=/srv
mkdir -p "$TESTKIT_BASE_DIR"
set -- -test.v -test.count=1 "-test.timeout=$TEST_TIMEOUT"
[[ -n "$TEST_RUN" ]] && set -- "$@" "-test.run=$TEST_RUN"
say "suite start CYCLES=$CYCLES timeout=$TEST_TIMEOUT run=${TEST_RUN:-all}"
start=$SECONDS
cd /oomshim/integration && ./integration.test "$@" >/share/test.log 2>&1
rc=$?
for log in /tmp/oomshim-containerd-*.log "$TESTKIT_BASE_DIR"/oomshim-test-*/containerd.log; do
	[[ -f "$log" ]] && cp "$log" "/share/containerd-$(echo "$log" | tr / _ | sed 's/^_//')"
done
echo "$rc" >/share/suite.rc
say "suite exit $rc $((SECONDS - start))"
finish
