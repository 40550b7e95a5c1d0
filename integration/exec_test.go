package integration

import (
	"bytes"
	"io"
	"syscall"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// exec creates (does not start) an exec process. At cleanup it is killed and
// deleted, and its client-side fifos are removed even when the task is gone.
func (te *testEnv) exec(task client.Task, c client.Container, execID string, creator cio.Creator, args ...string) (client.Process, error) {
	return te.execSpec(task, execID, te.processSpec(c, args...), creator)
}

// execSpec adds spec to the task as execID; at cleanup it is killed and
// deleted, and its stdio released.
func (te *testEnv) execSpec(task client.Task, execID string, spec *specs.Process, creator cio.Creator) (client.Process, error) {
	proc, err := task.Exec(te.ctx, execID, spec, creator)
	if err != nil {
		return nil, err
	}
	te.t.Cleanup(func() {
		ctx, cancel := te.cleanupCtx()
		defer cancel()
		_, _ = proc.Delete(ctx, client.WithProcessKill)
		if pio := proc.IO(); pio != nil {
			pio.Cancel()
			pio.Close()
		}
	})
	return proc, nil
}

// startExec execs args in the running task and returns the process and its
// exit channel.
func (te *testEnv) startExec(task client.Task, c client.Container, execID string, stdout io.Writer, args ...string) (client.Process, <-chan client.ExitStatus) {
	te.t.Helper()
	return te.startSpec(task, execID, te.processSpec(c, args...), te.io(nil, stdout, io.Discard))
}

// startSpec execs spec in the running task with creator's stdio, starts it
// and returns it with its exit channel.
func (te *testEnv) startSpec(task client.Task, execID string, spec *specs.Process, creator cio.Creator) (client.Process, <-chan client.ExitStatus) {
	te.t.Helper()
	proc, err := te.execSpec(task, execID, spec, creator)
	if err != nil {
		te.t.Fatalf("exec %s: %v", execID, err)
	}
	exitCh, err := proc.Wait(te.ctx)
	if err != nil {
		te.t.Fatalf("wait exec %s: %v", execID, err)
	}
	if err := proc.Start(te.ctx); err != nil {
		te.t.Fatalf("start exec %s: %v", execID, err)
	}
	return proc, exitCh
}

func TestExec(t *testing.T) {
	requireHarness(t)
	t.Run("output and exit status", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("host", "sleep", "1000")
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		var out bytes.Buffer
		proc, exitCh := te.startExec(task, c, "hi", &out, "sh", "-c", "echo hi; exit 5")
		if code := te.waitExit("exec hi", exitCh).ExitCode(); code != 5 {
			t.Fatalf("exec exit status %d, want 5", code)
		}
		te.waitIO("exec hi", proc)
		if out.String() != "hi\n" {
			t.Fatalf("exec output %q, want %q", out.String(), "hi\n")
		}
		st, err := proc.Delete(te.ctx)
		if err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		if st.ExitCode() != 5 {
			t.Fatalf("exec Delete returned %d, want 5", st.ExitCode())
		}
	})

	t.Run("kill and state", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("host", "sleep", "1000")
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))

		proc, err := te.exec(task, c, "sleeper", te.io(nil, io.Discard, io.Discard), "sleep", "1000")
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		status := func(want client.ProcessStatus) {
			t.Helper()
			st, err := proc.Status(te.ctx)
			if err != nil {
				t.Fatalf("exec status: %v", err)
			}
			if st.Status != want {
				t.Fatalf("exec status %q, want %q", st.Status, want)
			}
		}
		status(client.Created)
		exitCh, err := proc.Wait(te.ctx)
		if err != nil {
			t.Fatalf("wait exec: %v", err)
		}
		if err := proc.Start(te.ctx); err != nil {
			t.Fatalf("start exec: %v", err)
		}
		status(client.Running)
		if proc.Pid() == 0 || proc.Pid() == task.Pid() {
			t.Fatalf("exec pid %d (init pid %d)", proc.Pid(), task.Pid())
		}
		if err := proc.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill exec: %v", err)
		}
		if code := te.waitExit("exec sleeper", exitCh).ExitCode(); code != 137 {
			t.Fatalf("exec exit status %d after SIGKILL, want 137", code)
		}
		status(client.Stopped)
		if _, err := proc.Delete(te.ctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		// The init process is untouched.
		st, err := task.Status(te.ctx)
		if err != nil || st.Status != client.Running {
			t.Fatalf("init after exec was killed: %v %v, want running", st.Status, err)
		}
	})

	t.Run("duplicate exec id", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("host", "sleep", "1000")
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		te.startExec(task, c, "dup", io.Discard, "sleep", "1000")
		_, err := te.exec(task, c, "dup", te.io(nil, io.Discard, io.Discard), "true")
		if err == nil {
			t.Fatalf("second exec with the same id succeeded")
		}
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("second exec with the same id: %v, want AlreadyExists", err)
		}
	})

	// When the container dies while an exec runs, the exec's TaskExit is
	// published before the init's.
	t.Run("exec exit before init exit", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		c := te.container("host", "sleep", "1000")
		task, initExit := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		_, execExit := te.startExec(task, c, "victim", io.Discard, "sleep", "1000")
		if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill init: %v", err)
		}
		if code := te.waitExit("init", initExit).ExitCode(); code != 137 {
			t.Fatalf("init exit status %d, want 137", code)
		}
		if code := te.waitExit("exec victim", execExit).ExitCode(); code != 137 {
			t.Fatalf("exec exit status %d, want 137", code)
		}
		isExit := func(id string) func(recordedEvent) bool {
			return func(e recordedEvent) bool {
				ex, ok := e.Event.(*eventstypes.TaskExit)
				return ok && ex.ContainerID == "host" && ex.ID == id
			}
		}
		if _, err := rec.waitFor(te.ctx, "init TaskExit", isExit("host")); err != nil {
			t.Fatal(err)
		}
		events, err := rec.mark(te.ctx)
		if err != nil {
			t.Fatal(err)
		}
		initIdx, execIdx := -1, -1
		for i, e := range events {
			switch {
			case initIdx < 0 && isExit("host")(e):
				initIdx = i
			case execIdx < 0 && isExit("victim")(e):
				execIdx = i
			}
		}
		if execIdx < 0 || execIdx > initIdx {
			t.Fatalf("exec TaskExit must come before the init TaskExit (exec #%d, init #%d): %s",
				execIdx, initIdx, rec.summary(events))
		}
	})
}
