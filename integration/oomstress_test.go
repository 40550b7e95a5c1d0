package integration

import (
	"oomshim/testkit"

	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// Defaults of the OOM stress test (`make test`); `make stress` runs 100 x 100.
const (
	defaultOOMStressContainers = 8
	defaultOOMStressRounds     = 10
)

// envCount reads a positive integer from the environment.
func envCount(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}

// oomRunBudget bounds one container's run (create to delete) when n run at
// once on this machine; a run past it counts as failed, the round goes on.
func oomRunBudget(n int) time.Duration {
	return 2*time.Minute + time.Duration(n)*time.Second
}

// oomRun is one container's run as the client saw it.
type oomRun struct {
	id   string
	code uint32 // Wait's exit status
	err  error
}

// TestOOMStress runs OOM_STRESS_ROUNDS rounds of OOM_STRESS_CONTAINERS
// containers that each get OOM-killed, the containers of a round at once
// (so at most OOM_STRESS_CONTAINERS run at any time), each deleted as soon
// as Wait returns, as CRI does. Every run must exit 137 and its container
// must have exactly one TaskOOM, published before its TaskExit. (The
// reference shim on cgroup v1 publishes TaskOOM from its own goroutine,
// unordered with the exit.)
func TestOOMStress(t *testing.T) {
	mem := requireOOM(t)
	containers := envCount(t, "OOM_STRESS_CONTAINERS", defaultOOMStressContainers)
	rounds := envCount(t, "OOM_STRESS_ROUNDS", defaultOOMStressRounds)
	te := newTestEnvTimeout(t, time.Duration(rounds)*oomRunBudget(containers)+2*time.Minute)
	img := te.Image()
	rec := te.recordEvents()
	// Each run deletes what it made; this catches what a failed run left.
	t.Cleanup(te.deleteAllContainers)
	t.Logf("%d containers x %d rounds, OOM-killed under %d MiB (%s)", containers, rounds, oomLimit>>20, mem.mode)

	var runs []oomRun
	started := time.Now()
	every := max(1, rounds/10)
	for r := range rounds {
		res := make([]oomRun, containers)
		var wg sync.WaitGroup
		roundStart := time.Now()
		for i := range containers {
			res[i].id = fmt.Sprintf("oom-r%d-c%d", r, i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i].code, res[i].err = te.runOOMOnce(mem, img, res[i].id, oomRunBudget(containers))
			}()
		}
		wg.Wait()
		runs = append(runs, res...)
		// A shim exits a moment after its container's Delete returned: the
		// next round starts once this round's shims are gone, so no more
		// than OOM_STRESS_CONTAINERS shims ever run at once.
		if lingering := te.waitShimsGone(); len(lingering) > 0 {
			t.Errorf("round %d: %d shim(s) still running %v after their containers were deleted, e.g. %s",
				r+1, len(lingering), shimExitGrace, lingering[0])
		}
		if r%every == 0 || r == rounds-1 {
			bad := 0
			for _, run := range res {
				if run.err != nil || run.code != 137 {
					bad++
				}
			}
			t.Logf("round %d/%d: %d containers in %v, %d failed or not 137", r+1, rounds, containers,
				time.Since(roundStart).Round(time.Millisecond), bad)
		}
		if te.ctx.Err() != nil {
			t.Errorf("the test's deadline hit after %d of %d rounds", r+1, rounds)
			break
		}
	}
	elapsed := time.Since(started)

	// Everything published before the marker has been recorded: the
	// verdict is on the complete stream (the test's context may be spent).
	ctx, cancel := te.cleanupCtx()
	defer cancel()
	events, err := rec.mark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	procs := make(map[string]string, len(runs))
	for _, run := range runs {
		procs[run.id] = run.id
	}
	verdicts, strays := judgeOOMs(events, procs)

	var failed, wrongCode, missingOOM, dupOOM, oomAfterExit, missingExit, dupExit, wrongExitEvent []string
	oomBeforeStart := 0
	for _, run := range runs {
		j := verdicts[run.id]
		switch {
		case run.err != nil:
			failed = append(failed, fmt.Sprintf("%s: %v", run.id, run.err))
		case run.code != 137:
			wrongCode = append(wrongCode, fmt.Sprintf("%s: %d", run.id, run.code))
		}
		switch {
		case j.ooms == 0:
			missingOOM = append(missingOOM, run.id)
		case j.ooms > 1:
			dupOOM = append(dupOOM, fmt.Sprintf("%s: %d", run.id, j.ooms))
		}
		switch {
		case j.exits == 0:
			missingExit = append(missingExit, run.id)
		case j.exits > 1:
			dupExit = append(dupExit, run.id)
		}
		if j.exits > 0 && j.exitStatus != 137 {
			wrongExitEvent = append(wrongExitEvent, fmt.Sprintf("%s: %d", run.id, j.exitStatus))
		}
		if j.firstOOM >= 0 && j.exit >= 0 && j.firstOOM > j.exit {
			oomAfterExit = append(oomAfterExit, run.id)
		}
		if j.firstOOM >= 0 && (j.start < 0 || j.firstOOM < j.start) {
			oomBeforeStart++
		}
	}

	n := len(runs)
	t.Logf("%d runs in %v (%v per round of %d), %d events recorded", n, elapsed.Round(time.Millisecond),
		(elapsed / time.Duration(max(1, n/containers))).Round(time.Millisecond), containers, len(events))
	t.Logf("%d missing and %d misordered TaskOOM/TaskExit", len(missingOOM), len(oomAfterExit))
	t.Logf("runs %d; TaskOOM missing %d, duplicated %d, after TaskExit %d; TaskExit missing %d, duplicated %d; "+
		"wrong exit codes %d (Wait) + %d (TaskExit); failed runs %d; stray task events %d",
		n, len(missingOOM), len(dupOOM), len(oomAfterExit), len(missingExit), len(dupExit),
		len(wrongCode), len(wrongExitEvent), len(failed), len(strays))
	// Not a failure: the kernel may kill dd before the shim has published
	// TaskStart (runc start returns after the process runs).
	t.Logf("informational: TaskOOM published before the container's TaskStart in %d runs", oomBeforeStart)

	report := reporter(t, n, "runs")
	report("run failed", failed)
	report("Wait's exit status is not 137", wrongCode)
	report("TaskOOM missing", missingOOM)
	report("TaskOOM published more than once", dupOOM)
	report("TaskOOM published after the TaskExit", oomAfterExit)
	report("TaskExit missing", missingExit)
	report("TaskExit published more than once", dupExit)
	report("TaskExit status is not 137", wrongExitEvent)
	if len(strays) > 0 {
		t.Errorf("task events for unknown containers: %d, e.g. %s", len(strays), rec.summary(strays[:min(len(strays), 10)]))
	}

	// The event sequences and logs of the first two offenders of each kind.
	for _, list := range [][]string{oomAfterExit, missingOOM, dupOOM, missingExit, wrongExitEvent} {
		for _, s := range firstN(list, 2) {
			if id := strings.SplitN(s, ":", 2)[0]; id != "..." {
				t.Logf("%s: task events %s\n%s", id, rec.summary(eventsOf(events, id)), te.logExcerpt(id, 30))
			}
		}
	}
}

