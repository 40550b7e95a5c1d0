package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// What a node pays per pod: n pods per shim binary, each one shim (CRI's
// grouping: the runc shim's group annotation) holding a sandbox container
// and a workload container, both `sleep`. Memory is read idle, then after
// exec round trips into every workload (kubelet's exec probes); with the
// Stats phase, each workload's Stats is then called as kubelet's stats
// polling does.

// memReading is one shim's memory from /proc/<pid>/smaps_rollup, kB.
type memReading struct {
	rss, pss, uss float64
}

// readMem reads pid's smaps_rollup: Rss, Pss, and USS (Private_Clean +
// Private_Dirty: what the process alone holds).
func readMem(pid int) (memReading, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memReading{}, err
	}
	var m memReading
	for _, f := range []struct {
		key string
		add *float64
	}{{"Rss:", &m.rss}, {"Pss:", &m.pss}, {"Private_Clean:", &m.uss}, {"Private_Dirty:", &m.uss}} {
		v, err := statusField(data, f.key)
		if err != nil {
			return memReading{}, fmt.Errorf("smaps_rollup of %d: %w", pid, err)
		}
		*f.add += float64(v)
	}
	return m, nil
}

// podPhase is what one pod count measured, per shim binary.
type podPhase struct {
	n               int
	idle, probed    [2][]memReading // per shim process
	probesPerPod    int
	statsCalls      int
	statsLatency    [2][]float64    // ms per Stats call
	statsCPU        [2][]float64    // ms of the shim's own CPU per Stats call, per shim
	afterStats      [2][]memReading // per shim, after the Stats calls
	probeConcurrent int
}

// benchPod is one pod: its shim server and its workload container.
type benchPod struct {
	id       string
	pid      int
	workload client.Container
	task     client.Task
}

// podMemory runs the pod phase with n pods per shim binary; with stats,
// the Stats calls too.
func (e *env) podMemory(ctx context.Context, n int, stats bool) (*podPhase, error) {
	ph := &podPhase{n: n, probesPerPod: e.cfg.podExecs, probeConcurrent: e.cfg.podConcurrency}
	var cs []client.Container
	defer e.destroyLater(&cs)
	shims := e.shims()
	var pods [2][]*benchPod
	progress("pods: starting %d pods per shim binary (sandbox + workload each)", n)
	for i := 0; i < n; i++ {
		for _, s := range order(i) {
			id := fmt.Sprintf("pod%d-%s-%d", n, shortName[s], i)
			group := oci.WithAnnotations(map[string]string{groupAnnotation: id})
			sandbox, err := e.newContainer(ctx, id, shims[s], oci.WithProcessArgs("sleep", "86400"), group)
			if err != nil {
				return nil, err
			}
			cs = append(cs, sandbox)
			if _, err := startTask(ctx, sandbox); err != nil {
				return nil, err
			}
			w, err := e.newContainer(ctx, id+"-w", shims[s], oci.WithProcessArgs("sleep", "86400"), group)
			if err != nil {
				return nil, err
			}
			cs = append(cs, w)
			t, err := startTask(ctx, w)
			if err != nil {
				return nil, err
			}
			pods[s] = append(pods[s], &benchPod{id: id, workload: w, task: t})
		}
	}
	for s := range shims {
		servers := e.shimServers(shims[s])
		for _, p := range pods[s] {
			pid, ok := servers[p.id]
			if !ok {
				return nil, fmt.Errorf("no %s shim server for pod %s", shims[s].name, p.id)
			}
			p.pid = pid
		}
	}
	if err := settleAndRead(ctx, pods, &ph.idle); err != nil {
		return nil, err
	}
	if err := e.probePods(ctx, pods, ph.probesPerPod, ph.probeConcurrent); err != nil {
		return nil, err
	}
	if err := settleAndRead(ctx, pods, &ph.probed); err != nil {
		return nil, err
	}
	if stats {
		if err := e.statsCalls(ctx, pods, ph); err != nil {
			return nil, err
		}
	}
	return ph, nil
}

