package integration

import (
	"oomshim/testkit"

	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/cgroups/v3"
	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
)

// oomLimit is the memory limit, and the memory+swap limit, of the OOM
// tests' containers. Measured: 20 MiB OOM-kills oomHog.
const oomLimit = 20 << 20

// oomHogShell is oomHog for `sh -c`: dd's 200 MiB buffer is ten times the
// limit, and reading /dev/zero into it faults every page in.
const oomHogShell = "dd if=/dev/zero of=/dev/null bs=200M count=1"

var oomHog = strings.Fields(oomHogShell)

// memoryCgroups is how this machine limits a container's memory, as runc
// (and containerd/cgroups, whose Mode() decides it) will see it.
type memoryCgroups struct {
	mode      string // for the log
	unified   bool   // cgroup v2: Metrics are io.containerd.cgroups.v2.Metrics
	swapLimit bool   // the spec may set memory.swap (runc would fail otherwise)
	missing   string // why no OOM can be forced here, or ""
}

var (
	memOnce sync.Once
	memInfo memoryCgroups
)

// detectMemoryCgroups decides the cgroup mode the way containerd does
// (cgroups.Mode: unified, hybrid or legacy). On cgroup v1 (legacy or hybrid:
// runc uses v1 for every controller then) a swap limit needs the
// memory.memsw.* files, which exist only with swap accounting; without them
// runc's create would fail on spec.memory.swap. On cgroup v2 runc writes
// memory.swap.max = 0 for swap == limit and ignores a missing file itself.
// Either way a host with swap but no way to limit it cannot be forced to
// OOM (dd would swap), and that is a missing prerequisite.
func detectMemoryCgroups() memoryCgroups {
	switch cgroups.Mode() {
	case cgroups.Unified:
		m := memoryCgroups{mode: "cgroup v2 (unified)", unified: true, swapLimit: true}
		data, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		switch {
		case err != nil:
			m.missing = fmt.Sprintf("cgroup v2: %v", err)
		case !slices.Contains(strings.Fields(string(data)), "memory"):
			m.missing = "cgroup v2 without the memory controller (/sys/fs/cgroup/cgroup.controllers)"
		case hostHasSwap() && !v2SwapController():
			m.missing = "swap is on but cgroup v2 has no swap controller (no memory.swap.max): an OOM kill cannot be forced"
		}
		return m
	case cgroups.Legacy, cgroups.Hybrid:
		m := memoryCgroups{mode: "cgroup v1 (legacy)"}
		if cgroups.Mode() == cgroups.Hybrid {
			m.mode = "cgroup v1 memory controller (hybrid hierarchy)"
		}
		mnt := v1ControllerMount("memory")
		if mnt == "" {
			m.missing = "no cgroup v1 memory hierarchy is mounted"
			return m
		}
		_, err := os.Stat(filepath.Join(mnt, "memory.memsw.limit_in_bytes"))
		m.swapLimit = err == nil
		if !m.swapLimit && hostHasSwap() {
			m.missing = "swap is on but the kernel has no swap accounting (no memory.memsw.limit_in_bytes; boot with swapaccount=1): an OOM kill cannot be forced"
		}
		return m
	}
	return memoryCgroups{mode: "none", missing: "no cgroup hierarchy is mounted"}
}

// requireOOM skips the test (fails it under REQUIRE_INTEGRATION=1) unless
// containers can be made to run out of memory here.
func requireOOM(t *testing.T) memoryCgroups {
	t.Helper()
	requireHarness(t)
	memOnce.Do(func() { memInfo = detectMemoryCgroups() })
	if memInfo.missing != "" {
		if os.Getenv("REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("OOM prerequisites missing (REQUIRE_INTEGRATION=1): %s", memInfo.missing)
		}
		t.Skipf("SKIP OOM test: %s (set REQUIRE_INTEGRATION=1 to fail instead)", memInfo.missing)
	}
	return memInfo
}

// hostHasSwap reports whether any swap is configured (SwapTotal > 0).
func hostHasSwap() bool {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "SwapTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			return err == nil && kb > 0
		}
	}
	return false
}

// v2SwapController reports whether cgroup v2 has memory.swap.max, which
// only non-root cgroups carry: look in this process's cgroup and in the
// root's children.
func v2SwapController() bool {
	dirs := testkit.Subdirs("/sys/fs/cgroup")
	if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rel, ok := strings.CutPrefix(line, "0::"); ok && rel != "/" {
				dirs = append([]string{filepath.Join("/sys/fs/cgroup", rel)}, dirs...)
			}
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
			return true
		}
	}
	return false
}

