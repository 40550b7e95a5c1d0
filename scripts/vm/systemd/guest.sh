#!/bin/bash
# guest.sh: runs inside the systemd VM as the oneshot unit oomshim-lane
# (scripts/vm/systemd/build-image.sh installs it). Prints the lane's proof
# line, runs the smoke set against containerd with the systemd cgroup driver,
# writes everything to the 9p share and powers the VM off.
#
# Every line the host parses starts with "OOMSHIM-SYSTEMD " on the console.
set -u
say() { echo "OOMSHIM-SYSTEMD $*" >/dev/ttyS0; echo "OOMSHIM-SYSTEMD $*"; }
finish() {
	sync
	systemctl poweroff --no-block
	exit 0
}

modprobe 9pnet_virtio && modprobe 9p && mkdir -p /share &&
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none results /share ||
	{ say "error mount the 9p share"; finish; }
exec >/share/lane.log 2>&1

# The proof line: every value read from the running system.
version="$(systemctl --version | awk 'NR == 1 { print $2 }')"
pid1="$(cat /proc/1/comm)"
fstype="$(stat -f -c %T /sys/fs/cgroup)"
[[ "$fstype" == cgroup2fs ]] && fstype=cgroup2
config=/oomshim/containerd.toml
driver="$(awk -F' *= *' '$1 ~ /SystemdCgroup/ { print $2 }' "$config" | head -1)"
say "systemd-lane: systemd $version pid1=$pid1 $fstype SystemdCgroup=$driver"

export PATH=/oomshim/path:/oomshim/bin:$PATH
containerd --config "$config" >/share/containerd.log 2>&1 &
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

# 3. No scope of a container is left; the slice the containers were put in
#    (kubelet's pod slice, here the lane's own) stops once it is empty.
left="$(systemctl list-units --all --no-legend --type=scope | grep -c oomshim)"
[[ "$left" == 0 ]]
check "no-scopes-left" $? "$(systemctl list-units --all --no-legend --type=scope | grep oomshim | paste -sd' ')"
systemctl stop oomshim.slice
left="$(systemctl list-units --all --no-legend --type=slice | grep -c oomshim)"
[[ "$left" == 0 ]]
check "slice-stopped" $? "$(systemctl list-units --all --no-legend --type=slice | grep oomshim | paste -sd' ')"

dmesg >/share/dmesg.log 2>&1
journalctl -b --no-pager -o short-precise >/share/journal.log 2>&1
say "result failures=$failures"
echo "$failures" >/share/failures
finish
