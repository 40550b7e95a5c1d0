package task

import (
	"testing"

	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
)

// After the cgroup is gone, Stats answers the last memory events in the
// metrics type CRI expects for the hierarchy.
func TestFinalStats(t *testing.T) {
	a, err := finalStats(true, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	m2, ok := v.(*stats2.Metrics)
	if !ok {
		t.Fatalf("v2: %T, want *stats2.Metrics", v)
	}
	if ev := m2.GetMemoryEvents(); ev.GetOomKill() != 2 || ev.GetOom() != 2 || ev.GetMax() != 5 {
		t.Errorf("v2 memory events %+v, want oom_kill 2, oom 2, max 5", ev)
	}

	if a, err = finalStats(false, 3, 0); err != nil {
		t.Fatal(err)
	}
	if v, err = typeurl.UnmarshalAny(a); err != nil {
		t.Fatal(err)
	}
	m1, ok := v.(*stats1.Metrics)
	if !ok {
		t.Fatalf("v1: %T, want *stats1.Metrics", v)
	}
	if got := m1.GetMemoryOomControl().GetOomKill(); got != 3 {
		t.Errorf("v1 oom_kill %d, want 3", got)
	}
}
