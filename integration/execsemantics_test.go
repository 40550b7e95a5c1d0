package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"oomshim/testkit"
)

// TestExecTerminalFromRequest: an exec whose request asks for a terminal
// gets one although its process spec says terminal: false (the request's
// flag wins, as with the stock shim; runc alone refuses the combination).
func TestExecTerminalFromRequest(t *testing.T) {
	te := newTestEnv(t)
	c := te.container("host", "sleep", "1000")
	task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	spec := te.processSpec(c, "tty")
	spec.Terminal = false
	out := newSyncBuffer()
	proc, exitCh := te.startSpec(task, "tty", spec, te.ttyIO(nil, out))
	if code := te.waitExit("tty exec", exitCh).ExitCode(); code != 0 {
		t.Errorf("tty exited %d, want 0 (output %q)", code, out.String())
	}
	te.waitIO("tty exec", proc)
	if !strings.Contains(out.String(), "/dev/pts/") {
		t.Errorf("exec output %q, want its terminal's name", out.String())
	}
}

// holdingRunc writes a runc wrapper that holds every `runc exec` until
// release is called: it reports on held (a fifo the test reads) and waits
// on the release fifo. At cleanup anything still held is released.
func holdingRunc(t *testing.T, te *testEnv) (binary string, held <-chan struct{}, release func()) {
	t.Helper()
	dir := t.TempDir()
	heldFifo, releaseFifo := filepath.Join(dir, "held"), filepath.Join(dir, "release")
	for _, f := range []string{heldFifo, releaseFifo} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	binary = filepath.Join(dir, "runc")
	script := fmt.Sprintf(`#!/bin/sh
for a; do
	if [ "$a" = exec ]; then
		echo held > %[1]s
		read x < %[2]s
		break
	fi
done
exec %[3]s "$@"
`, heldFifo, releaseFifo, te.h.s.runc())
	if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// O_RDWR: neither end blocks on the other being there.
	hf, err := os.OpenFile(heldFifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rf, err := os.OpenFile(releaseFifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 4)
	go func() {
		buf := make([]byte, 5)
		for {
			if _, err := io.ReadFull(hf, buf); err != nil {
				return
			}
			ch <- struct{}{}
		}
	}()
	var once sync.Once
	release = func() { once.Do(func() { rf.WriteString("go\n") }) }
	t.Cleanup(func() {
		release()
		rf.Close()
		hf.Close()
	})
	return binary, ch, release
}

// untilExitOf waits for the TaskExit of container id's init and returns
// every event recorded until then (and a little after: up to a marker).
func (r *recorder) untilExitOf(t *testing.T, id string) []recordedEvent {
	t.Helper()
	if _, err := r.waitFor(r.te.ctx, "the TaskExit of "+id, func(e recordedEvent) bool {
		ex, ok := e.Event.(*eventstypes.TaskExit)
		return ok && ex.ID == id
	}); err != nil {
		t.Fatal(err)
	}
	events, err := r.mark(r.te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

// TestInitDiesWhileExecStarts: an exec counts as running from the moment
// its Start is called. The init killed while `runc exec` is still at work
// (a runc wrapper holds it): the init's TaskExit is held until that exec
// has started and exited, or failed; meanwhile another exec can be added,
// and its Start fails with FailedPrecondition.
func TestInitDiesWhileExecStarts(t *testing.T) {
	te := newTestEnv(t)
	runcBin, held, release := holdingRunc(t, te)
	c := te.containerWith("held", []client.NewContainerOpts{
		te.runtime(&options.Options{BinaryName: runcBin}),
	}, oci.WithProcessArgs("sleep", "1000"))
	rec := te.recordEvents()
	task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	e1, err := te.exec(task, c, "slow", te.io(nil, io.Discard, io.Discard), "true")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- e1.Start(te.ctx) }()
	select {
	case <-held:
	case <-te.ctx.Done():
		t.Fatal("runc exec never ran")
	}
	pid := int(task.Pid())
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := testkit.WaitPidExit(pid, 10*time.Second); err != nil {
		t.Fatal(err) // reaped by the shim from here on
	}
	e2, err := te.exec(task, c, "late", te.io(nil, io.Discard, io.Discard), "true")
	if err != nil {
		t.Fatalf("Exec while the init's exit is held: %v, want it added", err)
	}
	if err := e2.Start(te.ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start of an exec after the init died: %v, want FailedPrecondition", err)
	}
	select {
	case st := <-exitCh:
		t.Fatalf("the init's exit (%d) was delivered while an exec was still starting", st.ExitCode())
	default:
	}
	release()
	startErr := <-started
	t.Logf("the held exec's Start: %v", startErr)
	if code := te.waitExit("init", exitCh).ExitCode(); code != 137 {
		t.Errorf("init exit status %d, want 137", code)
	}
	events := rec.untilExitOf(t, c.ID())
	initExit := -1
	for i, e := range events {
		if ex, ok := e.Event.(*eventstypes.TaskExit); ok && ex.ID == c.ID() {
			initExit = i
		}
	}
	if initExit < 0 {
		t.Fatalf("no TaskExit of the init in %s", rec.summary(events))
	}
	for _, e := range events[initExit+1:] {
		switch ev := e.Event.(type) {
		case *eventstypes.TaskExecStarted:
			t.Errorf("the exec started after the init's TaskExit: %s", rec.summary(events))
		case *eventstypes.TaskExit:
			t.Errorf("exec %s's TaskExit after the init's: %s", ev.ID, rec.summary(events))
		}
	}
}

// TestSharedPIDNamespace: a container without a PID namespace of its own
// (hostPID, a pod's shareProcessNamespace) loses its other processes with
// its init, as with the stock shim: an exec still running is killed, and
// its TaskExit comes before the init's.
func TestSharedPIDNamespace(t *testing.T) {
	te := newTestEnv(t)
	c := te.containerWith("hostpid", nil, oci.WithHostNamespace(specs.PIDNamespace), oci.WithProcessArgs("sleep", "1000"))
	rec := te.recordEvents()
	task, exitCh := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	_, execExit := te.startExec(task, c, "sleeper", io.Discard, "sleep", "1000")
	// The init dies by itself (as by the OOM killer), not through runc,
	// which kills the whole container for a SIGKILL to such an init.
	if err := unix.Kill(int(task.Pid()), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := te.waitExit("exec", execExit).ExitCode(); code != 137 {
		t.Errorf("exec exit status %d, want 137 (killed with the init)", code)
	}
	te.waitExit("init", exitCh)
	events := rec.untilExitOf(t, c.ID())
	var exits []string
	for _, e := range events {
		if ex, ok := e.Event.(*eventstypes.TaskExit); ok {
			exits = append(exits, ex.ID)
		}
	}
	if strings.Join(exits, ",") != "sleeper,"+c.ID() {
		t.Errorf("TaskExit order %v, want the exec's, then the init's: %s", exits, rec.summary(events))
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

// TestConcurrentExecStarts: Start called from many goroutines at once for
// one exec creates one process.
func TestConcurrentExecStarts(t *testing.T) {
	te := newTestEnv(t)
	c := te.container("host", "sleep", "1000")
	task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	// No fifos: containerd's client removes a process's fifos when its
	// Start fails, which with ten Starts on one process object could pull
	// them from under the one that wins (seen once in the systemd VM:
	// "open stdout: ... no such file or directory").
	proc, err := te.exec(task, c, "once", cio.NullIO, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 10)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = proc.Start(te.ctx)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent Starts succeeded, want 1: %v", ok, len(errs), errors.Join(errs...))
	}
	pids, err := task.Pids(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 2 {
		t.Errorf("container has %d processes, want 2 (the init and one exec): %v", len(pids), pids)
	}
}

// TestStdinReattachCloseIO: as containerd's clients use stdin: write a
// line, detach, attach again, write a second line, close stdin and call
// CloseIO at once. Everything written reaches the process before its EOF,
// every time, with and without a terminal.
func TestStdinReattachCloseIO(t *testing.T) {
	for _, tty := range []bool{false, true} {
		name := "pipe"
		if tty {
			name = "terminal"
		}
		t.Run(name, func(t *testing.T) {
			te := newTestEnv(t)
			for round := range 10 {
				stdinReattachRound(t, te, fmt.Sprintf("%s-%d", name, round), tty)
			}
		})
	}
}

func stdinReattachRound(t *testing.T, te *testEnv, id string, tty bool) {
	t.Helper()
	sopts := []oci.SpecOpts{oci.WithProcessArgs("sh", "-c", "stty -echo 2>/dev/null; while read l; do echo got-$l; done; echo eof")}
	newIO := func(stdin io.Reader, out io.Writer) cio.Creator { return te.io(stdin, out, io.Discard) }
	if tty {
		sopts = append(sopts, oci.WithTTY)
		newIO = te.ttyIO
	}
	c := te.containerWith(id, nil, sopts...)
	stdin1, w1 := io.Pipe()
	out := newSyncBuffer()
	task, exitCh := te.startTask(c, newIO(stdin1, out))
	io.WriteString(w1, "one\n")
	if err := out.waitFor(te.ctx, "got-one"); err != nil {
		t.Fatalf("%s: first line: %v (output %q)", id, err, out.String())
	}
	// Detach: the client's stdin copy ends and closes its fifo writer.
	w1.Close()
	// Attach again, as `ctr task attach` does: a new writer on the same fifo.
	w2, err := os.OpenFile(task.IO().Config().Stdin, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("%s: attach to stdin: %v", id, err)
	}
	if _, err := io.WriteString(w2, "two\n"); err != nil {
		t.Fatalf("%s: write after re-attaching: %v", id, err)
	}
	w2.Close()
	if err := task.CloseIO(te.ctx, client.WithStdinCloser); err != nil {
		t.Fatalf("%s: CloseIO: %v", id, err)
	}
	te.waitExit(id, exitCh)
	te.waitIO(id, task)
	if got := out.String(); !strings.Contains(got, "got-two") {
		t.Errorf("%s: the line written after re-attaching never reached the process: output %q", id, got)
	}
	if !strings.Contains(out.String(), "eof") {
		t.Errorf("%s: the process never read EOF: output %q", id, out.String())
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatalf("%s: delete: %v", id, err)
	}
}

// TestConcurrentCalls: Start, Kill, Delete, Exec, Pause, Resume and Update
// of one container (created, or running) from 50 goroutines at once,
// through containerd. No call
// hangs or fails with an undefined code (Unknown, Internal), the init is
// started at most once (one TaskStart), every exec that started has a pid
// of its own, and the namespace is left clean.
func TestConcurrentCalls(t *testing.T) {
	for _, started := range []bool{false, true} {
		t.Run(map[bool]string{false: "created", true: "running"}[started], func(t *testing.T) {
			concurrentCalls(t, started)
		})
	}
}

func concurrentCalls(t *testing.T, started bool) {
	te := newTestEnv(t)
	rec := te.recordEvents()
	c := te.container("busy", "sleep", "1000")
	task := te.newTask(c, cio.NullIO)
	if started {
		if err := task.Start(te.ctx); err != nil {
			t.Fatal(err)
		}
	}
	ops := []string{"start", "exec", "exec", "exec", "exec", "kill", "pause", "resume", "update", "delete"}
	pidsLimit := int64(100)
	var (
		mu       sync.Mutex
		starts   int
		execPids = map[uint32]string{}
		bad      []string
		outcomes = map[string]int{}
		wg       sync.WaitGroup
	)
	gate := make(chan struct{})
	for i := range 50 {
		op := ops[i%len(ops)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			// A task object of its own: the client's is not safe for
			// concurrent use.
			task, err := c.Task(te.ctx, nil)
			if err != nil {
				if !errdefs.IsNotFound(err) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("load the task (goroutine %d): %v", i, err))
					mu.Unlock()
				}
				return
			}
			switch op {
			case "start":
				if err = task.Start(te.ctx); err == nil {
					mu.Lock()
					starts++
					mu.Unlock()
				}
			case "exec":
				id := fmt.Sprintf("e%d", i)
				var p client.Process
				if p, err = task.Exec(te.ctx, id, te.processSpec(c, "sleep", "1000"), cio.NullIO); err == nil {
					if err = p.Start(te.ctx); err == nil {
						mu.Lock()
						execPids[p.Pid()] = id
						mu.Unlock()
					}
				}
			case "kill":
				// SIGWINCH, which sleep ignores, so that the other calls
				// meet a live container (the cleanup's SIGKILL ends it).
				err = task.Kill(te.ctx, unix.SIGWINCH)
			case "pause":
				err = task.Pause(te.ctx)
			case "resume":
				err = task.Resume(te.ctx)
			case "update":
				err = task.Update(te.ctx, client.WithResources(&specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pidsLimit}}))
			case "delete":
				_, err = task.Delete(te.ctx)
			}
			if err != nil {
				mu.Lock()
				outcomes[op+": "+firstLine(err)]++
				mu.Unlock()
			}
			if err != nil && !errorIs(err, errdefs.IsNotFound, errdefs.IsFailedPrecondition, errdefs.IsInvalidArgument,
				errdefs.IsAlreadyExists, errdefs.IsUnavailable, errdefs.IsNotImplemented, errdefs.IsConflict) {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s (goroutine %d): %v", op, i, err))
				mu.Unlock()
			}
		}()
	}
	close(gate)
	wg.Wait()
	for _, b := range bad {
		t.Errorf("undefined error: %s", b)
	}
	if starts > 1 {
		t.Errorf("the init was started %d times", starts)
	}
	// Kill and delete whatever is left, then count the starts containerd saw.
	ctx, cancel := te.cleanupCtx()
	defer cancel()
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		t.Fatalf("delete the task: %v", err)
	}
	events, err := rec.mark(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	initStarts := 0
	execStarts := map[uint32]bool{}
	for _, e := range events {
		switch ev := e.Event.(type) {
		case *eventstypes.TaskStart:
			initStarts++
		case *eventstypes.TaskExecStarted:
			if execStarts[ev.Pid] {
				t.Errorf("two execs started with pid %d", ev.Pid)
			}
			execStarts[ev.Pid] = true
		}
	}
	if started {
		starts++ // the one before the storm
	}
	if initStarts != starts {
		t.Errorf("%d TaskStart events for %d successful Starts", initStarts, starts)
	}
	if len(execStarts) != len(execPids) {
		t.Errorf("%d TaskExecStarted events for %d started execs", len(execStarts), len(execPids))
	}
	t.Logf("%d init start, %d execs started; %d events; refusals: %v", starts, len(execPids), len(events), outcomes)
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
