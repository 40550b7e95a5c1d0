package integration

import (
	"oomshim/testkit"

	"context"
	"errors"
	"io"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// finishTask waits for the TaskExit of the container's init (so Delete
// does not race it: the stress tests hunt that race), deletes the task and
// returns every event recorded up to then, TaskDelete included.
func (te *testEnv) finishTask(rec *recorder, task client.Task) []recordedEvent {
	te.t.Helper()
	id := task.ID()
	if _, err := rec.waitFor(te.ctx, "TaskExit of "+id, isTaskExit(id, id, task.Pid())); err != nil {
		te.t.Fatal(err)
	}
	if _, err := task.Delete(te.ctx); err != nil {
		te.t.Fatalf("delete task %s: %v", id, err)
	}
	events, err := rec.mark(te.ctx)
	if err != nil {
		te.t.Fatal(err)
	}
	return events
}

// isTaskExit matches the TaskExit of one process: container and process
// ID, and its pid, since a container ID may be used again.
func isTaskExit(container, process string, pid uint32) func(recordedEvent) bool {
	return func(e recordedEvent) bool {
		ex, ok := e.Event.(*eventstypes.TaskExit)
		return ok && ex.ContainerID == container && ex.ID == process && ex.Pid == pid
	}
}

// TestOOM: containers that really run out of memory (memory and swap
// limits both set) under the private containerd. Every OOM kill is
// published as exactly one TaskOOM, before the TaskExit it explains, and
// Stats reports it; nothing else is reported as an OOM.
func TestOOM(t *testing.T) {
	mem := requireOOM(t)
	t.Logf("memory cgroups: %s; limit %d MiB, swap limit set: %v", mem.mode, oomLimit>>20, mem.swapLimit)

	t.Run("init killed", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		task, exitCh := te.startTask(te.oomContainer(mem, "hog", oomHog), te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
			t.Errorf("exit status %d, want 137 (OOM-killed)", code)
		}
		te.expectOneOOMBefore(rec, te.finishTask(rec, task), "hog", "hog", 137)
	})

	// The kernel kills the biggest process of the cgroup, dd; the shell
	// that ran it survives and exits 0. The OOM is the container's all the
	// same, and is reported before the init's exit.
	t.Run("only a child killed", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		out := newSyncBuffer()
		c := te.oomContainer(mem, "parent", []string{"sh", "-c", oomHogShell + "; echo survived; exit 0"})
		task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
		if code := te.waitExit("parent", exitCh).ExitCode(); code != 0 {
			t.Errorf("init exit status %d, want 0 (only its child dd should be OOM-killed)", code)
		}
		te.waitIO("parent", task)
		if out.String() != "survived\n" {
			t.Errorf("init output %q, want %q", out.String(), "survived\n")
		}
		te.expectOneOOMBefore(rec, te.finishTask(rec, task), "parent", "parent", 0)
	})

	// The OOM of a process that is not the init must be reported while the
	// init lives, not only by the final read when the init exits (cgroup v1
	// signals before the kill is counted).
	t.Run("child killed while the init lives", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		c := te.oomContainer(mem, "keeper", []string{"sh", "-c", oomHogShell + "; sleep 1000"})
		task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		ctx, cancel := context.WithTimeout(te.ctx, time.Minute) // a hang guard, not a timing
		defer cancel()
		if _, err := rec.waitFor(ctx, "TaskOOM of keeper", func(e recordedEvent) bool {
			ev, ok := e.Event.(*eventstypes.TaskOOM)
			return ok && ev.ContainerID == "keeper"
		}); err != nil {
			t.Fatalf("no TaskOOM while the init still runs: %v", err)
		}
		st, err := task.Status(te.ctx)
		if err != nil || st.Status != client.Running {
			t.Fatalf("init status %v (%v) when the TaskOOM arrived, want running", st.Status, err)
		}
		if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		te.waitExit("keeper", exitCh)
		te.expectOneOOMBefore(rec, te.finishTask(rec, task), "keeper", "keeper", 137) // killed by the test
	})

	t.Run("exec killed", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		c := te.oomContainer(mem, "host", []string{"sleep", "1000"})
		task, initExit := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		proc, execExit := te.startExec(task, c, "hog", io.Discard, oomHog...)
		if code := te.waitExit("exec hog", execExit).ExitCode(); code != 137 {
			t.Errorf("exec exit status %d, want 137 (OOM-killed)", code)
		}
		if _, err := rec.waitFor(te.ctx, "TaskExit of exec hog", isTaskExit("host", "hog", proc.Pid())); err != nil {
			t.Fatal(err)
		}
		events, err := rec.mark(te.ctx)
		if err != nil {
			t.Fatal(err)
		}
		te.expectOneOOMBefore(rec, events, "host", "hog", 137)

		if st, err := task.Status(te.ctx); err != nil || st.Status != client.Running {
			t.Errorf("init after its exec was OOM-killed: %v %v, want running", st.Status, err)
		}
		if _, err := proc.Delete(te.ctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		// A SIGKILL is an exit 137 too, but no OOM: the container's one
		// OOM must not be reported again at the init's exit.
		if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill init: %v", err)
		}
		if code := te.waitExit("init", initExit).ExitCode(); code != 137 {
			t.Errorf("init exit status %d after SIGKILL, want 137", code)
		}
		all := te.finishTask(rec, task)
		if n := countOOMs(all); n != 1 {
			t.Errorf("%d TaskOOM events by the end of the container, want 1 (the exec's): %s",
				n, rec.summary(taskEvents(all)))
		}
	})

	t.Run("no OOM", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		// 4 MiB of buffer stay well under the 20 MiB limit.
		calm, calmExit := te.startTask(te.oomContainer(mem, "calm", []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=1"}),
			te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("calm", calmExit).ExitCode(); code != 0 {
			t.Errorf("calm exit status %d, want 0", code)
		}
		te.finishTask(rec, calm)
		// Killed, exit 137, under its limit: no OOM either.
		killed, killedExit := te.startTask(te.oomContainer(mem, "killed", []string{"sleep", "1000"}), te.io(nil, io.Discard, io.Discard))
		if err := killed.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if code := te.waitExit("killed", killedExit).ExitCode(); code != 137 {
			t.Errorf("killed exit status %d, want 137", code)
		}
		all := te.finishTask(rec, killed)
		if n := countOOMs(all); n != 0 {
			t.Errorf("%d TaskOOM events for containers under their limit, want none: %s", n, rec.summary(taskEvents(all)))
		}
	})

	// Stats of the stopped, not yet deleted, container: oom_kill >= 1.
	t.Run("stats after the OOM", func(t *testing.T) {
		te := newTestEnv(t)
		task, exitCh := te.startTask(te.oomContainer(mem, "hog", oomHog), te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
			t.Errorf("exit status %d, want 137", code)
		}
		m, err := task.Metrics(te.ctx)
		if err != nil {
			t.Fatalf("metrics of the stopped container: %v", err)
		}
		if n, err := oomKills(mem, m); err != nil || n < 1 {
			t.Errorf("metrics of the stopped container: oom_kill %d (%v), want >= 1", n, err)
		}
	})

	// The same once the cgroup is gone before Delete, as the systemd
	// driver's scope goes when its last process exits: Stats answers the
	// OOM watcher's last counters. Under cgroupfs the test removes the
	// stopped container's own (empty) cgroups itself, in every hierarchy;
	// under systemd it waits for systemd to remove the scope.
	t.Run("stats after the cgroup is gone", func(t *testing.T) {
		te := newTestEnv(t)
		task, exitCh := te.startTask(te.oomContainer(mem, "hog", oomHog), te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
			t.Errorf("exit status %d, want 137", code)
		}
		removed := 0
		if te.h.systemd() {
			// systemd removes the scope itself once its only process is
			// gone: nothing to do but see that it did.
			scope := te.h.scopeDir(te.ns, "hog")
			if err := waitGone(te.ctx, scope); err != nil {
				t.Fatalf("systemd kept the scope of the OOM-killed container: %v", err)
			}
			removed++
		}
		for _, nsDir := range testkit.NamespaceCgroups(te.ns) {
			dir := filepath.Join(nsDir, "hog")
			if err := syscall.Rmdir(dir); err == nil {
				removed++
			} else if !errors.Is(err, syscall.ENOENT) {
				t.Fatalf("remove the stopped container's cgroup %s: %v", dir, err)
			}
		}
		if removed == 0 {
			t.Fatalf("found no cgroup of container hog under namespace %s", te.ns)
		}
		m, err := task.Metrics(te.ctx)
		if err != nil {
			t.Fatalf("metrics once the cgroup is gone: %v", err)
		}
		if n, err := oomKills(mem, m); err != nil || n < 1 {
			t.Errorf("metrics once the cgroup is gone (%d cgroup dirs removed): oom_kill %d (%v), want >= 1", removed, n, err)
		}
		if _, err := task.Delete(te.ctx); err != nil {
			t.Errorf("delete the task whose cgroup is gone: %v", err)
		}
	})

	// When Wait delivers the exit of an OOM-killed container, containerd
	// has already received the TaskOOM and the TaskExit, OOM first. A
	// marker published after Wait returned lands behind everything
	// containerd had received by then (its exchange keeps publish order),
	// so this is an ordering check, not a timing one.
	t.Run("wait ordering", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		task, exitCh := te.startTask(te.oomContainer(mem, "hog", oomHog), te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
			t.Errorf("exit status %d, want 137", code)
		}
		atWait, err := rec.mark(te.ctx)
		if err != nil {
			t.Fatal(err)
		}
		j := judgeOOM(atWait, "hog", "hog")
		switch {
		case j.ooms == 0 && j.exits == 0:
			t.Errorf("Wait delivered the exit before containerd received the TaskOOM and the TaskExit: %s", rec.summary(eventsOf(atWait, "hog")))
		case j.ooms == 0:
			t.Errorf("Wait delivered the exit before containerd received the TaskOOM: %s", rec.summary(eventsOf(atWait, "hog")))
		case j.exits == 0:
			t.Errorf("Wait delivered the exit before containerd received the TaskExit: %s", rec.summary(eventsOf(atWait, "hog")))
		}
		te.expectOneOOMBefore(rec, te.finishTask(rec, task), "hog", "hog", 137)
	})

	// A container ID used again is watched again: in a shim of its own, and
	// in a shim that outlived the first container of that ID (the group
	// annotation keeps one shim for the group while "keeper" runs).
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "reused id, own shim", true: "reused id, shared shim"}[shared]
		t.Run(name, func(t *testing.T) {
			te := newTestEnv(t)
			rec := te.recordEvents()
			var extra []oci.SpecOpts
			if shared {
				extra = append(extra, oci.WithAnnotations(map[string]string{"io.containerd.runc.v2.group": "oomgroup"}))
				te.startTask(te.containerWith("keeper", nil, append(extra, oci.WithProcessArgs("sleep", "1000"))...),
					te.io(nil, io.Discard, io.Discard))
			}
			var before []recordedEvent
			for round := 1; round <= 2; round++ {
				c := te.oomContainer(mem, "again", oomHog, extra...)
				task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))
				if shared {
					if shims := te.shimsInNamespace(); shims != 1 {
						t.Errorf("round %d: %d shims in the namespace, want the group's one", round, shims)
					}
				}
				if code := te.waitExit("again", exitCh).ExitCode(); code != 137 {
					t.Errorf("round %d: exit status %d, want 137", round, code)
				}
				events := te.finishTask(rec, task)
				if err := c.Delete(te.ctx, client.WithSnapshotCleanup); err != nil {
					t.Fatalf("round %d: delete container: %v", round, err)
				}
				t.Logf("round %d: %s", round, rec.summary(eventsOf(events[len(before):], "again")))
				te.expectOneOOMBefore(rec, events[len(before):], "again", "again", 137)
				before = events
			}
		})
	}
}

// shimsInNamespace counts the live shim processes serving te's namespace.
func (te *testEnv) shimsInNamespace() int {
	n := 0
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns {
			n++
		}
	}
	return n
}