// probePods runs `true` execs into every pod's workload, perPod each,
// from `workers` goroutines; the jobs interleave pods and binaries, so
// both progress together.
func (e *env) probePods(ctx context.Context, pods [2][]*benchPod, perPod, workers int) error {
	progress("pods: %d exec round trips per pod, %d at a time", perPod, workers)
	type job struct {
		p *benchPod
		k int
	}
	jobs := make(chan job)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := soakExec(ctx, j.p.workload, fmt.Sprintf("probe-%d", j.k)); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("exec %d into pod %s: %w", j.k, j.p.id, err); cancel() })
				}
			}
		}()
	}
feed:
	for k := 0; k < perPod; k++ {
		for i := range pods[ours] {
			for _, s := range order(i + k) {
				select {
				case jobs <- job{pods[s][i], k}:
				case <-ctx.Done():
					break feed
				}
			}
		}
	}
	close(jobs)
	wg.Wait()
	return firstErr
}

// statsCalls calls Stats (containerd's task metrics, which asks the shim)
// of every pod's workload, e.cfg.statsCalls rounds at least
// e.cfg.statsInterval apart (kubelet polls every 10 s), timing each call,
// and takes each shim's own CPU over all of them.
func (e *env) statsCalls(ctx context.Context, pods [2][]*benchPod, ph *podPhase) error {
	ph.statsCalls = e.cfg.statsCalls
	progress("pods: %d Stats calls per pod, rounds %s apart", ph.statsCalls, e.cfg.statsInterval)
	var roundStart time.Time
	var before [2][]time.Duration
	for s := range pods {
		for _, p := range pods[s] {
			self, _, err := cpuTime(p.pid)
			if err != nil {
				return err
			}
			before[s] = append(before[s], self)
		}
	}
	for k := 0; k < ph.statsCalls; k++ {
		if k > 0 {
			// kubelet's pace: each shim idle between its calls for
			// longer than any timer a shim arms after a request (ours:
			// its memory release, 1 s).
			if err := sleepCtx(ctx, time.Until(roundStart.Add(e.cfg.statsInterval))); err != nil {
				return err
			}
		}
		roundStart = time.Now()
		for i := range pods[ours] {
			for _, s := range order(i + k) {
				t0 := time.Now()
				if _, err := pods[s][i].task.Metrics(ctx); err != nil {
					return fmt.Errorf("stats of pod %s: %w", pods[s][i].id, err)
				}
				ph.statsLatency[s] = append(ph.statsLatency[s], ms(time.Since(t0)))
			}
		}
	}
	// The CPU is read after the settling time of the memory reading, so
	// that what a shim does after its last call (a timer's work) counts.
	if err := settleAndRead(ctx, pods, &ph.afterStats); err != nil {
		return err
	}
	for s := range pods {
		for i, p := range pods[s] {
			self, _, err := cpuTime(p.pid)
			if err != nil {
				return err
			}
			ph.statsCPU[s] = append(ph.statsCPU[s], ms(self-before[s][i])/float64(ph.statsCalls))
		}
	}
	return nil
}

// settleAndRead waits 3 s for the last requests' teardown, then reads
// every pod shim's memory into into, per binary.
func settleAndRead(ctx context.Context, pods [2][]*benchPod, into *[2][]memReading) error {
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	for s := range pods {
		for _, p := range pods[s] {
			m, err := readMem(p.pid)
			if err != nil {
				return err
			}
			into[s] = append(into[s], m)
		}
	}
	return nil
}

// field picks one figure out of readings.
func field(ms []memReading, f func(memReading) float64) []float64 {
	out := make([]float64, len(ms))
	for i, m := range ms {
		out[i] = f(m)
	}
	return out
}

func pssOf(m memReading) float64 { return m.pss }
func ussOf(m memReading) float64 { return m.uss }
func rssOf(m memReading) float64 { return m.rss }

func sum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t
}
