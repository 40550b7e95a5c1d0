package integration

import (
	"fmt"
	"io"
	"syscall"
	"testing"

	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestUpdate: Update (CRI's UpdateContainerResources) reaches the
// container's cgroup through runc, on a created and on a running task, as
// the task's own metrics show; an exited task answers NotFound, which CRI
// takes as "already gone".
func TestUpdate(t *testing.T) {
	te := newTestEnv(t)
	c := te.containerWith("resized", nil, oci.WithProcessArgs("sleep", "1000"), oci.WithMemoryLimit(64<<20))
	task := te.newTask(c, te.io(nil, io.Discard, io.Discard))
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}

	update := func(when string, memory, pids int64) {
		t.Helper()
		err := task.Update(te.ctx, client.WithResources(&specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: &memory},
			Pids:   &specs.LinuxPids{Limit: &pids},
		}))
		if err != nil {
			t.Fatalf("update %s: %v", when, err)
		}
		m, err := task.Metrics(te.ctx)
		if err != nil {
			t.Fatalf("metrics %s: %v", when, err)
		}
		gotMem, gotPids, err := limits(m.Data)
		if err != nil {
			t.Fatalf("metrics %s: %v", when, err)
		}
		if gotMem != uint64(memory) || gotPids != uint64(pids) {
			t.Fatalf("after the update %s: memory limit %d, pids limit %d; want %d, %d", when, gotMem, gotPids, memory, pids)
		}
	}
	update("before start", 48<<20, 64)
	if err := task.Start(te.ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	update("while running", 40<<20, 32)

	if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	te.waitExit("resized", exitCh)
	limit := int64(32 << 20)
	err = task.Update(te.ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}))
	if !errdefs.IsNotFound(err) {
		t.Fatalf("update of an exited task: %v, want NotFound", err)
	}
}

// limits reads the memory and pids limits out of a task's metrics, cgroup
// v1 or v2.
func limits(a typeurl.Any) (memory, pids uint64, err error) {
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return 0, 0, err
	}
	switch s := v.(type) {
	case *stats1.Metrics:
		if s.Memory == nil || s.Memory.Usage == nil || s.Pids == nil {
			return 0, 0, fmt.Errorf("cgroup v1 metrics without memory usage or pids: %v", s)
		}
		return s.Memory.Usage.Limit, s.Pids.Limit, nil
	case *stats2.Metrics:
		if s.Memory == nil || s.Pids == nil {
			return 0, 0, fmt.Errorf("cgroup v2 metrics without memory or pids: %v", s)
		}
		return s.Memory.UsageLimit, s.Pids.Limit, nil
	}
	return 0, 0, fmt.Errorf("unexpected metrics type %T", v)
}