// runOOMOnce runs one OOM-killed container from create to delete, without
// stdio (the shim gives it /dev/null), and returns Wait's exit status. It
// deletes what it made whatever happens and never calls t.Fatal: it runs
// on its own goroutine.
func (te *testEnv) runOOMOnce(mem memoryCgroups, img client.Image, id string, budget time.Duration) (code uint32, err error) {
	ctx, cancel := context.WithTimeout(te.ctx, budget)
	defer cancel()
	driverCopts, driverSopts := te.cgroupOpts(id)
	c, err := te.c.NewContainer(ctx, id, append(driverCopts,
		client.WithNewSnapshot(id+"-rootfs", img),
		client.WithNewSpec(append(append([]oci.SpecOpts{oci.WithImageConfig(img)}, driverSopts...), oomSpec(mem, oomHog...)...)...))...)
	if err != nil {
		return 0, fmt.Errorf("create container: %w", err)
	}
	defer func() {
		cctx, ccancel := te.cleanupCtx()
		defer ccancel()
		if derr := c.Delete(cctx, client.WithSnapshotCleanup); derr != nil && !errdefs.IsNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("delete container: %w", derr))
		}
	}()
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		return 0, fmt.Errorf("create task: %w", err)
	}
	deleted := false
	defer func() {
		if deleted {
			return
		}
		cctx, ccancel := te.cleanupCtx()
		defer ccancel()
		if _, derr := task.Delete(cctx, client.WithProcessKill); derr != nil && !errdefs.IsNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("delete task at cleanup: %w", derr))
		}
	}()
	exitCh, err := task.Wait(ctx)
	if err != nil {
		return 0, fmt.Errorf("wait: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return 0, fmt.Errorf("start: %w", err)
	}
	var st client.ExitStatus
	select {
	case st = <-exitCh:
	case <-ctx.Done():
		return 0, fmt.Errorf("no exit within %v: %w", budget, ctx.Err())
	}
	if err := st.Error(); err != nil {
		return 0, fmt.Errorf("exit status: %w", err)
	}
	if _, err := task.Delete(ctx); err != nil {
		return st.ExitCode(), fmt.Errorf("delete task: %w", err)
	}
	deleted = true
	return st.ExitCode(), nil
}

// deleteAllContainers kills and deletes every task and container left in
// te's namespace, with their snapshots.
func (te *testEnv) deleteAllContainers() {
	ctx, cancel := te.cleanupCtx()
	defer cancel()
	cs, err := te.c.Containers(ctx)
	if err != nil {
		te.t.Errorf("cleanup: list containers: %v", err)
		return
	}
	for _, c := range cs {
		if task, err := c.Task(ctx, nil); err == nil {
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				te.t.Errorf("cleanup: delete task %s: %v", c.ID(), err)
			}
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			te.t.Errorf("cleanup: delete container %s: %v", c.ID(), err)
		}
	}
}

// waitShimsGone waits (on pidfds, bounded by shimExitGrace each) until no
// shim of te's namespace runs, and returns those that still do.
func (te *testEnv) waitShimsGone() []shimProc {
	var out []shimProc
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && testkit.WaitPidExit(p.PID, shimExitGrace) != nil {
			out = append(out, p)
		}
	}
	return out
}
