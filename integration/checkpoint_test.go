package integration

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// requireCriu skips a checkpoint test where criu cannot work (no criu, or
// `criu check` fails, as on this project's cgroup v1 host kernel), unless
// REQUIRE_CRIU=1 (the cgroup v2 VM), where that is a failure.
func requireCriu(t *testing.T) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("REQUIRE_CRIU") == "1" {
		fail = t.Fatalf
	}
	path, err := exec.LookPath("criu")
	if err != nil {
		fail("no criu in PATH: %v", err)
		return
	}
	if out, err := exec.Command(path, "check").CombinedOutput(); err != nil {
		fail("criu check: %v\n%s", err, out)
	}
}

// counter is a container that prints 0, 1, 2, ... one line every 100 ms.
var counter = []string{"sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"}

// lastLine is the last complete line of s as a number, -1 if none.
func lastNumber(s string) int {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if n, err := strconv.Atoi(strings.TrimSpace(lines[i])); err == nil {
			return n
		}
	}
	return -1
}

// checkpointExit is the CheckpointTaskOpts that ends the container after
// the dump (ctr's --exit).
func checkpointExit(extra func(*options.CheckpointOptions)) client.CheckpointTaskOpts {
	return func(i *client.CheckpointTaskInfo) error {
		o := &options.CheckpointOptions{Exit: true}
		if extra != nil {
			extra(o)
		}
		i.Options = o
		return nil
	}
}

// waitNumberAbove waits until buf's last number exceeds n.
func (te *testEnv) waitNumberAbove(what string, buf *syncBuffer, n int) int {
	te.t.Helper()
	ctx, cancel := context.WithTimeout(te.ctx, 30*time.Second)
	defer cancel()
	var last int
	err := buf.wait(ctx, func(b []byte) error {
		if last = lastNumber(string(b)); last > n {
			return nil
		}
		return fmt.Errorf("last number %d, want more than %d", last, n)
	})
	if err != nil {
		te.t.Fatalf("%s: %v; output so far %q", what, err, tail(buf.String(), 200))
	}
	return last
}

// criuLogOf is the end of the criu log an error names, for a failure's
// message (the log is in the bundle, gone once the task is deleted).
func criuLogOf(err error) string {
	m := regexp.MustCompile(`log (/[^ )]+)\)`).FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	data, rerr := os.ReadFile(m[1])
	if rerr != nil {
		return "\n(criu log: " + rerr.Error() + ")"
	}
	// Without the mount tree's lines: they crowd out the cause.
	var keep []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, " mnt: ") {
			keep = append(keep, l)
		}
	}
	return "\ncriu log (end, mount lines left out):\n" + tail(strings.Join(keep, "\n"), 12000)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// restoreTask creates a task of c from a checkpoint (opts name it) and
// starts it, Wait first; the restored process is its init, with a pid.
func (te *testEnv) restoreTask(c client.Container, creator cio.Creator, opts ...client.NewTaskOpts) (client.Task, <-chan client.ExitStatus) {
	te.t.Helper()
	task := te.newTask(c, creator, opts...)
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		te.t.Fatalf("wait restored %s: %v", c.ID(), err)
	}
	if err := task.Start(te.ctx); err != nil {
		te.t.Fatalf("start (restore) %s: %v%s", c.ID(), err, criuLogOf(err))
	}
	if task.Pid() == 0 {
		te.t.Fatalf("restored task %s has pid 0", c.ID())
	}
	st, err := task.Status(te.ctx)
	if err != nil || st.Status != client.Running {
		te.t.Fatalf("restored task %s: status %v, %v; want running", c.ID(), st.Status, err)
	}
	return task, exitCh
}

// expectContinues checks that a restored counter's output begins right
// after n, the last number the checkpointed one printed, and grows.
func (te *testEnv) expectContinues(what string, out *syncBuffer, n int) {
	te.t.Helper()
	te.waitNumberAbove(what, out, n+2)
	first := firstNumber(out.String())
	if first != n+1 {
		te.t.Errorf("%s: the restored output starts at %d, want %d (the checkpoint stopped at %d): %q", what, first, n+1, n, tail(out.String(), 200))
	}
}