// v1ControllerMount is the mount point of the cgroup v1 hierarchy that
// carries controller, or "".
func v1ControllerMount(controller string) string {
	for _, m := range testkit.Mounts() {
		if m.FSType == "cgroup" && slices.Contains(m.Super, controller) {
			return m.Point
		}
	}
	return ""
}

// oomSpec runs args with the memory limit and, where it can be set, a
// memory+swap limit equal to it, so the process cannot escape into swap.
func oomSpec(mem memoryCgroups, args ...string) []oci.SpecOpts {
	opts := []oci.SpecOpts{oci.WithProcessArgs(args...), oci.WithMemoryLimit(oomLimit)}
	if mem.swapLimit {
		opts = append(opts, oci.WithMemorySwap(oomLimit))
	}
	return opts
}

// oomContainer creates a container running args under the OOM limits;
// extra spec options (annotations, ...) are applied too.
func (te *testEnv) oomContainer(mem memoryCgroups, id string, args []string, extra ...oci.SpecOpts) client.Container {
	te.t.Helper()
	return te.containerWith(id, nil, append(oomSpec(mem, args...), extra...)...)
}

// oomJudgement is what the recorded events say about one process that
// was (or was not) OOM-killed, and the TaskOOM events of its container.
type oomJudgement struct {
	container, process string
	ooms               int    // TaskOOM events of the container
	firstOOM           int    // index of the first one, -1 if none
	exits              int    // TaskExit events of the process
	exit               int    // index of its first TaskExit, -1 if none
	exitStatus         uint32 // status in that TaskExit
	start              int    // index of its TaskStart or TaskExecStarted, -1 if none
}

// judgeOOMs judges every container of procs (container ID -> the process
// ID, exec ID or the container ID for the init, whose TaskExit counts) in
// one pass over events. Task events of other containers are returned as
// strays.
func judgeOOMs(events []recordedEvent, procs map[string]string) (map[string]*oomJudgement, []recordedEvent) {
	out := make(map[string]*oomJudgement, len(procs))
	for c, p := range procs {
		out[c] = &oomJudgement{container: c, process: p, firstOOM: -1, exit: -1, start: -1}
	}
	var strays []recordedEvent
	for i, e := range events {
		if !strings.HasPrefix(e.Topic, "/tasks/") {
			continue
		}
		j := out[containerOf(e)]
		if j == nil {
			strays = append(strays, e)
			continue
		}
		switch ev := e.Event.(type) {
		case *eventstypes.TaskOOM:
			j.ooms++
			if j.firstOOM < 0 {
				j.firstOOM = i
			}
		case *eventstypes.TaskStart:
			if j.process == j.container && j.start < 0 {
				j.start = i
			}
		case *eventstypes.TaskExecStarted:
			if ev.ExecID == j.process && j.start < 0 {
				j.start = i
			}
		case *eventstypes.TaskExit:
			if ev.ID != j.process {
				continue
			}
			j.exits++
			if j.exit < 0 {
				j.exit, j.exitStatus = i, ev.ExitStatus
			}
		}
	}
	return out, strays
}

func judgeOOM(events []recordedEvent, container, process string) *oomJudgement {
	js, _ := judgeOOMs(events, map[string]string{container: process})
	return js[container]
}

// problems lists what is wrong for a process that was OOM-killed with the
// given exit status: it must have exactly one TaskExit with that status and
// its container exactly one TaskOOM, published before that TaskExit.
func (j *oomJudgement) problems(wantStatus uint32) []string {
	var out []string
	switch {
	case j.exits == 0:
		out = append(out, fmt.Sprintf("no TaskExit for %s", j.process))
	case j.exits > 1:
		out = append(out, fmt.Sprintf("%d TaskExit events for %s, want one", j.exits, j.process))
	}
	if j.exits > 0 && j.exitStatus != wantStatus {
		out = append(out, fmt.Sprintf("TaskExit of %s has status %d, want %d", j.process, j.exitStatus, wantStatus))
	}
	switch {
	case j.ooms == 0:
		out = append(out, fmt.Sprintf("no TaskOOM for container %s", j.container))
	case j.ooms > 1:
		out = append(out, fmt.Sprintf("%d TaskOOM events for container %s, want exactly one", j.ooms, j.container))
	}
	if j.firstOOM >= 0 && j.exit >= 0 && j.firstOOM > j.exit {
		out = append(out, fmt.Sprintf("TaskOOM (event #%d) published after the TaskExit of %s (event #%d)", j.firstOOM, j.process, j.exit))
	}
	return out
}

