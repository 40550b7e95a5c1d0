package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// The shim's CPU per container lifecycle: what `ctr run --rm true` makes
// the shim processes do (the `start` action, then the server through
// Create, Start, the exit, Delete and its shutdown), driven through the
// client as ctr does, with stdout and stderr fifos. The server's CPU is its
// threads' schedstat run time (ns), read until it exits; the start
// action's is what containerd, which reaps it, gains in cutime + cstime
// (clock ticks, exact over the sum). runc's CPU is neither.

// lifecycleSample is one lifecycle's shim CPU.
type lifecycleSample struct {
	server, start time.Duration
	phases        [nPhases]float64 // ms, the client's wall time of each phase
}

// A lifecycle's phases as the client sees them.
const (
	phaseCreate   = iota // NewTask: the shim's start action, its server, Create (runc create)
	phaseStart           // Start (runc start)
	phaseExit            // Start's return -> the exit reaches the client's Wait
	phaseDelete          // Delete (runc delete, the rootfs unmounted, the shim told to shut down)
	phaseShutdown        // Delete's return -> the server gone (read every millisecond)
	nPhases
)

var phaseNames = [nPhases]string{"create", "start", "to exit", "delete", "server gone after delete"}

func (e *env) lifecycleCPU(ctx context.Context, r *results) error {
	shims := e.shims()
	for i := 0; i < e.cfg.warmups+e.cfg.lifecycles; i++ {
		for _, s := range order(i) {
			smp, err := e.lifecycle(ctx, fmt.Sprintf("cpu-%s-%d", shortName[s], i), s)
			if err != nil {
				return fmt.Errorf("%s: %w", shims[s].name, err)
			}
			if i >= e.cfg.warmups {
				r.lifeServer[s] += smp.server
				r.lifeStart[s] += smp.start
				r.lifeRuns[s]++
				for p, v := range smp.phases {
					r.lifePhases[s][p] = append(r.lifePhases[s][p], v)
				}
			}
		}
	}
	return nil
}

func (e *env) lifecycle(ctx context.Context, id string, s int) (lifecycleSample, error) {
	var smp lifecycleSample
	sh := e.shims()[s]
	c, err := e.newContainer(ctx, id, sh, oci.WithProcessArgs("true"))
	if err != nil {
		return smp, err
	}
	defer func() {
		dctx, cancel := e.cleanupCtx()
		defer cancel()
		_ = c.Delete(dctx)
	}()
	_, children0, err := cpuTime(e.PID())
	if err != nil {
		return smp, err
	}
	mark := time.Now()
	lap := func(p int) {
		now := time.Now()
		smp.phases[p] = ms(now.Sub(mark))
		mark = now
	}
	t, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, io.Discard, io.Discard), cio.WithFIFODir(e.fifoDir())))
	if err != nil {
		return smp, fmt.Errorf("create %s: %w", id, err)
	}
	lap(phaseCreate)
	pid, ok := e.shimServers(sh)[id]
	if !ok {
		return smp, fmt.Errorf("no shim server for %s", id)
	}
	last, err := ownCPU(pid)
	if err != nil {
		return smp, err
	}
	exitCh, err := t.Wait(ctx)
	if err != nil {
		return smp, err
	}
	mark = time.Now()
	if err := t.Start(ctx); err != nil {
		return smp, fmt.Errorf("start %s: %w", id, err)
	}
	lap(phaseStart)
	select {
	case <-exitCh:
	case <-ctx.Done():
		return smp, ctx.Err()
	}
	lap(phaseExit)
	if _, err := t.Delete(ctx); err != nil {
		return smp, fmt.Errorf("delete %s: %w", id, err)
	}
	lap(phaseDelete)
	// The server shuts down after Delete: read it until it is gone.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		v, err := ownCPU(pid)
		if err != nil {
			lap(phaseShutdown)
			break
		}
		last = v
		time.Sleep(time.Millisecond)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil && time.Now().After(deadline) {
		return smp, fmt.Errorf("shim server %d of %s still there 10 s after Delete", pid, id)
	}
	_, children1, err := cpuTime(e.PID())
	if err != nil {
		return smp, err
	}
	smp.server = last
	smp.start = children1 - children0
	return smp, nil
}

// ownCPU is pid's threads' run time (schedstat, ns); an error once it is
// gone or a zombie (its threads' counts are then partly gone too).
func ownCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	if i := strings.LastIndexByte(string(data), ')'); i < 0 || len(data) < i+3 || data[i+2] == 'Z' {
		return 0, fmt.Errorf("process %d exited", pid)
	}
	self, _, err := cpuTime(pid)
	return self, err
}