// firstNumber is the first line of s that is a number, -1 if none.
func firstNumber(s string) int {
	for _, l := range strings.Split(s, "\n") {
		if n, err := strconv.Atoi(strings.TrimSpace(l)); err == nil {
			return n
		}
	}
	return -1
}

// checkpointAndEnd checkpoints task with exit (and opts' changes), waits
// for its exit and its output's end, deletes it, and returns the image
// (empty when the options name an image path).
func (te *testEnv) checkpointAndEnd(task client.Task, exitCh <-chan client.ExitStatus, opts func(*options.CheckpointOptions)) client.Image {
	te.t.Helper()
	img, err := task.Checkpoint(te.ctx, checkpointExit(opts))
	if err != nil {
		te.t.Fatalf("checkpoint %s: %v%s", task.ID(), err, criuLogOf(err))
	}
	te.waitExit(task.ID()+" checkpointed", exitCh)
	te.waitIO(task.ID()+" checkpointed", task)
	if _, err := task.Delete(te.ctx); err != nil {
		te.t.Fatalf("delete the checkpointed task %s: %v", task.ID(), err)
	}
	return img
}

// expectCheckpointRefused checks that a checkpoint fails with an error
// naming want, and that the task runs on.
func (te *testEnv) expectCheckpointRefused(task client.Task, want string, opts ...client.CheckpointTaskOpts) {
	te.t.Helper()
	_, err := task.Checkpoint(te.ctx, opts...)
	if err == nil {
		te.t.Fatalf("checkpoint of %s succeeded; want an error naming %q", task.ID(), want)
	}
	te.t.Logf("checkpoint: %v", err)
	if !strings.Contains(err.Error(), want) {
		te.t.Errorf("checkpoint error %q does not name %q", err, want)
	}
	if st, err := task.Status(te.ctx); err != nil || st.Status != client.Running {
		te.t.Errorf("after a failed checkpoint: status %v, %v; want running", st.Status, err)
	}
}

// killAndDelete ends a (restored) task with SIGKILL: it exits 137, its
// output reaches EOF, and it is deleted.
func (te *testEnv) killAndDelete(what string, task client.Task, exitCh <-chan client.ExitStatus) {
	te.t.Helper()
	if err := task.Kill(te.ctx, syscall.SIGKILL); err != nil {
		te.t.Fatalf("kill %s: %v", what, err)
	}
	if code := te.waitExit(what, exitCh).ExitCode(); code != 137 {
		te.t.Fatalf("%s killed: exit status %d, want 137", what, code)
	}
	te.waitIO(what, task)
	if _, err := task.Delete(te.ctx); err != nil {
		te.t.Fatalf("delete %s: %v", what, err)
	}
}

// TestCheckpointExitRestore: a container checkpointed with exit stops with
// TaskCheckpointed before its TaskExit; a new task restored from the image
// goes on counting where it stopped, into the new task's stdout (the old
// task's fifos are gone); it is the task's init like any container's:
// exec, Kill, Wait, exit status, events.
func TestCheckpointExitRestore(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	rec := te.recordEvents()
	c := te.container("ckpt-exit", counter...)
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
	te.waitNumberAbove("counting before the checkpoint", out, 5)

	img, err := task.Checkpoint(te.ctx, checkpointExit(nil))
	if err != nil {
		t.Fatalf("checkpoint: %v%s", err, criuLogOf(err))
	}
	st := te.waitExit("checkpointed", exitCh)
	te.waitIO("checkpointed", task)
	// The client paused the task before the dump (its resume afterwards
	// finds the task gone).
	te.deleteAndExpectTopics(rec, task, "/tasks/create", "/tasks/start", "/tasks/paused",
		"/tasks/checkpointed", "/tasks/exit", "/tasks/delete")
	stopped := lastNumber(out.String())
	t.Logf("checkpointed at %d, exit status %d", stopped, st.ExitCode())

	restored := newSyncBuffer()
	task2, exit2 := te.restoreTask(c, te.io(nil, restored, io.Discard), client.WithTaskCheckpoint(img))
	te.expectContinues("restored", restored, stopped)
	pids, err := task2.Pids(te.ctx)
	if err != nil || len(pids) == 0 {
		t.Fatalf("pids of the restored task: %v, %v", pids, err)
	}
	execOut := newSyncBuffer()
	proc, execExit := te.startExec(task2, c, "probe", execOut, "sh", "-c", "echo exec-ok")
	if code := te.waitExit("exec in the restored task", execExit).ExitCode(); code != 0 || !strings.Contains(execOut.String(), "exec-ok") {
		t.Fatalf("exec in the restored task: status %d, output %q", code, execOut.String())
	}
	if _, err := proc.Delete(te.ctx); err != nil {
		t.Fatalf("delete exec: %v", err)
	}
	te.killAndDelete("restored", task2, exit2)
	events, err := rec.mark(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/checkpointed", "/tasks/exit", "/tasks/delete",
		"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit", "/tasks/delete"}
	if got := topics(taskEvents(events)); !slices.Equal(got, want) {
		t.Errorf("task events %s, want topics %v", rec.summary(taskEvents(events)), want)
	}
}