// expectOneOOMBefore fails the test unless the container has exactly one
// TaskOOM, published before the one TaskExit (status wantStatus) of
// process. The failure shows the container's task events and what
// containerd and the shim logged about it.
func (te *testEnv) expectOneOOMBefore(rec *recorder, events []recordedEvent, container, process string, wantStatus uint32) {
	te.t.Helper()
	if probs := judgeOOM(events, container, process).problems(wantStatus); len(probs) > 0 {
		te.t.Errorf("%s\n  task events of %s: %s\n%s", strings.Join(probs, "\n"), container,
			rec.summary(eventsOf(events, container)), te.logExcerpt(container, 40))
	}
}

// eventsOf keeps the task events that name container.
func eventsOf(events []recordedEvent, container string) []recordedEvent {
	var out []recordedEvent
	for _, e := range taskEvents(events) {
		if containerOf(e) == container {
			out = append(out, e)
		}
	}
	return out
}

// countOOMs counts the TaskOOM events of any container.
func countOOMs(events []recordedEvent) int {
	n := 0
	for _, e := range events {
		if _, ok := e.Event.(*eventstypes.TaskOOM); ok {
			n++
		}
	}
	return n
}

// logExcerpt returns the last n lines containerd logged since the test
// began that mention word (a container ID) as a whole word; the shim logs
// into containerd's log at debug level.
func (te *testEnv) logExcerpt(word string, n int) string {
	lines, err := te.logLinesNaming(word, n)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("  containerd/shim log lines naming %s (last %d):\n    %s", word, len(lines), strings.Join(lines, "\n    "))
}

// logLinesNaming returns the last n lines of containerd's log since the
// test began that mention word as a whole word.
func (te *testEnv) logLinesNaming(word string, n int) ([]string, error) {
	f, err := os.Open(te.h.LogPath)
	if err != nil {
		return nil, fmt.Errorf("(no containerd log: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(te.logStart, 0); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
		if l := sc.Text(); mentions(l, word) {
			lines = append(lines, l)
			if len(lines) > 2*n {
				lines = append([]string(nil), lines[len(lines)-n:]...)
			}
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, sc.Err()
}

// mentions reports whether line contains word not followed or preceded by
// an ID character (so oom-r1-c1 does not match oom-r1-c10).
func mentions(line, word string) bool {
	isID := func(b byte) bool {
		return b == '-' || b == '_' || b == '.' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
	}
	for off := 0; ; {
		i := strings.Index(line[off:], word)
		if i < 0 {
			return false
		}
		i += off
		end := i + len(word)
		if (i == 0 || !isID(line[i-1])) && (end == len(line) || !isID(line[end])) {
			return true
		}
		off = i + 1
	}
}

// oomKills decodes a task's Metrics: memory_oom_control.oom_kill on cgroup
// v1, memory_events.oom_kill on v2.
func oomKills(mem memoryCgroups, m *types.Metric) (uint64, error) {
	if m == nil || m.Data == nil {
		return 0, fmt.Errorf("no metrics data")
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return 0, fmt.Errorf("decode %s: %w", m.Data.GetTypeUrl(), err)
	}
	switch s := v.(type) {
	case *stats1.Metrics:
		if mem.unified {
			return 0, fmt.Errorf("cgroup v1 metrics on a cgroup v2 host: %v", s)
		}
		if s.MemoryOomControl == nil {
			return 0, fmt.Errorf("cgroup v1 metrics without memory_oom_control: %v", s)
		}
		return s.MemoryOomControl.OomKill, nil
	case *stats2.Metrics:
		if !mem.unified {
			return 0, fmt.Errorf("cgroup v2 metrics on a cgroup v1 host: %v", s)
		}
		if s.MemoryEvents == nil {
			return 0, fmt.Errorf("cgroup v2 metrics without memory_events: %v", s)
		}
		return s.MemoryEvents.OomKill, nil
	}
	return 0, fmt.Errorf("unexpected metrics type %T (%s)", v, m.Data.GetTypeUrl())
}
