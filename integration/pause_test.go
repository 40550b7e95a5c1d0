package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/cgroups/v3"
	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// TestPauseResume: Pause freezes the container's cgroup and Resume thaws
// it, each with its event; an exec cannot start in a paused container; a
// paused container killed with SIGKILL exits 137 (runc thaws it to deliver
// the signal) and is deleted as usual.
func TestPauseResume(t *testing.T) {
	te := newTestEnv(t)
	rec := te.recordEvents()
	c := te.container("frozen", "sleep", "1000")
	task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))

	expect := func(when string, status client.ProcessStatus, isFrozen bool) {
		t.Helper()
		st, err := task.Status(te.ctx)
		if err != nil {
			t.Fatalf("status %s: %v", when, err)
		}
		if st.Status != status {
			t.Fatalf("status %s: %s, want %s", when, st.Status, status)
		}
		got, err := frozen(int(task.Pid()))
		if err != nil {
			t.Fatalf("freezer %s: %v", when, err)
		}
		if got != isFrozen {
			t.Fatalf("cgroup frozen %s: %v, want %v", when, got, isFrozen)
		}
	}
	if err := task.Pause(te.ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	expect("after pause", client.Paused, true)
	if _, err := te.exec(task, c, "blocked", te.io(nil, io.Discard, io.Discard), "true"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec in a paused container: %v, want FailedPrecondition", err)
	}
	if err := task.Resume(te.ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	expect("after resume", client.Running, false)
	proc, execExit := te.startExec(task, c, "thawed", io.Discard, "true")
	if code := te.waitExit("exec after resume", execExit).ExitCode(); code != 0 {
		t.Fatalf("exec after resume: exit status %d", code)
	}
	if _, err := proc.Delete(te.ctx); err != nil {
		t.Fatalf("delete exec: %v", err)
	}

	if err := task.Pause(te.ctx); err != nil {
		t.Fatalf("pause again: %v", err)
	}
	if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill while paused: %v", err)
	}
	if code := te.waitExit("frozen", exitCh).ExitCode(); code != 137 {
		t.Fatalf("exit status %d after SIGKILL while paused, want 137", code)
	}
	if _, err := rec.waitFor(te.ctx, "init /tasks/exit", func(e recordedEvent) bool {
		ex, ok := e.Event.(*eventstypes.TaskExit)
		return ok && ex.ID == "frozen"
	}); err != nil {
		t.Fatal(err)
	}
	te.deleteAndExpectTopics(rec, task, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed",
		"/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/paused", "/tasks/exit", "/tasks/delete")
}

// frozen reads the freezer state of pid's cgroup: freezer.state on cgroup
// v1, the "frozen" key of cgroup.events on v2.
func frozen(pid int) (bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false, err
	}
	defer f.Close()
	unified := cgroups.Mode() == cgroups.Unified
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if unified && parts[0] == "0" {
			data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", parts[2], "cgroup.events"))
			if err != nil {
				return false, err
			}
			return strings.Contains("\n"+string(data), "\nfrozen 1"), nil
		}
		if !unified && slices.Contains(strings.Split(parts[1], ","), "freezer") {
			mnt := v1ControllerMount("freezer")
			if mnt == "" {
				return false, fmt.Errorf("no freezer hierarchy mounted")
			}
			data, err := os.ReadFile(filepath.Join(mnt, parts[2], "freezer.state"))
			if err != nil {
				return false, err
			}
			return strings.TrimSpace(string(data)) == "FROZEN", nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return false, fmt.Errorf("pid %d has no freezer cgroup", pid)
}