// TestCheckpointLeaveRunning: without exit the container is paused for
// the dump and runs on after it (TaskPaused, TaskCheckpointed,
// TaskResumed); a task restored from that image later starts again from
// the checkpoint's state.
func TestCheckpointLeaveRunning(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	rec := te.recordEvents()
	c := te.container("ckpt-run", counter...)
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
	te.waitNumberAbove("counting before the checkpoint", out, 5)
	img, err := task.Checkpoint(te.ctx)
	if err != nil {
		t.Fatalf("checkpoint: %v%s", err, criuLogOf(err))
	}
	at := lastNumber(out.String())
	st, err := task.Status(te.ctx)
	if err != nil || st.Status != client.Running {
		t.Fatalf("after a checkpoint without exit: status %v, %v; want running", st.Status, err)
	}
	te.waitNumberAbove("counting after the checkpoint", out, at+3)
	te.killAndDelete("checkpointed", task, exitCh)
	events, err := rec.mark(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/checkpointed", "/tasks/resumed", "/tasks/exit", "/tasks/delete"}
	if got := topics(taskEvents(events)); !slices.Equal(got, want) {
		t.Errorf("task events %s, want topics %v", rec.summary(taskEvents(events)), want)
	}

	restored := newSyncBuffer()
	task2, exit2 := te.restoreTask(c, te.io(nil, restored, io.Discard), client.WithTaskCheckpoint(img))
	te.waitNumberAbove("restored", restored, 0)
	if first := firstNumber(restored.String()); first > at+1 || first < 1 {
		t.Errorf("restored output starts at %d; the checkpoint was taken at %d", first, at)
	}
	te.killAndDelete("restored", task2, exit2)
}

// TestCheckpointTerminal: a container with a terminal is checkpointed
// with the terminal option and restored with a new terminal, where its
// output goes on.
func TestCheckpointTerminal(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	c := te.containerWith("ckpt-tty", nil, oci.WithTTY, oci.WithProcessArgs(counter...))
	out := newSyncBuffer()
	task := te.newTask(c, te.ttyIO(nil, out))
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(te.ctx); err != nil {
		t.Fatal(err)
	}
	te.waitNumberAbove("counting on the terminal", out, 5)
	img := te.checkpointAndEnd(task, exitCh, func(o *options.CheckpointOptions) { o.Terminal = true })
	stopped := lastNumber(out.String())

	restored := newSyncBuffer()
	task2, exit2 := te.restoreTask(c, te.ttyIO(nil, restored), client.WithTaskCheckpoint(img))
	te.expectContinues("restored on a new terminal", restored, stopped)
	te.killAndDelete("restored", task2, exit2)
}

// TestCheckpointPaused: a paused container can be checkpointed (the
// client does not pause it again); without exit it stays paused, frozen,
// until resumed. With exit, a paused container's restore runs.
func TestCheckpointPaused(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	rec := te.recordEvents()
	c := te.container("ckpt-paused", counter...)
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
	te.waitNumberAbove("counting", out, 3)
	if err := task.Pause(te.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Checkpoint(te.ctx); err != nil {
		t.Fatalf("checkpoint a paused task: %v%s", err, criuLogOf(err))
	}
	st, err := task.Status(te.ctx)
	if err != nil || st.Status != client.Paused {
		t.Fatalf("after the checkpoint: status %v, %v; want paused", st.Status, err)
	}
	if isFrozen, err := frozen(int(task.Pid())); err != nil || !isFrozen {
		t.Fatalf("after the checkpoint: cgroup frozen %v, %v; want frozen", isFrozen, err)
	}
	if err := task.Resume(te.ctx); err != nil {
		t.Fatal(err)
	}
	at := lastNumber(out.String())
	te.waitNumberAbove("counting after resume", out, at+2)

	if err := task.Pause(te.ctx); err != nil {
		t.Fatal(err)
	}
	img, err := task.Checkpoint(te.ctx, checkpointExit(nil))
	if err != nil {
		t.Fatalf("checkpoint a paused task with exit: %v%s", err, criuLogOf(err))
	}
	te.waitExit("checkpointed", exitCh)
	te.waitIO("checkpointed", task)
	te.deleteAndExpectTopics(rec, task, "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/checkpointed",
		"/tasks/resumed", "/tasks/paused", "/tasks/checkpointed", "/tasks/exit", "/tasks/delete")
	stopped := lastNumber(out.String())
	restored := newSyncBuffer()
	task2, exit2 := te.restoreTask(c, te.io(nil, restored, io.Discard), client.WithTaskCheckpoint(img))
	te.expectContinues("restored", restored, stopped)
	te.killAndDelete("restored", task2, exit2)
}

// TestCheckpointImagePath: the image goes where the checkpoint options
// say (ctr's --image-path; containerd then stores no image), criu's files
// and log where the work path says; the restore reads that directory
// (runtime option CriuImagePath) and puts its log in its own work path.
func TestCheckpointImagePath(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	dir := t.TempDir()
	image, work, restoreWork := filepath.Join(dir, "image"), filepath.Join(dir, "work"), filepath.Join(dir, "restore-work")
	for _, d := range []string{image, work, restoreWork} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	c := te.container("ckpt-path", counter...)
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
	te.waitNumberAbove("counting", out, 3)
	te.checkpointAndEnd(task, exitCh, func(o *options.CheckpointOptions) { o.ImagePath, o.WorkPath = image, work })
	for _, f := range []string{filepath.Join(image, "inventory.img"), filepath.Join(image, "descriptors.json"), filepath.Join(work, "dump.log")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after the checkpoint: %v", err)
		}
	}
	stopped := lastNumber(out.String())
	restored := newSyncBuffer()
	task2, exit2 := te.restoreTask(c, te.io(nil, restored, io.Discard),
		client.WithRestoreImagePath(image), client.WithRestoreWorkPath(restoreWork))
	te.expectContinues("restored", restored, stopped)
	if _, err := os.Stat(filepath.Join(restoreWork, "restore.log")); err != nil {
		t.Errorf("after the restore: %v", err)
	}
	te.killAndDelete("restored", task2, exit2)
}

// TestRestoreThenOOM: a restored container that then runs out of memory
// is reported like any other: TaskOOM before its TaskExit, status 137.
func TestRestoreThenOOM(t *testing.T) {
	requireCriu(t)
	mem := requireOOM(t)
	te := newTestEnv(t)
	rec := te.recordEvents()
	// It waits for /go, then fills its memory.
	c := te.oomContainer(mem, "ckpt-oom", []string{"sh", "-c", "echo ready; while [ ! -e /go ]; do sleep 0.1; done; " + oomHogShell})
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, te.io(nil, out, io.Discard))
	if err := out.waitFor(te.ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	img := te.checkpointAndEnd(task, exitCh, nil)
	task2, exit2 := te.restoreTask(c, te.io(nil, io.Discard, io.Discard), client.WithTaskCheckpoint(img))
	proc, execExit := te.startExec(task2, c, "go", io.Discard, "touch", "/go")
	if code := te.waitExit("touch /go", execExit).ExitCode(); code != 0 {
		t.Fatalf("touch /go: exit status %d", code)
	}
	if _, err := proc.Delete(te.ctx); err != nil {
		t.Fatal(err)
	}
	if code := te.waitExit("restored hog", exit2).ExitCode(); code != 137 {
		t.Errorf("restored hog: exit status %d, want 137 (OOM-killed)", code)
	}
	events := te.finishTask(rec, task2)
	// The restored task's events: from its TaskCreate on.
	var after []recordedEvent
	for i, e := range events {
		if e.Topic == "/tasks/create" {
			after = events[i:]
		}
	}
	te.expectOneOOMBefore(rec, after, "ckpt-oom", "ckpt-oom", 137)
}

// TestCheckpointErrors: what fails says why (criu's own line where criu
// failed), leaves the container as it was, and a failed restore leaves
// nothing behind.
func TestCheckpointErrors(t *testing.T) {
	requireCriu(t)
	t.Run("criu refuses", func(t *testing.T) {
		te := newTestEnv(t)
		// An established TCP connection inside the container: criu
		// dumps it only when told to (open TCP).
		// Both ends read a pipe that never ends: nc quits at EOF.
		c := te.container("ckpt-tcp", "sh", "-c", "sleep 1000 | nc -l -p 9000 >/dev/null & sleep 0.5; sleep 1000 | nc 127.0.0.1 9000")
		stderr := newSyncBuffer()
		task, _ := te.startTask(c, te.io(nil, io.Discard, stderr))
		established := false
		for i := 0; i < 50 && !established; i++ {
			time.Sleep(100 * time.Millisecond)
			tcp := newSyncBuffer()
			proc, exit := te.startExec(task, c, fmt.Sprintf("netstat-%d", i), tcp, "cat", "/proc/net/tcp")
			te.waitExit("cat /proc/net/tcp", exit)
			te.waitIO("cat /proc/net/tcp", proc)
			if _, err := proc.Delete(te.ctx); err != nil {
				t.Fatal(err)
			}
			// st 01: ESTABLISHED (the client's end; the server's, on
			// a dual-stack socket, is in tcp6)
			established = regexp.MustCompile(`: [0-9A-F]+:[0-9A-F]+ [0-9A-F]+:[0-9A-F]+ 01 `).MatchString(tcp.String())
			if i == 49 {
				t.Fatalf("no established connection in the container: /proc/net/tcp %q, stderr %q", tcp.String(), stderr.String())
			}
		}
		te.expectCheckpointRefused(task, "tcp-established") // criu's own line
	})
	t.Run("no criu", func(t *testing.T) {
		te := newTestEnv(t)
		wrapper := filepath.Join(t.TempDir(), "runc-no-criu")
		script := fmt.Sprintf("#!/bin/sh\nPATH=/nonexistent exec %s \"$@\"\n", te.h.s.runc())
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		c := te.containerWith("ckpt-nocriu", []client.NewContainerOpts{te.runtime(&options.Options{BinaryName: wrapper})},
			oci.WithProcessArgs("sleep", "1000"))
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		te.expectCheckpointRefused(task, `"criu": executable file not found`, checkpointExit(nil))
	})
	t.Run("bad image path", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("ckpt-badpath", counter...)
		task, err := c.NewTask(te.ctx, te.io(nil, io.Discard, io.Discard), client.WithRestoreImagePath("/nonexistent/checkpoint"))
		if err == nil {
			err = task.Start(te.ctx)
			if err == nil {
				te.destroyTask(task)
				t.Fatal("restored from a path that does not exist")
			}
			t.Logf("start: %v", err)
			if _, derr := task.Delete(te.ctx); derr != nil && !errdefs.IsNotFound(derr) {
				t.Fatalf("delete after the failed restore: %v", derr)
			}
		} else {
			t.Logf("create: %v", err)
		}
		if !strings.Contains(err.Error(), "/nonexistent/checkpoint") {
			t.Errorf("error %q does not name the image path", err)
		}
		if leaks := te.h.leaksIn(te.ns); len(leaks) > 0 {
			t.Errorf("left behind: %s", strings.Join(leaks, "; "))
		}
	})
}

