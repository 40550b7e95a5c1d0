package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"testing"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
)

// TestStatV1MatchesLibrary: the controllers' Stat in turn fill the same
// metrics as cgroup1's Stat(IgnoreNotExist), read from this test's own
// cgroups (read only). Counters move between the two reads; limits and
// which parts are there do not.
func TestStatV1MatchesLibrary(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("unified cgroup v2: statV1 is the v1 path")
	}
	cg, err := LoadCgroup(os.Getpid())
	if err != nil {
		t.Skipf("no v1 cgroups to read: %v", err)
	}
	ours, err := cg.statV1()
	if err != nil {
		t.Fatal(err)
	}
	lib, err := cg.v1.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		t.Fatal(err)
	}
	shape := func(m *stats1.Metrics) string {
		return fmt.Sprintf("hugetlb=%d pids=%v/%d cpu=%v/%d memory=%v/%d/%d blkio=%v/%d rdma=%v",
			len(m.Hugetlb), m.Pids != nil, m.Pids.GetLimit(), m.CPU != nil, len(m.CPU.GetUsage().GetPerCPU()),
			m.Memory != nil, m.Memory.GetUsage().GetLimit(), m.Memory.GetHierarchicalMemoryLimit(),
			m.Blkio != nil, len(m.Blkio.GetIoServiceBytesRecursive()), m.Rdma != nil)
	}
	if a, b := shape(ours), shape(lib); a != b {
		t.Fatalf("statV1 %s\nlibrary %s", a, b)
	}
	t.Logf("%s", shape(ours))
}

// TestPidPathV1MatchesLibrary: pidPathV1 names the same cgroup as
// cgroup1.PidPath for every controller and for systemd's named hierarchy,
// and fails the same way for a controller the process is not in, for this
// process and for pid 1 (read only), and again once the roots are cached.
func TestPidPathV1MatchesLibrary(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("unified cgroup v2: pidPathV1 is the v1 path")
	}
	names := append(cgroup1.Subsystems(), cgroup1.SystemdDbus, "no-such-controller")
	for _, pid := range []int{os.Getpid(), 1, os.Getpid()} {
		ours, err := pidPathV1(pid)
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		lib := cgroup1.PidPath(pid)
		for _, name := range names {
			a, aerr := ours(name)
			b, berr := lib(name)
			if a != b || !errors.Is(aerr, berr) {
				t.Errorf("pid %d, %s: ours %q (%v), library %q (%v)", pid, name, a, aerr, b, berr)
			}
		}
	}
	if mem, err := cgroup1.PidPath(os.Getpid())(cgroup1.Memory); err == nil {
		t.Logf("this process's memory cgroup: %s", mem)
	}
}

// TestPidPathV1Errors: a process that does not exist is an error, not a
// path.
func TestPidPathV1Errors(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("unified cgroup v2: pidPathV1 is the v1 path")
	}
	if _, err := pidPathV1(1 << 30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pid that does not exist: %v, want not exist", err)
	}
}

// TestRelativeToRoots: cgroups are made relative to their hierarchy's
// mount root (a shim in a cgroup namespace sees roots other than "/"), the
// roots are read again once when a hierarchy is missing from them, and a
// hierarchy no mount holds is an error.
func TestRelativeToRoots(t *testing.T) {
	reads := 0
	mounted := map[string]string{"memory": "/kubepods/pod1", "cpu": "/", "name=systemd": "/"}
	roots := func(reread bool) (map[string]string, error) {
		reads++
		return mounted, nil
	}
	paths := map[string]string{"memory": "/kubepods/pod1/c1", "cpu": "/kubepods/pod1/c1", "name=systemd": "/system.slice"}
	if err := relativeToRoots(paths, roots); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"memory": "/c1", "cpu": "/kubepods/pod1/c1", "name=systemd": "/system.slice"}
	if fmt.Sprint(paths) != fmt.Sprint(want) || reads != 1 {
		t.Errorf("paths %v after %d reads, want %v after 1", paths, reads, want)
	}

	// The library's choice for a cgroup that is its mount's root, kept.
	paths = map[string]string{"memory": "/kubepods/pod1"}
	if err := relativeToRoots(paths, roots); err != nil || paths["memory"] != "/kubepods/pod1" {
		t.Errorf("the root itself: %v, %v", paths, err)
	}

	reads = 0
	paths = map[string]string{"memory": "/a", "name=nosuch": "/a"}
	if err := relativeToRoots(paths, roots); !errors.Is(err, cgroup1.ErrNoCgroupMountDestination) || reads != 2 {
		t.Errorf("unmounted hierarchy: %v after %d reads, want ErrNoCgroupMountDestination after 2", err, reads)
	}
}
