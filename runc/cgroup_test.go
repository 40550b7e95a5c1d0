package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	"golang.org/x/sys/unix"
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
// mount root (a shim in a cgroup namespace sees roots other than "/"), and
// a hierarchy no mount holds is an error.
func TestRelativeToRoots(t *testing.T) {
	mounted := map[string]string{"memory": "/kubepods/pod1", "cpu": "/", "name=systemd": "/"}
	var asked []string
	roots := func(names []string) (map[string]string, error) {
		asked = append(asked, names...)
		found := map[string]string{}
		for _, name := range names {
			if root, ok := mounted[name]; ok {
				found[name] = root
			}
		}
		return found, nil
	}
	paths := map[string]string{"memory": "/kubepods/pod1/c1", "cpu": "/kubepods/pod1/c1", "name=systemd": "/system.slice"}
	if err := relativeToRoots(paths, roots); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"memory": "/c1", "cpu": "/kubepods/pod1/c1", "name=systemd": "/system.slice"}
	if fmt.Sprint(paths) != fmt.Sprint(want) || len(asked) != 3 {
		t.Errorf("paths %v after asking for %v, want %v after asking for the 3", paths, asked, want)
	}

	// The library's choice for a cgroup that is its mount's root, kept.
	paths = map[string]string{"memory": "/kubepods/pod1"}
	if err := relativeToRoots(paths, roots); err != nil || paths["memory"] != "/kubepods/pod1" {
		t.Errorf("the root itself: %v, %v", paths, err)
	}

	paths = map[string]string{"memory": "/a", "name=nosuch": "/a"}
	if err := relativeToRoots(paths, roots); !errors.Is(err, cgroup1.ErrNoCgroupMountDestination) {
		t.Errorf("unmounted hierarchy: %v, want ErrNoCgroupMountDestination", err)
	}
}

// TestMountRoots: the roots of this process's hierarchies are found (the
// same as the library's, TestPidPathV1MatchesLibrary), a name no mount
// holds is left out without losing the others, and asking again answers
// the same from the cache.
func TestMountRoots(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("unified cgroup v2: no v1 mounts")
	}
	paths, _, err := cgroups.ParseCgroupFileUnified("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for name := range paths {
		names = append(names, name)
	}
	var r mountRoots
	first, err := r.get(append(names, "name=nosuch"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := first["name=nosuch"]; ok || len(first) != len(names) {
		t.Fatalf("roots %v for %v and name=nosuch", first, names)
	}
	again, err := r.get(names)
	if err != nil || fmt.Sprint(again) != fmt.Sprint(first) {
		t.Errorf("asked again: %v, %v; first %v", again, err, first)
	}
	t.Logf("roots: %v", first)
}

// BenchmarkPidPathV1 against the library's cgroup1.PidPath, for this
// process (go test -run - -bench PidPath -benchmem ./runc).
func BenchmarkPidPathV1(b *testing.B) {
	if cgroups.Mode() == cgroups.Unified {
		b.Skip("unified cgroup v2")
	}
	b.Run("ours", func(b *testing.B) {
		for b.Loop() {
			p, err := pidPathV1(os.Getpid())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p(cgroup1.Memory); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("library", func(b *testing.B) {
		for b.Loop() {
			if _, err := cgroup1.PidPath(os.Getpid())(cgroup1.Memory); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStatsV1: the CPU one Stats call costs in the cgroup library's
// file reads and in marshalling, with no ttrpc and no scheduling around it,
// for this process's cgroups or, with STATS_PID=<pid>, a container's (go
// test -run - -bench StatsV1 ./runc). cpu-ms/op is the process's user+sys
// time (getrusage) per call: the least a shim using the library pays per
// Stats call (bench/PROFILE.md, section 11).
func BenchmarkStatsV1(b *testing.B) {
	if cgroups.Mode() == cgroups.Unified {
		b.Skip("unified cgroup v2")
	}
	pid := os.Getpid()
	if s := os.Getenv("STATS_PID"); s != "" {
		if _, err := fmt.Sscan(s, &pid); err != nil {
			b.Fatalf("STATS_PID=%q: %v", s, err)
		}
	}
	cg, err := LoadCgroup(pid)
	if err != nil {
		b.Skipf("no v1 cgroups to read: %v", err)
	}
	cpu := func() time.Duration {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	n := 0
	for b.Loop() {
		if _, err := cg.Stats(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(cpu()-start)/float64(time.Millisecond)/float64(n), "cpu-ms/op")
}