// TestCheckpointCRI: kubelet's forensic checkpoint (CRI
// CheckpointContainer): the container keeps running, and the archive
// holds criu's image, the stdio record among it.
func TestCheckpointCRI(t *testing.T) {
	requireCriu(t)
	te := newTestEnv(t)
	e := startCRI(t, te)
	pod := e.runPod(t, te, "ckpt-pod")
	id := pod.startContainer(t, te, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "counter"},
		Image:    &runtimeapi.ImageSpec{Image: te.h.imageRef},
		Command:  counter,
		LogPath:  "counter.log",
	})
	logFile := filepath.Join(pod.cfg.LogDirectory, "counter.log")
	lines := func() int {
		data, _ := os.ReadFile(logFile)
		return strings.Count(string(data), "\n")
	}
	deadline := time.Now().Add(30 * time.Second)
	for lines() < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	archive := filepath.Join(t.TempDir(), "checkpoint.tar")
	if _, err := e.rt.CheckpointContainer(te.ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: archive, Timeout: 60}); err != nil {
		t.Fatalf("checkpoint container: %v%s", err, criuLogOf(err))
	}
	st, err := e.rt.ContainerStatus(te.ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("after the checkpoint: %v, %v; want running", st.GetStatus().GetState(), err)
	}
	at := lines()
	for lines() < at+3 && time.Now().Before(deadline.Add(30*time.Second)) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := lines(); n < at+3 {
		t.Errorf("the container's log stopped at %d lines after the checkpoint", n)
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read the archive: %v", err)
		}
		found[strings.TrimPrefix(h.Name, "./")] = true
	}
	want := []string{"checkpoint/inventory.img", "config.dump", "spec.dump"}
	if te.h.ours() {
		// This shim's record of the fifos it gave the container.
		want = append(want, "checkpoint/stdio-external.json")
	}
	for _, want := range want {
		if !found[want] {
			t.Errorf("the archive lacks %s", want)
		}
	}
	pod.remove(t, te)
}

