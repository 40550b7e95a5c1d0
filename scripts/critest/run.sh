#!/usr/bin/env bash
# run.sh: cri-tools' critest against a private containerd (CRI, CNI, NRI on)
# whose runc shim is ours ($SHIM_BINARY), all inside a network namespace and
# an IPC namespace of its own: the CNI bridge, the pods, the loopback
# registry serving stand-in images, and critest's clients never reach
# beyond it (critest's ipcmk segments die with the IPC namespace).
#
# Prints critest's output, then as its last line:
#   critest: N passed, N failed, N skipped
# and exits non-zero on any failure. Needs root and scripts/critest/install.sh.
#
# Environment: SHIM_BINARY (default <repo>/bin/containerd-shim-runc-v2),
# TOOLS_DIR, CRITEST_FOCUS / CRITEST_SKIP (extra ginkgo regexps),
# CRITEST_LOG (where to keep the run's logs, default .tools/critest/log),
# CRITEST_NETNS=0 (no network namespace of its own: in the cgroup v2 VM,
# which has no network device and is one already).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
DIR="$TOOLS_DIR/critest"
SHIM_BINARY="${SHIM_BINARY:-$ROOT/bin/containerd-shim-runc-v2}"
LOGDIR="${CRITEST_LOG:-$DIR/log}"
# The one spec that pulls an image by its upstream digest, which no locally
# built image can have.
SKIP='public image with digest should be pulled and removed'

log() { printf '[critest] %s\n' "$*" >&2; }

if [[ "${1:-}" != --inner ]]; then
	[[ $(id -u) -eq 0 ]] || { log "needs root"; exit 1; }
	for f in "$DIR/bin/critest" "$DIR/bin/runc" "$DIR/bin/criregistry" "$DIR/images/index.json" "$TOOLS_DIR/bin/containerd" "$SHIM_BINARY"; do
		[[ -e "$f" ]] || { log "$f missing: run scripts/critest/install.sh (and make build)"; exit 1; }
	done
	if [[ "${CRITEST_NETNS:-1}" == 0 ]]; then
		rm -rf "$LOGDIR"
		mkdir -p "$LOGDIR"
		exec unshare --ipc --fork -- "$0" --inner
	fi
	ns="oomshim-critest-$$"
	# CRI puts pods under the cgroup parent k8s.io; the ones this run
	# creates are removed after it, and no other.
	cgroups_before="$(find /sys/fs/cgroup -maxdepth 3 -type d -name k8s.io 2>/dev/null || true)"
	outer_cleanup() {
		ip netns del "$ns" 2>/dev/null || true
		local d
		for d in $(find /sys/fs/cgroup -maxdepth 3 -type d -name k8s.io 2>/dev/null || true); do
			grep -qxF "$d" <<<"$cgroups_before" && continue
			find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || log "cgroup $d not removed: still in use"
		done
	}
	ip netns add "$ns"
	trap outer_cleanup EXIT
	rm -rf "$LOGDIR"
	mkdir -p "$LOGDIR"
	set +e
	# nsenter, not `ip netns exec`, which remounts /sys and so hides the
	# cgroup mounts from runc.
	nsenter --net="/run/netns/$ns" -- unshare --ipc --fork -- "$0" --inner
	rc=$?
	set -e
	exit "$rc"
fi

