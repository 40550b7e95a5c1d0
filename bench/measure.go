package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// The two shims, by index: samples are kept as [2]... in this order.
const (
	ours = 0
	ref  = 1
)

var shortName = [2]string{"o", "r"}

// order alternates which shim goes first, sample by sample.
func order(i int) [2]int {
	if i%2 == 0 {
		return [2]int{ours, ref}
	}
	return [2]int{ref, ours}
}

// results holds every sample of a run, per shim.
type results struct {
	started  time.Time
	took     time.Duration
	load     string // load average when the run started
	versions string // containerd and runc

	built, stripped [2]int64 // bytes

	idleRSS, idlePSS  [2][]float64 // kB per shim process
	idleSwitches      [2][]float64 // per shim process over the window
	idleThreads       [2][]float64
	idleWindowSeconds float64

	roundTrip [2][]float64 // ms
	exec      [2][]float64 // ms
	// CPU per `ctr task exec`, ms: the shim's own threads, and its reaped
	// children (runc, clock-tick resolution).
	execSelfCPU, execChildCPU [2]float64
	directExec                [2][]float64 // ms, Exec+Start+Wait+Delete at the shim's API
	parallel                  [2][]float64 // ms per round

	startToOOM, oomToExit [2][]float64 // ms, from envelope timestamps
	callToOOM             [2][]float64 // ms, from the client's Start call to the TaskOOM envelope
	startStampLag         [2][]float64 // ms, TaskStart envelope minus the Start call's return
	oomMissing, oomRuns   [2]int       // runs without a TaskOOM; all runs
	oomLostEvents         [2]int       // runs without TaskStart or TaskExit
	oomBadStatus          [2]int       // exit status other than 137

	// Shim CPU per container lifecycle, summed: the server's own threads,
	// and the start action's (containerd's cutime+cstime).
	lifeServer, lifeStart [2]time.Duration
	lifeRuns              [2]int
	lifePhases            [2][nPhases][]float64 // ms per lifecycle, as the client sees each phase

	pods  []*podPhase // per pod count
	floor *floorReading

	stormDelay                                    [2][]float64 // ms, kill -> TaskOOM arrival
	stormStamped                                  [2][]float64 // ms, kill -> TaskOOM's envelope timestamp
	stormMisordered, stormNoKill, stormContainers [2]int
}

func (e *env) shims() [2]shim { return [2]shim{e.cfg.ours, e.cfg.ref} }

// stepNames are runAll's steps, in order.
var stepNames = []string{"sizes", "idle", "roundtrips", "execs", "parallel", "oom", "lifecycle", "pods", "floor", "storm"}

// runAll runs every benchmark once.
func (e *env) runAll(ctx context.Context) (*results, error) {
	ctx = e.nsCtx(ctx)
	r := &results{started: time.Now(), load: loadAvg(), versions: toolVersions(e.cfg)}
	steps := []struct {
		name string
		run  func(context.Context, *results) error
	}{
		{"sizes", e.sizes},
		{"idle", e.idle},
		{"roundtrips", e.roundTrips},
		{"execs", e.execs},
		{"parallel", e.parallelStarts},
		{"oom", e.ooms},
		{"lifecycle", e.lifecycleCPU},
		{"pods", e.podPhases},
		{"floor", e.floor},
		{"storm", e.oomStorms},
	}
	for _, s := range steps {
		if e.cfg.steps != nil && !e.cfg.steps[s.name] {
			continue
		}
		t0 := time.Now()
		progress("%s ...", s.name)
		if err := s.run(ctx, r); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		progress("%s done in %s", s.name, time.Since(t0).Round(100*time.Millisecond))
	}
	r.took = time.Since(r.started)
	return r, nil
}

// podPhases runs the pod phase at each pod count; the last one also gets
// the Stats calls.
func (e *env) podPhases(ctx context.Context, r *results) error {
	for i, n := range e.cfg.podCounts {
		ph, err := e.podMemory(ctx, n, i == len(e.cfg.podCounts)-1)
		if err != nil {
			return fmt.Errorf("%d pods: %w", n, err)
		}
		r.pods = append(r.pods, ph)
		e.waitShimsGone(ctx, time.Minute)
	}
	return nil
}

func toolVersions(cfg config) string {
	v := func(bin string, args ...string) string {
		out, err := exec.Command(filepath.Join(cfg.toolsBin, bin), args...).Output()
		if err != nil {
			return bin + " ?"
		}
		line := string(out)
		for i, c := range line {
			if c == '\n' {
				line = line[:i]
				break
			}
		}
		return line
	}
	return v("containerd", "--version") + "; " + v("runc", "--version")
}

// sizes: each binary as built and a `strip`ped copy.
func (e *env) sizes(ctx context.Context, r *results) error {
	for i, s := range e.shims() {
		st, err := os.Stat(s.path)
		if err != nil {
			return err
		}
		r.built[i] = st.Size()
		tmp := filepath.Join(e.Base, "stripped-"+shortName[i])
		if out, err := exec.CommandContext(ctx, "strip", "-o", tmp, s.path).CombinedOutput(); err != nil {
			return fmt.Errorf("strip %s: %v: %s", s.path, err, out)
		}
		if st, err = os.Stat(tmp); err != nil {
			return err
		}
		r.stripped[i] = st.Size()
		os.Remove(tmp)
	}
	return nil
}