// TestRestoreAcrossShims: a checkpoint taken under containerd's own shim
// (whose containers write into pipes it copies) restores under this one,
// as after replacing the shim on a node: the restored process writes
// into the new task's fifos. The other way round, containerd's shim
// cannot restore this shim's image (it does not hand criu the new task's
// stdio for the recorded fifos); the test logs what it says.
func TestRestoreAcrossShims(t *testing.T) {
	requireCriu(t)
	ref := os.Getenv("REF_SHIM_BINARY")
	if ref == "" {
		if os.Getenv("REQUIRE_CRIU") == "1" {
			t.Fatal("REF_SHIM_BINARY (containerd's own shim) is not set")
		}
		t.Skip("REF_SHIM_BINARY (containerd's own shim) is not set")
	}
	te := newTestEnv(t)
	checkpoint := func(id string, opts ...client.NewTaskOpts) (client.Container, client.Image, int) {
		t.Helper()
		c := te.container(id, counter...)
		out := newSyncBuffer()
		task := te.newTask(c, te.io(nil, out, io.Discard), opts...)
		exitCh, err := task.Wait(te.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(te.ctx); err != nil {
			t.Fatal(err)
		}
		te.waitNumberAbove(id+" counting", out, 3)
		img := te.checkpointAndEnd(task, exitCh, nil)
		return c, img, lastNumber(out.String())
	}

	c, img, stopped := checkpoint("from-ref", client.WithRuntimePath(ref))
	restored := newSyncBuffer()
	task, exitCh := te.restoreTask(c, te.io(nil, restored, io.Discard), client.WithTaskCheckpoint(img))
	te.expectContinues("restored under this shim", restored, stopped)
	te.killAndDelete("restored under this shim", task, exitCh)

	c, img, _ = checkpoint("to-ref")
	task2, err := c.NewTask(te.ctx, te.io(nil, io.Discard, io.Discard), client.WithTaskCheckpoint(img), client.WithRuntimePath(ref))
	if err == nil {
		err = task2.Start(te.ctx)
		te.destroyTask(task2)
	}
	t.Logf("this shim's checkpoint restored under containerd's shim: %v", err)
}
