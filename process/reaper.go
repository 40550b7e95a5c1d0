package process

import (
	"context"
	"os"
	"os/exec"
	ossignal "os/signal"
	"runtime"
	"sync"
	"time"

	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Reaped is one reaped child: its pid, exit status (ExitStatus) and when
// it was reaped.
type Reaped = gorunc.Exit

// Reaper is the shim's only caller of wait(2). As a child subreaper the shim
// inherits every container process, so reaping must be central: a runc
// command started through the Reaper gets its own exit, and every other
// exit (container inits, exec processes, orphans) goes, in reaping order, to
// the handler given to NewReaper.
//
// It implements go-runc's ProcessMonitor. A command's pid is registered
// under the same lock that reaping holds, so an exit can never be reaped
// before its owner is known.
type Reaper struct {
	handle func([]Reaped)

	mu   sync.Mutex
	cmds map[int]chan Reaped

	sigs chan os.Signal
	done chan struct{}
}

// NewReaper returns a reaper that passes every exit it does not own to
// handle. handle runs on the reaper's goroutine, one batch at a time.
// Call Run to start reaping.
func NewReaper(handle func([]Reaped)) *Reaper {
	return &Reaper{
		handle: handle,
		cmds:   make(map[int]chan Reaped),
		sigs:   make(chan os.Signal, 32),
		done:   make(chan struct{}),
	}
}

// Run reaps on every SIGCHLD until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	ossignal.Notify(r.sigs, unix.SIGCHLD)
	defer ossignal.Stop(r.sigs)
	defer close(r.done)
	r.Reap() // anything that died before the handler was installed
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.sigs:
			r.Reap()
		}
	}
}

// Done is closed when Run has returned.
func (r *Reaper) Done() <-chan struct{} { return r.done }

// Reap collects every exited child now.
func (r *Reaper) Reap() {
	var others []Reaped
	r.mu.Lock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			break // ECHILD: no children; 0: none exited yet
		}
		e := Reaped{Pid: pid, Status: ExitStatus(ws), Timestamp: time.Now()}
		if ch, ok := r.cmds[pid]; ok {
			delete(r.cmds, pid)
			ch <- e // buffered, never blocks
			continue
		}
		others = append(others, e)
	}
	r.mu.Unlock()
	if len(others) > 0 {
		r.handle(others)
	}
}

// ExitStatus converts a wait status to the shell convention: the exit code,
// or 128 plus the signal that killed the process.
func ExitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Start implements gorunc.ProcessMonitor.
func (r *Reaper) Start(c *exec.Cmd) (chan Reaped, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := c.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Reaped, 1)
	r.cmds[c.Process.Pid] = ch
	return ch, nil
}

// StartLocked implements gorunc.ProcessMonitor: the command is started from
// a thread locked for the command's whole life, so its parent-death signal
// fires when the shim dies and not when a Go thread happens to exit.
func (r *Reaper) StartLocked(c *exec.Cmd) (chan Reaped, error) {
	type started struct {
		ch  chan Reaped
		err error
	}
	res := make(chan started, 1)
	out := make(chan Reaped, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ch, err := r.Start(c)
		res <- started{ch, err}
		if err != nil {
			return
		}
		out <- <-ch
	}()
	s := <-res
	if s.err != nil {
		return nil, s.err
	}
	return out, nil
}

// Wait implements gorunc.ProcessMonitor.
func (r *Reaper) Wait(c *exec.Cmd, ch chan Reaped) (int, error) {
	e := <-ch
	// The child is already reaped; Wait only lets exec.Cmd finish copying
	// its output and release its descriptors. Its ECHILD is expected.
	if err := c.Wait(); err != nil && c.ProcessState == nil {
		log.L.WithError(err).WithField("pid", e.Pid).Trace("command already reaped")
	}
	// A failed Wait leaves the Process's pidfd open until the garbage
	// collector finds it: one fd per runc call, hundreds in a shim that
	// allocates little. Release closes it now.
	_ = c.Process.Release()
	return e.Status, nil
}