// newContainer creates a container of the busybox image served by shim s.
func (e *env) newContainer(ctx context.Context, id string, s shim, sopts ...oci.SpecOpts) (client.Container, error) {
	return e.Client.NewContainer(ctx, id,
		client.WithNewSnapshot(id+"-snap", e.image),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(e.image)}, sopts...)...),
		client.WithRuntime(s.path, nil),
	)
}

// startTask creates and starts c's task with no stdio.
func startTask(ctx context.Context, c client.Container) (client.Task, error) {
	t, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", c.ID(), err)
	}
	if err := t.Start(ctx); err != nil {
		_, _ = t.Delete(ctx, client.WithProcessKill)
		return nil, fmt.Errorf("start task %s: %w", c.ID(), err)
	}
	return t, nil
}

// cleanupCtx outlives an interrupted run's context.
func (e *env) cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.nsCtx(context.Background()), 2*time.Minute)
}

func (e *env) destroyLater(cs *[]client.Container) {
	ctx, cancel := e.cleanupCtx()
	defer cancel()
	if err := destroyAll(ctx, *cs); err != nil {
		progress("cleanup: %v", err)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// idle starts cfg.idle sleeping containers per shim (each with its own
// shim), lets them settle, counts every shim's context switches over the
// window, then reads each shim's Rss and Pss.
func (e *env) idle(ctx context.Context, r *results) error {
	var cs []client.Container
	defer e.destroyLater(&cs)
	shims := e.shims()
	for i := 0; i < e.cfg.idle; i++ {
		for _, s := range order(i) {
			c, err := e.newContainer(ctx, fmt.Sprintf("idle-%s-%d", shortName[s], i), shims[s], oci.WithProcessArgs("sleep", "86400"))
			if err != nil {
				return err
			}
			cs = append(cs, c)
			if _, err := startTask(ctx, c); err != nil {
				return err
			}
		}
	}
	var pids, idx [2][]int // idx: start order of the container
	for s := range shims {
		servers := e.shimServers(shims[s])
		for i := 0; i < e.cfg.idle; i++ {
			if pid, ok := servers[fmt.Sprintf("idle-%s-%d", shortName[s], i)]; ok {
				pids[s] = append(pids[s], pid)
				idx[s] = append(idx[s], i)
			}
		}
		if len(pids[s]) != e.cfg.idle {
			return fmt.Errorf("found %d %s shim servers, want %d", len(pids[s]), shims[s].name, e.cfg.idle)
		}
	}
	// Settle: let start-up work (GC, scavenger, log flushes) finish.
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	var before [2][]uint64
	for s := range shims {
		for _, pid := range pids[s] {
			n, _, err := ctxSwitches(pid)
			if err != nil {
				return err
			}
			before[s] = append(before[s], n)
		}
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, e.cfg.idleWindow); err != nil {
		return err
	}
	r.idleWindowSeconds = time.Since(t0).Seconds()
	for s := range shims {
		for i, pid := range pids[s] {
			n, threads, err := ctxSwitches(pid)
			if err != nil {
				return err
			}
			if d := n - before[s][i]; d > 0 {
				progress("idle: %s shim pid %d (container %d of %d) had %d context switches in the window", shims[s].name, pid, idx[s][i]+1, e.cfg.idle, d)
			}
			r.idleSwitches[s] = append(r.idleSwitches[s], float64(n-before[s][i]))
			r.idleThreads[s] = append(r.idleThreads[s], float64(threads))
			rss, pss, err := smapsRollup(pid)
			if err != nil {
				return err
			}
			r.idleRSS[s] = append(r.idleRSS[s], float64(rss))
			r.idlePSS[s] = append(r.idlePSS[s], float64(pss))
		}
	}
	return nil
}

// roundTrips times `ctr run --rm <image> <id> true`, alternating shims.
func (e *env) roundTrips(ctx context.Context, r *results) error {
	shims := e.shims()
	for i := 0; i < e.cfg.warmups+e.cfg.roundTrips; i++ {
		for _, s := range order(i) {
			id := fmt.Sprintf("rt-%s-%d", shortName[s], i)
			d, err := e.timeCtr(ctx, "run", "--rm", "--fifo-dir", e.fifoDir(), "--runtime", shims[s].path, e.image.Name(), id, "true")
			if err != nil {
				return err
			}
			if i >= e.cfg.warmups {
				r.roundTrip[s] = append(r.roundTrip[s], ms(d))
			}
		}
	}
	return nil
}

// execs times `ctr task exec <id> true` in one running container per shim,
// with the CPU time each shim spent, then the same exec through the shim's
// own task API (no ctr, no containerd) to isolate the shim's latency.
func (e *env) execs(ctx context.Context, r *results) error {
	var cs []client.Container
	defer e.destroyLater(&cs)
	shims := e.shims()
	var ctrs [2]client.Container
	for s := range shims {
		c, err := e.newContainer(ctx, "exec-"+shortName[s], shims[s], oci.WithProcessArgs("sleep", "86400"))
		if err != nil {
			return err
		}
		cs = append(cs, c)
		ctrs[s] = c
		if _, err := startTask(ctx, c); err != nil {
			return err
		}
	}
	var pids [2]int
	for s := range shims {
		pid, ok := e.shimServers(shims[s])[ctrs[s].ID()]
		if !ok {
			return fmt.Errorf("no %s shim server for %s", shims[s].name, ctrs[s].ID())
		}
		pids[s] = pid
	}
	var self0, child0 [2]time.Duration
	for i := 0; i < e.cfg.warmups+e.cfg.execs; i++ {
		if i == e.cfg.warmups {
			for s := range shims {
				var err error
				if self0[s], child0[s], err = cpuTime(pids[s]); err != nil {
					return err
				}
			}
		}
		for _, s := range order(i) {
			d, err := e.timeCtr(ctx, "task", "exec", "--fifo-dir", e.fifoDir(), "--exec-id", fmt.Sprintf("x%d", i), ctrs[s].ID(), "true")
			if err != nil {
				return err
			}
			if i >= e.cfg.warmups {
				r.exec[s] = append(r.exec[s], ms(d))
			}
		}
	}
	for s := range shims {
		self1, child1, err := cpuTime(pids[s])
		if err != nil {
			return err
		}
		r.execSelfCPU[s] = ms(self1-self0[s]) / float64(e.cfg.execs)
		r.execChildCPU[s] = ms(child1-child0[s]) / float64(e.cfg.execs)
	}

	var clients [2]*shimClient
	for s := range shims {
		sc, err := e.dialShim(ctrs[s].ID())
		if err != nil {
			return fmt.Errorf("connect to the %s shim: %w", shims[s].name, err)
		}
		defer sc.Close()
		clients[s] = sc
	}
	for i := 0; i < e.cfg.warmups+e.cfg.execs; i++ {
		for _, s := range order(i) {
			d, err := e.directExec(ctx, clients[s], ctrs[s], fmt.Sprintf("d%d", i))
			if err != nil {
				return err
			}
			if i >= e.cfg.warmups {
				r.directExec[s] = append(r.directExec[s], ms(d))
			}
		}
	}
	return nil
}

// timeCtr runs ctr to completion and returns its wall time.
func (e *env) timeCtr(ctx context.Context, args ...string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := e.ctr(ctx, args...)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("ctr %v: %v: %s", args, err, out)
	}
	return d, nil
}

// parallelStarts times cfg.parallel concurrent task create+start calls, from
// the first call to the last Start's return (all running). The containers
// (metadata and snapshots) are made beforehand and reused by every round.
func (e *env) parallelStarts(ctx context.Context, r *results) error {
	var cs []client.Container
	defer e.destroyLater(&cs)
	shims := e.shims()
	var sets [2][]client.Container
	for s := range shims {
		for i := 0; i < e.cfg.parallel; i++ {
			c, err := e.newContainer(ctx, fmt.Sprintf("par-%s-%d", shortName[s], i), shims[s], oci.WithProcessArgs("sleep", "86400"))
			if err != nil {
				return err
			}
			cs = append(cs, c)
			sets[s] = append(sets[s], c)
		}
	}
	for i := 0; i < e.cfg.parallelRuns; i++ {
		for _, s := range order(i) {
			d, err := e.parallelRound(ctx, sets[s])
			if err != nil {
				return fmt.Errorf("%s round %d: %w", shims[s].name, i, err)
			}
			r.parallel[s] = append(r.parallel[s], ms(d))
		}
	}
	return nil
}

func (e *env) parallelRound(ctx context.Context, cs []client.Container) (time.Duration, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		tasks []client.Task
		gate  = make(chan struct{})
	)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			t, err := startTask(ctx, c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			tasks = append(tasks, t)
		}()
	}
	t0 := time.Now()
	close(gate)
	wg.Wait()
	d := time.Since(t0)

	// Stop them all and wait until their shims are gone, so rounds do not
	// overlap.
	dctx, cancel := e.cleanupCtx()
	defer cancel()
	var dwg sync.WaitGroup
	for _, t := range tasks {
		dwg.Add(1)
		go func() {
			defer dwg.Done()
			if _, err := t.Delete(dctx, client.WithProcessKill); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("delete task %s: %w", t.ID(), err))
				mu.Unlock()
			}
		}()
	}
	dwg.Wait()
	e.waitShimsGone(ctx, 15*time.Second)
	return d, errors.Join(errs...)
}

// waitShimsGone polls until no shim server of this run is left, or timeout.
func (e *env) waitShimsGone(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if len(e.shimProcesses()) == 0 {
			return
		}
		_ = sleepCtx(ctx, 50*time.Millisecond)
	}
	progress("warning: %d shim processes still alive after %s", len(e.shimProcesses()), timeout)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
