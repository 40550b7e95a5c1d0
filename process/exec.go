package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"oomshim/runc"
)

// Container is what an exec process needs of its container; *Init is one.
type Container interface {
	ID() string
	Bundle() string
	Runtime() *gorunc.Runc
	Config() runc.Config
	// HoldUnfrozen keeps the container from being paused while an exec
	// starts; a paused one is refused.
	HoldUnfrozen() (release func(), err error)
}

// ExecConfig describes an extra process in a running container.
type ExecConfig struct {
	ID        string // exec ID
	Container Container
	Spec      *specs.Process
	Stdio     Stdio
}

// Exec is a process added to a container with `runc exec`.
type Exec struct {
	base
	init  Container
	spec  *specs.Process
	pidfd int // signals go through it (pidfd.go); -1 for none; guarded by mu
}

// NewExec returns an exec process in state Created.
func NewExec(c ExecConfig) *Exec {
	return &Exec{base: newBase(c.ID, c.Stdio), init: c.Container, spec: c.Spec, pidfd: -1}
}

// Start opens stdio and runs `runc exec --detach`, returning the new pid.
func (e *Exec) Start(ctx context.Context) (int, error) {
	if err := e.claimStart(); err != nil {
		return 0, err
	}
	defer e.endStart()
	cfg := e.init.Config()
	io, err := OpenIO(ctx, e.stdio, IOConfig{UID: cfg.IoUID, GID: cfg.IoGID, ContainerID: e.init.ID(), Namespace: cfg.Namespace})
	if err != nil {
		return 0, err
	}
	bundle := e.init.Bundle()
	pidFile := filepath.Join(bundle, e.id+".pid")
	defer os.Remove(pidFile)
	opts := &gorunc.ExecOpts{IO: io, PidFile: pidFile, Detach: true}
	if socket := io.ConsoleSocket(); socket != nil {
		opts.ConsoleSocket = socket
	}
	release, err := e.init.HoldUnfrozen()
	if err != nil {
		io.Close()
		return 0, err
	}
	err = e.init.Runtime().Exec(ctx, e.init.ID(), *e.spec, opts)
	release()
	if err != nil {
		io.Close()
		return 0, runc.WrapError("exec", bundle, err)
	}
	pid, err := gorunc.ReadPidFile(pidFile)
	if err != nil {
		io.Close()
		return 0, fmt.Errorf("read exec pid: %w", err)
	}
	pidfd := openPidfd(pid)
	if err := io.Attach(ctx); err != nil {
		// Nobody could read or feed its terminal: do not leave it running.
		signal(pidfd, pid, unix.SIGKILL)
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		io.Close()
		return 0, fmt.Errorf("exec %s terminal: %w", e.id, err)
	}
	e.mu.Lock()
	e.pid = pid
	e.pidfd = pidfd
	e.io = io
	e.status = Running
	e.mu.Unlock()
	return pid, nil
}

// Kill signals the exec process, through its pidfd where the kernel has
// them: then a signal never reaches a process that got its pid after the
// reaper reaped it and before it was marked reaped.
func (e *Exec) Kill(ctx context.Context, sig int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.status == Created:
		return ErrNotStarted
	case e.status == Stopped || e.status == Deleted || e.reaped:
		return ErrExited
	}
	if err := signal(e.pidfd, e.pid, unix.Signal(sig)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return ErrExited
		}
		return fmt.Errorf("kill exec %s (pid %d): %w", e.id, e.pid, err)
	}
	return nil
}

// Delete releases the exec's stdio and pidfd. A running exec is refused.
func (e *Exec) Delete(context.Context) error {
	io, err := e.markDeleted()
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.pidfd >= 0 {
		unix.Close(e.pidfd)
		e.pidfd = -1
	}
	e.mu.Unlock()
	if io != nil {
		io.Close()
	}
	return nil
}
