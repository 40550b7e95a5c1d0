package integration

import (
	"oomshim/testkit"

	"strings"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// TestContainerdRestart: containerd restarts (an upgrade) while a container
// runs. The shim carries on; the new containerd reconnects to it; an exec
// works and its events reach the new containerd (the shim redials it); and
// an exit that happened while containerd was down still reaches Wait and
// Delete with its status.
func TestContainerdRestart(t *testing.T) {
	te := newTestEnv(t)
	d := te.privateContainerd("oomshim-rst-", "the containerd restart test", nil, te.ns)
	t.Cleanup(func() { // before the containerd is stopped
		if d.Client == nil {
			return
		}
		ctx, cancel := te.cleanupCtx()
		defer cancel()
		if c, err := d.Client.LoadContainer(ctx, "survivor"); err == nil {
			if task, err := c.Task(ctx, nil); err == nil {
				task.Delete(ctx, client.WithProcessKill)
			}
			c.Delete(ctx, client.WithSnapshotCleanup)
		}
	})
	ctx := te.ctx
	img, err := d.Import(ctx, te.h.s.imageTar)
	if err != nil {
		t.Fatal(err)
	}
	driverCopts, driverSopts := te.cgroupOpts("survivor")
	c, err := d.Client.NewContainer(ctx, "survivor", append(driverCopts, client.WithNewSnapshot("survivor-rootfs", img),
		client.WithNewSpec(append(driverSopts, oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "1000"))...))...)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := int(task.Pid())
	shims := testkit.ShimProcesses(d.Address, te.h.shimPath)
	if len(shims) != 1 {
		t.Fatalf("want one shim, found %v", shims)
	}
	shim := shims[0].PID

	// reload finds the container and its task again through the current
	// client (the old one closed with the old containerd).
	reload := func(when string) (client.Container, client.Task) {
		t.Helper()
		c, err := d.Client.LoadContainer(ctx, "survivor")
		if err != nil {
			t.Fatalf("load container %s: %v", when, err)
		}
		task, err := c.Task(ctx, nil)
		if err != nil {
			t.Fatalf("load task %s: %v", when, err)
		}
		return c, task
	}

	if err := d.Restart(ctx, 10*time.Second); err != nil {
		t.Fatalf("restart containerd: %v", err)
	}
	if err := syscall.Kill(shim, 0); err != nil {
		t.Fatalf("the shim did not outlive containerd: %v", err)
	}
	c, task = reload("after the restart")
	if st, err := task.Status(ctx); err != nil || st.Status != client.Running || int(task.Pid()) != pid {
		t.Fatalf("after the restart: status %v (%v), pid %d; want running, pid %d", st.Status, err, task.Pid(), pid)
	}
	rte := &testEnv{t: t, h: te.h, c: d.Client, ns: te.ns, ctx: te.ctx}
	rec := rte.recordEvents()
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"true"}
	proc, err := task.Exec(ctx, "after", &pspec, cio.NullIO)
	if err != nil {
		t.Fatalf("exec after the restart: %v", err)
	}
	exitCh, err := proc.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Start(ctx); err != nil {
		t.Fatalf("start exec after the restart: %v", err)
	}
	if code := te.waitExit("exec after the restart", exitCh).ExitCode(); code != 0 {
		t.Fatalf("exec exit status %d", code)
	}
	if _, err := rec.waitFor(ctx, "the exec's TaskExit after the restart", func(e recordedEvent) bool {
		ex, ok := e.Event.(*eventstypes.TaskExit)
		return ok && ex.ID == "after"
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Delete(ctx); err != nil {
		t.Fatalf("delete exec: %v", err)
	}

	// The init dies while containerd is down. The new containerd finds
	// the shim with no process left and, by its design, deletes the task
	// and shuts the shim down while it loads (before it serves events).
	// The shim must answer at once, not hold containerd's start-up waiting
	// for its TaskExit to be taken, and still get that event to the new
	// containerd before it exits.
	d.Stop(10 * time.Second)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := testkit.WaitPidExit(pid, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	offset := d.LogOffset()
	if err := d.Restart(ctx, 10*time.Second); err != nil {
		t.Fatalf("start containerd again: %v", err)
	}
	if err := testkit.WaitPidExit(shim, 30*time.Second); err != nil {
		t.Fatalf("the shim of the ended task did not exit: %v", err)
	}
	log := d.LogSince(offset, 400)
	for _, bad := range []string{"failed to clean up leaked shim", "context deadline exceeded"} {
		if strings.Contains(log, bad) {
			t.Errorf("containerd's log says %q after the restart", bad)
		}
	}
	for _, want := range []string{"cleaning leaked shim process"} {
		if !strings.Contains(log, want) {
			t.Errorf("containerd's log lacks %q: did it see the ended task?", want)
		}
	}
	c, err = d.Client.LoadContainer(ctx, "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Task(ctx, nil); !errdefs.IsNotFound(err) {
		t.Fatalf("task after a restart that found it ended: %v, want NotFound (containerd deletes it)", err)
	}
}
