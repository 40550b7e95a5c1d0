package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
)

// The floor: what any shim written in Go and serving the task API over
// ttrpc holds, whatever it does for its containers. bench-floor (./floor)
// is such a server and nothing more; it runs as the shim's server runs
// (GOMAXPROCS=1). Its anonymous memory is read idle (after one Connect and
// State) and after floorCalls more calls and a release of its free heap
// (debug.FreeOSMemory, as the shim's server does after a burst of
// requests). Anonymous, not Private_*: its binary is mapped by this one
// process, so its file pages would count as private, where a pod shim's
// are shared with the other shims.

// floorCalls: Connect and State alternately, 2,000 calls. 250 exec round
// trips make about 1,000 calls to a pod shim (Exec, Start, Wait, Delete)
// and 750 event forwards from it.
const floorCalls = 2000

type floorReading struct {
	idle, after float64 // kB of anonymous memory
	calls       int
}

func (e *env) floor(ctx context.Context, r *results) error {
	if _, err := os.Stat(e.cfg.floorBin); err != nil {
		return fmt.Errorf("the floor server (-floor; make bench builds it): %w", err)
	}
	dir, err := os.MkdirTemp("", "bench-floor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	cmd := exec.Command(e.cfg.floorBin, sock)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the floor server did not listen on %s: %w", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	c := taskv3.NewTTRPCTaskClient(tc)
	call := func(i int) error {
		if i%2 == 0 {
			_, err := c.Connect(ctx, &taskv3.ConnectRequest{ID: "floor"})
			return err
		}
		_, err := c.State(ctx, &taskv3.StateRequest{ID: "floor"})
		return err
	}
	for i := 0; i < 2; i++ {
		if err := call(i); err != nil {
			return fmt.Errorf("floor call: %w", err)
		}
	}
	pid := cmd.Process.Pid
	var fr floorReading
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	if fr.idle, err = anonKB(pid); err != nil {
		return err
	}
	for i := 0; i < floorCalls; i++ {
		if err := call(i); err != nil {
			return fmt.Errorf("floor call %d: %w", i, err)
		}
	}
	fr.calls = floorCalls
	if err := sleepCtx(ctx, time.Second); err != nil {
		return err
	}
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	if fr.after, err = anonKB(pid); err != nil {
		return err
	}
	r.floor = &fr
	return ctx.Err()
}

// anonKB is the Anonymous: line of pid's smaps_rollup.
func anonKB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	v, err := statusField(data, "Anonymous:")
	if err != nil {
		return 0, fmt.Errorf("smaps_rollup of %d: %w", pid, err)
	}
	return float64(v), nil
}
