package integration

import (
	"io"
	"slices"
	"syscall"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
)

// TestEventSequence: one simple run publishes exactly create, start, exit,
// delete, in that order, and an exec adds exec-added and exec-started.
func TestEventSequence(t *testing.T) {
	requireHarness(t)
	t.Run("simple run", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		task, exitCh := te.startTask(te.container("simple", "true"), te.io(nil, io.Discard, io.Discard))
		if code := te.waitExit("simple", exitCh).ExitCode(); code != 0 {
			t.Fatalf("exit status %d, want 0", code)
		}
		// Delete only once the exit event is out: this test is about the
		// sequence, not the race between Delete and the exit event (the
		// stress test hunts that one).
		if _, err := rec.waitFor(te.ctx, "/tasks/exit", func(e recordedEvent) bool { return e.Topic == "/tasks/exit" }); err != nil {
			t.Fatal(err)
		}
		tasks := te.deleteAndExpectTopics(rec, task, "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
		for _, e := range tasks {
			if id := containerOf(e); id != "simple" {
				t.Errorf("%s names container %q, want %q", e, id, "simple")
			}
		}
		exit := tasks[2].Event.(*eventstypes.TaskExit)
		del := tasks[3].Event.(*eventstypes.TaskDelete)
		start := tasks[1].Event.(*eventstypes.TaskStart)
		if exit.ExitStatus != 0 || exit.Pid != start.Pid || exit.ID != "simple" {
			t.Errorf("TaskExit %s: want status 0, pid %d, id simple", tasks[2], start.Pid)
		}
		if del.ExitStatus != 0 || del.Pid != start.Pid {
			t.Errorf("TaskDelete %s: want status 0, pid %d", tasks[3], start.Pid)
		}
	})

	t.Run("exec", func(t *testing.T) {
		te := newTestEnv(t)
		rec := te.recordEvents()
		c := te.container("host", "sleep", "1000")
		task, initExit := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		proc, execExit := te.startExec(task, c, "ex1", io.Discard, "sh", "-c", "exit 2")
		if code := te.waitExit("exec", execExit).ExitCode(); code != 2 {
			t.Fatalf("exec exit status %d, want 2", code)
		}
		if _, err := proc.Delete(te.ctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("kill: %v", err)
		}
		te.waitExit("init", initExit)
		if _, err := rec.waitFor(te.ctx, "init /tasks/exit", func(e recordedEvent) bool {
			ex, ok := e.Event.(*eventstypes.TaskExit)
			return ok && ex.ID == "host"
		}); err != nil {
			t.Fatal(err)
		}
		tasks := te.deleteAndExpectTopics(rec, task, "/tasks/create", "/tasks/start", "/tasks/exec-added",
			"/tasks/exec-started", "/tasks/exit", "/tasks/exit", "/tasks/delete")
		if ex := tasks[4].Event.(*eventstypes.TaskExit); ex.ID != "ex1" || ex.ExitStatus != 2 {
			t.Errorf("first exit %s: want the exec ex1 with status 2", tasks[4])
		}
		if ex := tasks[5].Event.(*eventstypes.TaskExit); ex.ID != "host" || ex.ExitStatus != 137 {
			t.Errorf("second exit %s: want the init with status 137", tasks[5])
		}
		if a := tasks[2].Event.(*eventstypes.TaskExecAdded); a.ExecID != "ex1" {
			t.Errorf("exec-added %s: want exec ex1", tasks[2])
		}
		if s := tasks[3].Event.(*eventstypes.TaskExecStarted); s.ExecID != "ex1" || s.Pid == 0 {
			t.Errorf("exec-started %s: want exec ex1 with a pid", tasks[3])
		}
	})
}

// containerOf returns the container ID a task event names.
func containerOf(e recordedEvent) string {
	switch ev := e.Event.(type) {
	case *eventstypes.TaskCreate:
		return ev.ContainerID
	case *eventstypes.TaskStart:
		return ev.ContainerID
	case *eventstypes.TaskExit:
		return ev.ContainerID
	case *eventstypes.TaskDelete:
		return ev.ContainerID
	case *eventstypes.TaskExecAdded:
		return ev.ContainerID
	case *eventstypes.TaskExecStarted:
		return ev.ContainerID
	case *eventstypes.TaskOOM:
		return ev.ContainerID
	}
	return ""
}

// deleteAndExpectTopics deletes task and fails the test unless the task
// events recorded since the last mark have exactly the topics want, in
// order. It returns those events.
func (te *testEnv) deleteAndExpectTopics(rec *recorder, task client.Task, want ...string) []recordedEvent {
	te.t.Helper()
	if _, err := task.Delete(te.ctx); err != nil {
		te.t.Fatalf("delete: %v", err)
	}
	events, err := rec.mark(te.ctx)
	if err != nil {
		te.t.Fatal(err)
	}
	tasks := taskEvents(events)
	if !slices.Equal(topics(tasks), want) {
		te.t.Fatalf("task events %s, want topics %v", rec.summary(tasks), want)
	}
	return tasks
}
