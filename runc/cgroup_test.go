package runc

import (
	"fmt"
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
