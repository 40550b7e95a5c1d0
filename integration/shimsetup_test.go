package integration

import (
	"oomshim/testkit"

	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// TestConcurrentStartActions: 20 `start` actions at once for one shim
// group leave exactly one server, listening on the socket all of them
// named (none unlinked by another).
func TestConcurrentStartActions(t *testing.T) {
	te := newTestEnv(t)
	const id = "crowd"
	dir, logBuf := te.handBundle(id, minimalSpec("true"))
	s := &handShim{te: te, id: id, bundle: dir, log: logBuf}
	t.Cleanup(s.cleanup)
	params := te.bootstrapParams(id)
	addresses := make([]string, 20)
	var wg sync.WaitGroup
	for i := range addresses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := te.runShim(dir, params, te.startFlags(id)...)
			if err != nil {
				t.Errorf("start %d: %v", i, err)
				return
			}
			var res bootapi.BootstrapResult
			if err := proto.Unmarshal(out, &res); err != nil {
				t.Errorf("start %d printed %q: %v", i, out, err)
				return
			}
			addresses[i] = res.Address
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, a := range addresses[1:] {
		if a != addresses[0] {
			t.Fatalf("starts named different addresses: %v", addresses)
		}
	}
	var servers []shimProc
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && p.ID == id {
			servers = append(servers, p)
		}
	}
	if len(servers) != 1 {
		t.Fatalf("%d shim servers for one group, want 1: %v", len(servers), servers)
	}
	s.address = addresses[0]
	s.dial()
	if pid := int(s.connect().ShimPid); pid != servers[0].PID {
		t.Fatalf("the socket file leads to pid %d, the server is %d", pid, servers[0].PID)
	}
	checkConnectAndShutdown(t, s)
}

// TestShimOOMScore: the kernel kills a shim before containerd: the
// server's oom_score_adj is containerd's + 1.
func TestShimOOMScore(t *testing.T) {
	te := newTestEnv(t)
	te.startTask(te.container("scored", "sleep", "1000"), te.io(nil, io.Discard, io.Discard))
	read := func(pid int) int {
		t.Helper()
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := min(read(te.h.PID())+1, 1000)
	found := false
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns {
			found = true
			if got := read(p.PID); got != want {
				t.Errorf("shim %d oom_score_adj %d, want containerd's + 1 = %d", p.PID, got, want)
			}
		}
	}
	if !found {
		t.Fatal("no shim process for the container")
	}
}