# --- inside the namespaces ------------------------------------------------
base="$(mktemp -d /run/oomshim-critest-XXXXXX)"
chmod 0711 "$base"
pids=()
cleanup() {
	local rc=$?
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	# Shims and containers that outlived containerd, if any.
	local p
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "containerd-shim-runc-v2 .*-address $base/c.sock"; then
			kill -KILL "${p#/proc/}" 2>/dev/null || true
		fi
	done
	if [[ -d /run/containerd/runc/k8s.io ]]; then
		for c in $(ls /run/containerd/runc/k8s.io 2>/dev/null); do
			"$DIR/bin/runc" --root /run/containerd/runc/k8s.io delete --force "$c" >/dev/null 2>&1 || true
		done
	fi
	{ grep " $base/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	cp "$base/containerd.log" "$LOGDIR/" 2>/dev/null || true
	rm -rf "$base"
	exit "$rc"
}
trap cleanup EXIT

ip link set lo up

# On a cgroup v2 machine where this runs in the root cgroup (the VM),
# containerd would find no memory.swap.max of its own and leave swap out of
# every container's spec: run it in a cgroup below the root, as on a node
# (system.slice/containerd.service). Never on a machine with cgroups of its
# own (the host is hybrid).
if [[ -f /sys/fs/cgroup/cgroup.controllers && "$(cat /proc/self/cgroup)" == "0::/" ]]; then
	mkdir -p /sys/fs/cgroup/oomshim-critest
	echo $$ >/sys/fs/cgroup/oomshim-critest/cgroup.procs
fi

mkdir -p "$base/path" "$base/cni" "$base/certs.d/_default"
ln -s "$SHIM_BINARY" "$base/path/containerd-shim-runc-v2"
cat >"$base/certs.d/_default/hosts.toml" <<TOML
# Every registry is mirrored by the loopback stand-in registry.
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
TOML
cat >"$base/cni/10-critest.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "critest",
  "plugins": [
    {"type": "bridge", "bridge": "cni-critest0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$base/ipam",
              "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
cat >"$base/config.toml" <<TOML
# containerd for critest (generated by scripts/critest/run.sh)
version = 3
root = "$base/root"
state = "$base/state"
temp = "$base/tmp"

[grpc]
  address = "$base/c.sock"
[ttrpc]
  address = "$base/c.sock.ttrpc"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "$base/s"
[plugins."io.containerd.internal.v1.opt"]
  path = "$base/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "$base/nri.sock"

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$base/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here may lack CAP_SYS_RESOURCE: never lower an oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$DIR/cni/bin"]
    conf_dir = "$base/cni"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML

"$DIR/bin/criregistry" -dir "$DIR/images" -addr 127.0.0.1:5000 >"$LOGDIR/registry.log" 2>&1 &
pids+=($!)
PATH="$base/path:$DIR/bin:$TOOLS_DIR/bin:$PATH" "$TOOLS_DIR/bin/containerd" --config "$base/config.toml" >"$base/containerd.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
	[[ -S "$base/c.sock" && -S "$base/nri.sock" ]] && break
	sleep 0.1
done
[[ -S "$base/c.sock" ]] || { log "containerd did not start:"; tail -20 "$base/containerd.log" >&2; exit 1; }
log "containerd $("$TOOLS_DIR/bin/containerd" --version | awk '{print $3}'), shim $SHIM_BINARY, runc $("$DIR/bin/runc" --version | sed -n 1p | awk '{print $3}') (seccomp)"

skip="$SKIP${CRITEST_SKIP:+|$CRITEST_SKIP}"
args=(-runtime-endpoint "unix://$base/c.sock" -image-endpoint "unix://$base/c.sock"
	-nri-socket "$base/nri.sock" -ginkgo.no-color -ginkgo.skip "$skip"
	-ginkgo.json-report "$LOGDIR/report.json")
[[ -n "${CRITEST_FOCUS:-}" ]] && args+=(-ginkgo.focus "$CRITEST_FOCUS")
set +e
(cd "$LOGDIR" && "$DIR/bin/critest" "${args[@]}") 2>&1 | tee "$LOGDIR/critest.log"
rc=${PIPESTATUS[0]}
set -e
# Every spec that did not pass, and why (skipped ones included).
if [[ -f "$LOGDIR/report.json" ]]; then
	"$DIR/bin/ginkgoreport" "$LOGDIR/report.json" | sort >"$LOGDIR/not-passed.txt"
	if [[ -n "${CRITEST_FOCUS:-}" ]]; then
		grep -v '^skipped: ' "$LOGDIR/not-passed.txt" || true # the unfocused are noise
	else
		cat "$LOGDIR/not-passed.txt"
	fi
fi
# ginkgo's summary: "SUCCESS! -- 124 Passed | 0 Failed | 0 Pending | 18 Skipped"
summary="$(grep -E '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$LOGDIR/critest.log" | tail -1)"
if [[ -z "$summary" ]]; then
	echo "critest: 0 passed, 1 failed, 0 skipped"
	exit 1
fi
read -r passed failed pending skipped < <(sed -E 's/.* ([0-9]+) Passed \| ([0-9]+) Failed \| ([0-9]+) Pending \| ([0-9]+) Skipped.*/\1 \2 \3 \4/' <<<"$summary")
echo "critest: $passed passed, $failed failed, $skipped skipped"
if ((rc != 0 || failed != 0)); then
	exit 1
fi
