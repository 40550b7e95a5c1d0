#!/usr/bin/env bash
# demo.sh: show the shim at work under a private containerd v2.4.2.
#
#   scripts/demo.sh                       # what `make demo` runs
#   SHIM_BINARY=.tools/bin/ref/containerd-shim-runc-v2 scripts/demo.sh   # same with the reference
#   DEMO_SCENES="scene_oom" scripts/demo.sh                              # pick scenes
#
# It installs the pinned tools, builds the busybox test image, starts a
# containerd of its own in /run/oomshim-demo-XXXX (CRI disabled, our shim first
# on its PATH as containerd-shim-runc-v2), records `ctr events`, plays each
# scene, and on exit, however it exits, stops containerd and removes every
# directory, mount, cgroup and runc state it made.
#
# Adding a scene: write a function scene_<name> that uses `run_ctr`,
# `wait_for_event` and `show_events`, and append it to SCENES below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
[[ "$SHIM_BINARY" == /* ]] || SHIM_BINARY="$PWD/$SHIM_BINARY"
TOOLS_BIN="${TOOLS_BIN:-$ROOT/.tools/bin}"
IMAGE_TAR="${TEST_IMAGE_TAR:-$ROOT/.tools/images/busybox.tar}"
IMAGE="docker.io/library/busybox:latest"
NS="oomshim-demo"
SCENES=(${DEMO_SCENES:-scene_hello scene_oom})

DEMO_DIR=""
CONTAINERD_PID=""
EVENTS_PID=""

# ---------------------------------------------------------------- output
if [[ -t 1 ]]; then
	BOLD=$'\e[1m' DIM=$'\e[2m' GREEN=$'\e[32m' YELLOW=$'\e[33m' RED=$'\e[31m' CYAN=$'\e[36m' RESET=$'\e[0m'
else
	BOLD="" DIM="" GREEN="" YELLOW="" RED="" CYAN="" RESET=""
fi
banner() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$RESET"; }
step() { printf '%s-> %s%s\n' "$CYAN" "$*" "$RESET"; }
ok() { printf '%s   ok: %s%s\n' "$GREEN" "$*" "$RESET"; }
warn() { printf '%s   warning: %s%s\n' "$YELLOW" "$*" "$RESET"; }
die() {
	printf '%sdemo: %s%s\n' "$RED" "$*" "$RESET" >&2
	exit 1
}
indent() { sed 's/^/   | /'; }

# ---------------------------------------------------------------- setup
prepare() {
	banner "Preparing"
	[[ $(id -u) -eq 0 ]] || die "run as root (containers need root)"
	step "installing pinned tools (containerd, ctr, runc, reference shim, busybox-static)"
	"$ROOT/scripts/install-tools.sh" 2>&1 | indent
	step "building the busybox test image"
	"$ROOT/scripts/build-image.sh" 2>&1 | indent
	[[ -x "$SHIM_BINARY" ]] || die "no shim at $SHIM_BINARY: build it first (make build)"
	ok "shim under test: $SHIM_BINARY"
}

# run_ctr ARGS...: ctr against the demo's containerd and namespace, without
# its cgroup v1 deprecation warning.
run_ctr() {
	"$TOOLS_BIN/ctr" --address "$DEMO_DIR/c.sock" --namespace "$NS" "$@" 2> >(grep -v DEPRECATION >&2)
}

start_containerd() {
	banner "Starting a private containerd"
	DEMO_DIR="$(mktemp -d /run/oomshim-demo-XXXX)"
	# containerd refuses a shim socket_dir longer than 38 characters.
	((${#DEMO_DIR} + 2 <= 38)) || die "socket dir $DEMO_DIR/s is too long"
	mkdir -p "$DEMO_DIR/path" "$DEMO_DIR/tmp" "$DEMO_DIR/fifo"
	ln -s "$SHIM_BINARY" "$DEMO_DIR/path/containerd-shim-runc-v2"
	cat >"$DEMO_DIR/config.toml" <<EOF
version = 3
root = "$DEMO_DIR/root"
state = "$DEMO_DIR/state"
temp = "$DEMO_DIR/tmp"
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DEMO_DIR/c.sock"
[ttrpc]
  address = "$DEMO_DIR/c.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "$DEMO_DIR/s"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DEMO_DIR/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
EOF
	# The only difference from a stock containerd: which binary is
	# containerd-shim-runc-v2 on its PATH.
	(cd "$DEMO_DIR" && PATH="$DEMO_DIR/path:$TOOLS_BIN:$PATH" exec "$TOOLS_BIN/containerd" --config "$DEMO_DIR/config.toml") \
		>"$DEMO_DIR/containerd.log" 2>&1 &
	CONTAINERD_PID=$!
	local tries=0
	until run_ctr version >/dev/null 2>&1; do
		kill -0 "$CONTAINERD_PID" 2>/dev/null || { tail -n 20 "$DEMO_DIR/containerd.log" >&2; die "containerd exited"; }
		((++tries < 200)) || die "containerd not ready after 20s"
		sleep 0.1
	done
	ok "containerd $("$TOOLS_BIN/containerd" --version | awk '{print $3}') on $DEMO_DIR/c.sock (pid $CONTAINERD_PID)"
	step "importing $IMAGE"
	run_ctr images import "$IMAGE_TAR" 2>&1 | grep -v -e '^Importing' -e '^application/' | indent
}

start_events() {
	step "recording ctr events in the background"
	# exec: $! is ctr itself, so cleanup can stop it by its pid.
	(exec "$TOOLS_BIN/ctr" --address "$DEMO_DIR/c.sock" --namespace "$NS" events) >"$DEMO_DIR/events.log" 2>&1 &
	EVENTS_PID=$!
	# A subscription is live once it has seen an event: make one and wait.
	run_ctr namespaces label "$NS" oomshim-demo=ready
	wait_for_event "/namespaces/update" ""
}

# wait_for_event TOPIC WORD: wait (at most 10 s) until the events log holds
# a line with TOPIC that also contains WORD.
wait_for_event() {
	local topic="$1" word="$2" tries=0
	until grep -F -- " $topic " "$DEMO_DIR/events.log" 2>/dev/null | grep -qF -- "$word"; do
		((++tries < 100)) || { warn "no $topic event for '$word' within 10s"; return 0; }
		sleep 0.1
	done
}

# show_events WORD [MARK]: the recorded topics whose event mentions WORD, in
# order, with the fields that matter (ctr events prints: date time zone UTC ns
# topic json). With MARK=oom, the TaskOOM and TaskExit lines are flagged.
show_events() {
	local word="$1" mark="${2:-}"
	step "events seen by 'ctr events' for $word, in order:"
	grep -F -- "\"$word\"" "$DEMO_DIR/events.log" |
		awk '{
			topic = $6; json = $0; summary = ""
			n = split("container_id id key pid exit_status", keys, " ")
			for (i = 1; i <= n; i++)
				if (match(json, "\"" keys[i] "\":(\"[^\"]*\"|[0-9]+)")) {
					summary = summary " " substr(json, RSTART + 1, RLENGTH - 1)
					gsub(/":/, "=", summary)
				}
			if ((topic == "/tasks/exit" || topic == "/tasks/delete") && json !~ /"exit_status"/)
				summary = summary " exit_status=0"
			flag = ""
			if (mark == "oom" && topic == "/tasks/oom")
				flag = "   <== TaskOOM: the kernel OOM-killed a process of the container"
			if (mark == "oom" && topic == "/tasks/exit")
				flag = "   <== TaskExit"
			printf "   %s%-20s%s%s%s%s%s\n", bold, topic, reset, summary, yellow, flag, reset
		}' bold="$BOLD" reset="$RESET" yellow="$YELLOW" mark="$mark"
}

# ---------------------------------------------------------------- scenes
scene_hello() {
	banner "Scene: run a container to completion"
	local id="hello-$$"
	local script='echo "Hello from a busybox container."; echo "I am pid $$ in my own pid namespace."'
	step "ctr run --rm $IMAGE $id sh -c '$script'"
	run_ctr run --rm --fifo-dir "$DEMO_DIR/fifo" "$IMAGE" "$id" sh -c "$script" | indent
	ok "container $id exited and was removed"
	wait_for_event "/containers/delete" "$id"
	show_events "$id"
}

# scene_oom: a process that needs ten times its container's memory limit.
# The shim reports the kernel's OOM kill as TaskOOM, queued before the
# TaskExit it explains; the verdict is computed from the recorded events.
scene_oom() {
	banner "Scene: a container runs out of memory"
	local id="oom-$$" limit=$((20 << 20)) rc=0
	local -a cmd=(dd if=/dev/zero of=/dev/null bs=200M count=1)
	if awk '$1 == "SwapTotal:" && $2 > 0 {found = 1} END {exit !found}' /proc/meminfo; then
		# ctr has no swap-limit flag: dd may be swapped out instead of killed.
		warn "this host has swap and ctr cannot limit it; dd may swap instead of being OOM-killed"
	fi
	step "ctr run --rm --memory-limit $limit $IMAGE $id ${cmd[*]}"
	printf '   (a 200 MiB buffer in a container limited to %d MiB)\n' $((limit >> 20))
	run_ctr run --rm --fifo-dir "$DEMO_DIR/fifo" --memory-limit "$limit" "$IMAGE" "$id" "${cmd[@]}" 2>&1 | indent || rc=$?
	((rc == 137)) || die "container $id exited with status $rc, want 137 (OOM-killed)"
	ok "exit status 137: dd was killed (SIGKILL) by the kernel's OOM killer"
	wait_for_event "/containers/delete" "$id"
	show_events "$id" oom

	# Verdict from the recorded stream: exactly one /tasks/oom for the
	# container, and its line comes before the init's /tasks/exit.
	local verdict ooms oom_at exit_at
	verdict="$(awk -v id="$id" '
		index($0, "\"container_id\":\"" id "\"") == 0 { next }
		$6 == "/tasks/oom" { ooms++; if (!oom_at) oom_at = NR }
		$6 == "/tasks/exit" && index($0, "\"id\":\"" id "\"") && !exit_at { exit_at = NR }
		END { printf "%d %d %d\n", ooms, oom_at, exit_at }' "$DEMO_DIR/events.log")"
	read -r ooms oom_at exit_at <<<"$verdict"
	((exit_at > 0)) || die "no /tasks/exit recorded for $id"
	((ooms > 0)) || die "no /tasks/oom recorded for $id: the OOM kill was not reported"
	((ooms == 1)) || die "$ooms /tasks/oom events recorded for $id, want exactly one"
	((oom_at < exit_at)) || die "TaskOOM arrived AFTER TaskExit for $id (events log lines $oom_at and $exit_at)"
	printf '%s   TaskOOM arrived before TaskExit%s (one /tasks/oom, events log line %d; /tasks/exit, line %d)\n' \
		"$BOLD$GREEN" "$RESET" "$oom_at" "$exit_at"
}

# ---------------------------------------------------------------- cleanup
cleanup() {
	local rc=$?
	set +e
	banner "Cleaning up"
	[[ -n "$EVENTS_PID" ]] && kill "$EVENTS_PID" 2>/dev/null && wait "$EVENTS_PID" 2>/dev/null
	if [[ -n "$CONTAINERD_PID" ]]; then
		# Remove what is left of the scenes while containerd still runs.
		for c in $(run_ctr tasks ls -q 2>/dev/null); do run_ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1; run_ctr tasks delete -f "$c" >/dev/null 2>&1; done
		for c in $(run_ctr containers ls -q 2>/dev/null); do run_ctr containers delete "$c" >/dev/null 2>&1; done
		kill "$CONTAINERD_PID" 2>/dev/null
		wait "$CONTAINERD_PID" 2>/dev/null
		ok "containerd stopped"
	fi
	if [[ -n "$DEMO_DIR" && -d "$DEMO_DIR" ]]; then
		# Shims of this demo (there should be none) and their mounts.
		for pid in $(pgrep -f -- "-address $DEMO_DIR/c.sock" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
		awk -v d="$DEMO_DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
			while read -r m; do umount -l "$m"; done
		for d in $(find /sys/fs/cgroup -maxdepth 5 -type d -name "$NS" 2>/dev/null); do
			find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
			rmdir "$d" 2>/dev/null
		done
		rmdir "/run/containerd/runc/$NS" 2>/dev/null
		if [[ $rc -ne 0 && -f "$DEMO_DIR/containerd.log" ]]; then
			cp "$DEMO_DIR/containerd.log" "/tmp/oomshim-demo-containerd.log" &&
				warn "containerd log kept at /tmp/oomshim-demo-containerd.log"
		fi
		rm -rf "$DEMO_DIR"
		ok "removed $DEMO_DIR"
	fi
	exit $rc
}

main() {
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	prepare
	start_containerd
	start_events
	for scene in "${SCENES[@]}"; do
		"$scene"
	done
}

main "$@"