// TestIoUIDGID: with the runc options IoUid/IoGid the process can reopen
// its stdio as that user (it gets pipes owned by it), while containerd's
// fifos and a host file:// log keep their owner.
func TestIoUIDGID(t *testing.T) {
	te := newTestEnv(t)
	const uid = 1000
	rt := te.runtime(&options.Options{IoUid: uid, IoGid: uid})
	script := "stat -L -c %u:%g /proc/self/fd/1 /proc/self/fd/2; echo reopened > /proc/self/fd/1"
	want := fmt.Sprintf("%d:%d\n%d:%d\nreopened\n", uid, uid, uid, uid)

	out := newSyncBuffer()
	c := te.containerWith("fifos", []client.NewContainerOpts{rt}, oci.WithUIDGID(uid, uid), oci.WithProcessArgs("sh", "-c", script+" 2>&1"))
	task, exitCh := te.startTask(c, te.io(nil, out, out))
	if code := te.waitExit("fifos", exitCh).ExitCode(); code != 0 {
		t.Errorf("exit status %d (output %q), want 0", code, out.String())
	}
	te.waitIO("fifos", task)
	if got := out.String(); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	for _, path := range []string{task.IO().Config().Stdout, task.IO().Config().Stderr} {
		checkOwner(t, path, 0)
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(t.TempDir(), "container.log")
	c = te.containerWith("logfile", []client.NewContainerOpts{rt}, oci.WithUIDGID(uid, uid), oci.WithProcessArgs("sh", "-c", script))
	task, exitCh = te.startTask(c, cio.LogFile(logPath))
	if code := te.waitExit("logfile", exitCh).ExitCode(); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(logPath)
	if err != nil || string(data) != want {
		t.Errorf("log file holds %q, %v; want %q", data, err, want)
	}
	checkOwner(t, logPath, 0)
}

func checkOwner(t *testing.T, path string, uid uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != uid || st.Gid != uid {
		t.Errorf("%s is owned by %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, uid)
	}
}

// TestShimCgroup: the runc option ShimCgroup puts the shim server in the
// cgroup it names, while the container gets its own, and OOM reporting
// holds. Two forms: a cgroupfs path that exists (as the stock shim takes
// it), and, under the systemd driver, a systemd slice unit: the shim then
// runs in a transient scope of its own, containerd-shim-<id>-<pid>.scope,
// in that slice, which systemd removes once the shim has exited. (The
// stock shim takes a slice name for a path and fails to start.)
func TestShimCgroup(t *testing.T) {
	mem := requireOOM(t)
	t.Run("cgroupfs path", func(t *testing.T) {
		te := newTestEnv(t)
		path := "/oomshim-shims-" + te.h.token
		remove := makeCgroup(t, mem, path)
		t.Cleanup(remove) // after the task and the shim are gone
		te.runShimIn(mem, path, func(shimPID int) string { return path })
	})
	t.Run("systemd slice", func(t *testing.T) {
		te := newTestEnv(t)
		if !te.h.systemd() {
			t.Skip("SKIP: the systemd cgroup driver's case (TEST_CGROUP_DRIVER=systemd)")
		}
		slice := te.h.subSlice("shims")
		var scope string
		te.runShimIn(mem, slice, func(shimPID int) string {
			scope = filepath.Join(sliceDir(slice), fmt.Sprintf("containerd-shim-hog-%d.scope", shimPID))
			return strings.TrimPrefix(scope, "/sys/fs/cgroup")
		})
		if err := waitGone(te.ctx, scope); err != nil {
			t.Errorf("the shim's scope outlived the shim: %v", err)
		}
		if units, err := testkit.SystemdUnits("containerd-shim-hog-"); err != nil || len(units) > 0 {
			t.Errorf("systemd still knows the shim's scope: %v %v", units, err)
		}
	})
}

// runShimIn runs an OOM-killed container whose shim has ShimCgroup
// shimCgroup and checks, while the shim lives, that it is in the cgroup
// want(shim's pid) names and the container is not; then that the OOM was
// reported before the exit and that the shim is gone after Delete.
func (te *testEnv) runShimIn(mem memoryCgroups, shimCgroup string, want func(shimPID int) string) {
	t := te.t
	t.Helper()
	rec := te.recordEvents()
	c := te.containerWith("hog", []client.NewContainerOpts{te.runtime(&options.Options{ShimCgroup: shimCgroup})},
		oomSpec(mem, oomHog...)...)
	task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	var shim int
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && p.Action == "" {
			shim = p.PID
		}
	}
	if shim == 0 {
		t.Fatal("no shim server for the container")
	}
	wantPath := want(shim)
	if got := cgroupPaths(t, shim); !slices.Contains(got, wantPath) {
		t.Errorf("shim %d in cgroups %v, want %s", shim, got, wantPath)
	}
	if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
		t.Errorf("exit status %d, want 137", code)
	}
	te.expectOneOOMBefore(rec, te.finishTask(rec, task), "hog", "hog", 137)
	if err := testkit.WaitPidExit(shim, shimExitGrace); err != nil {
		t.Errorf("shim still running after Delete: %v", err)
	}
}

// cgroupPaths lists the cgroup paths of pid, one a hierarchy.
func cgroupPaths(t *testing.T, pid int) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 {
			out = append(out, parts[2])
		}
	}
	return out
}

// makeCgroup makes cgroup path (v2, or in every v1 hierarchy) and returns
// what removes it.
func makeCgroup(t *testing.T, mem memoryCgroups, path string) func() {
	t.Helper()
	if mem.unified {
		m, err := cgroup2.NewManager("/sys/fs/cgroup", path, &cgroup2.Resources{})
		if err != nil {
			t.Fatalf("make cgroup %s: %v", path, err)
		}
		return func() {
			if err := m.Delete(); err != nil {
				t.Errorf("cleanup: remove cgroup %s: %v", path, err)
			}
		}
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	if err != nil {
		t.Fatalf("make cgroup %s: %v", path, err)
	}
	return func() {
		if err := cg.Delete(); err != nil {
			t.Errorf("cleanup: remove cgroup %s: %v", path, err)
		}
	}
}
