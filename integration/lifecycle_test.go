package integration

import (
	"io"
	"slices"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// TestRunToCompletion: a container's exit status reaches Wait.
func TestRunToCompletion(t *testing.T) {
	te := newTestEnv(t)
	if code := te.runToExit("exit3", te.io(nil, io.Discard, io.Discard), "sh", "-c", "exit 3"); code != 3 {
		t.Fatalf("exit status %d, want 3", code)
	}
}

// TestKill covers signals to the init process and to every process.
func TestKill(t *testing.T) {
	requireHarness(t)
	t.Run("SIGKILL init", func(t *testing.T) {
		te := newTestEnv(t)
		task, exitCh := te.startTask(te.container("sleeper", "sleep", "1000"), te.io(nil, io.Discard, io.Discard))
		if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if code := te.waitExit("sleeper", exitCh).ExitCode(); code != 137 {
			t.Fatalf("exit status %d after SIGKILL, want 137", code)
		}
	})

	// PID 1 of a pid namespace ignores signals it has no handler for, so the
	// default action of SIGTERM is checked on an exec'd process (not PID 1).
	t.Run("SIGTERM default action", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("sleeper", "sleep", "1000")
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		proc, err := te.exec(task, c, "term", te.io(nil, io.Discard, io.Discard), "sleep", "1000")
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		exitCh, err := proc.Wait(te.ctx)
		if err != nil {
			t.Fatalf("wait exec: %v", err)
		}
		if err := proc.Start(te.ctx); err != nil {
			t.Fatalf("start exec: %v", err)
		}
		if err := proc.Kill(te.ctx, syscall.SIGTERM); err != nil {
			t.Fatalf("kill exec: %v", err)
		}
		if code := te.waitExit("exec term", exitCh).ExitCode(); code != 143 {
			t.Fatalf("exec exit status %d after SIGTERM, want 143", code)
		}
		if _, err := proc.Delete(te.ctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
	})

	t.Run("SIGTERM init with handler", func(t *testing.T) {
		te := newTestEnv(t)
		// The shell's trap makes SIGTERM deliverable to PID 1.
		c := te.container("trapper", "sh", "-c", `trap "exit 143" TERM; echo ready; while :; do sleep 0.1; done`)
		out := newSyncBuffer()
		task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
		if err := out.waitLen(te.ctx, len("ready\n")); err != nil {
			t.Fatalf("trap never installed: %v", err)
		}
		if err := task.Kill(te.ctx, syscall.SIGTERM); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if code := te.waitExit("trapper", exitCh).ExitCode(); code != 143 {
			t.Fatalf("exit status %d after SIGTERM, want 143", code)
		}
	})

	t.Run("SIGKILL all", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("family", "sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait")
		out := newSyncBuffer()
		task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
		if err := out.waitLen(te.ctx, len("started\n")); err != nil {
			t.Fatalf("children never started: %v", err)
		}
		pids, err := task.Pids(te.ctx)
		if err != nil {
			t.Fatalf("pids: %v", err)
		}
		if len(pids) < 3 {
			t.Fatalf("pids %v: want the shell and its two sleeps", pids)
		}
		if err := task.Kill(te.ctx, syscall.SIGKILL, client.WithKillAll); err != nil {
			t.Fatalf("kill --all: %v", err)
		}
		if code := te.waitExit("family", exitCh).ExitCode(); code != 137 {
			t.Fatalf("exit status %d after SIGKILL to all, want 137", code)
		}
	})
}

// TestStateTransitions walks created -> running -> stopped, with Pids,
// Delete's exit status and Delete of a running task.
func TestStateTransitions(t *testing.T) {
	te := newTestEnv(t)
	c := te.container("states", "sh", "-c", `trap "exit 7" USR1; echo ready; while :; do sleep 0.1; done`)
	out := newSyncBuffer()
	task := te.newTask(c, te.io(nil, out, io.Discard))

	status := func(want client.ProcessStatus) {
		t.Helper()
		st, err := task.Status(te.ctx)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if st.Status != want {
			t.Fatalf("status %q, want %q", st.Status, want)
		}
	}
	status(client.Created)
	if task.Pid() == 0 {
		t.Fatalf("created task has pid 0")
	}

	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if err := task.Start(te.ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	status(client.Running)
	if err := out.waitLen(te.ctx, len("ready\n")); err != nil {
		t.Fatalf("container never got ready: %v", err)
	}

	pids, err := task.Pids(te.ctx)
	if err != nil {
		t.Fatalf("pids: %v", err)
	}
	if !slices.ContainsFunc(pids, func(p client.ProcessInfo) bool { return p.Pid == task.Pid() }) {
		t.Fatalf("pids %v do not list the init pid %d", pids, task.Pid())
	}

	_, err = task.Delete(te.ctx)
	if err == nil {
		t.Fatalf("delete of a running task without force succeeded")
	}
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete of a running task: %v, want a FailedPrecondition error", err)
	}
	status(client.Running)

	if err := task.Kill(te.ctx, syscall.SIGUSR1); err != nil {
		t.Fatalf("kill USR1: %v", err)
	}
	if code := te.waitExit("states", exitCh).ExitCode(); code != 7 {
		t.Fatalf("exit status %d, want 7", code)
	}
	status(client.Stopped)

	st, err := task.Delete(te.ctx)
	if err != nil {
		t.Fatalf("delete stopped task: %v", err)
	}
	if st.ExitCode() != 7 {
		t.Fatalf("Delete returned exit status %d, want 7", st.ExitCode())
	}
	if _, err := task.Status(te.ctx); !errdefs.IsNotFound(err) {
		t.Fatalf("status after delete: %v, want NotFound", err)
	}
}
