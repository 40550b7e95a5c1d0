package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"oomshim/runc"
)

// InitConfig describes a container's init process.
type InitConfig struct {
	ID      string
	Bundle  string
	Rootfs  []*types.Mount
	Stdio   Stdio
	Runtime runc.Config
	// Checkpoint, when set, is a criu image to restore the container
	// from (at Start, with `runc restore`) instead of `runc create`;
	// ParentCheckpoint a pre-dump it builds on.
	Checkpoint, ParentCheckpoint string
}

// Init is a container's init process: runc create, start, kill, delete.
type Init struct {
	base
	bundle  string
	mounts  []*types.Mount
	config  runc.Config
	runtime *gorunc.Runc
	cgroup  *runc.Cgroup // set by Create (by Start when restoring)
	// restore is the pending `runc restore` of a container created from
	// a checkpoint; Start runs it.
	restore                      *gorunc.RestoreOpts
	checkpoint, parentCheckpoint string
	// freeze: one Pause or Resume at a time, none while an exec is being
	// started (they hold it shared: runc refuses an exec into a frozen
	// container).
	freeze sync.RWMutex
}

// NewInit returns an init process in state Created; Create makes it real.
func NewInit(c InitConfig) *Init {
	return &Init{
		base:    newBase(c.ID, c.Stdio),
		bundle:  c.Bundle,
		mounts:  c.Rootfs,
		config:  c.Runtime,
		runtime: c.Runtime.Runtime(c.Bundle),

		checkpoint:       c.Checkpoint,
		parentCheckpoint: c.ParentCheckpoint,
	}
}

// Bundle is the container's bundle directory.
func (p *Init) Bundle() string { return p.bundle }

// Runtime is the runc client for this container.
func (p *Init) Runtime() *gorunc.Runc { return p.runtime }

// Config is the container's runtime configuration.
func (p *Init) Config() runc.Config { return p.config }

func (p *Init) rootfs() string { return filepath.Join(p.bundle, "rootfs") }

// Create mounts the rootfs, opens stdio and runs `runc create`. On failure
// it leaves nothing behind: no runc container, no mount, no open fifo.
func (p *Init) Create(ctx context.Context) (retErr error) {
	if len(p.mounts) > 0 {
		if err := os.MkdirAll(p.rootfs(), 0o711); err != nil {
			return fmt.Errorf("create rootfs dir: %w", err)
		}
		if err := runc.MountAll(p.mounts, p.rootfs()); err != nil {
			return err
		}
		defer func() {
			if retErr != nil {
				if err := runc.UnmountAll(p.rootfs()); err != nil {
					log.G(ctx).WithError(err).Warn("unmount rootfs after failed create")
				}
			}
		}()
	}
	io, err := OpenIO(ctx, p.stdio, IOConfig{UID: p.config.IoUID, GID: p.config.IoGID, ContainerID: p.id, Namespace: p.config.Namespace})
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			io.Close()
		}
	}()
	pidFile := filepath.Join(p.bundle, runc.InitPidFile)
	opts := &gorunc.CreateOpts{
		IO:           io,
		PidFile:      pidFile,
		NoPivot:      p.config.NoPivotRoot,
		NoNewKeyring: p.config.NoNewKeyring,
	}
	if socket := io.ConsoleSocket(); socket != nil {
		opts.ConsoleSocket = socket
	}
	if p.checkpoint != "" {
		p.prepareRestore(io, opts)
		return nil
	}
	if err := p.runtime.Create(ctx, p.id, p.bundle, opts); err != nil {
		p.forceDelete(ctx)
		return runc.WrapError("create", p.bundle, err)
	}
	if err := io.Attach(ctx); err != nil {
		p.forceDelete(ctx)
		return fmt.Errorf("container %s terminal: %w", p.id, err)
	}
	pid, err := gorunc.ReadPidFile(pidFile)
	if err != nil {
		p.forceDelete(ctx)
		return fmt.Errorf("read init pid: %w", err)
	}
	cg, err := runc.LoadCgroup(pid)
	if err != nil {
		log.G(ctx).WithError(err).WithField("container_id", p.id).Warn("no cgroup for the container: no OOM watch, no stats")
	}
	p.mu.Lock()
	p.pid = pid
	p.io = io
	p.cgroup = cg
	p.mu.Unlock()
	return nil
}

// Cgroup is the container's cgroup, nil if it could not be resolved.
func (p *Init) Cgroup() *runc.Cgroup {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cgroup
}

// forceDelete removes the runc container whatever its state, and the
// cgroup of a create that did not finish, which runc cannot (it has no
// state for it); used to undo a create.
func (p *Init) forceDelete(ctx context.Context) {
	if err := p.runtime.Delete(context.WithoutCancel(ctx), p.id, &gorunc.DeleteOpts{Force: true}); err != nil {
		log.G(ctx).WithError(err).WithField("container_id", p.id).Debug("runc delete --force")
	}
	if err := runc.RemoveLeftoverCgroup(p.bundle, p.id, p.config.SystemdCgroup); err != nil {
		log.G(ctx).WithError(err).WithField("container_id", p.id).Warn("remove the cgroup of the failed create")
	}
}

// Start runs `runc start`. The process may already have been reaped when
// this returns; then it stays Stopped.
func (p *Init) Start(ctx context.Context) error {
	if err := p.claimStart(); err != nil {
		return err
	}
	defer p.endStart()
	if p.restore != nil {
		return p.runRestore(ctx)
	}
	if err := p.runtime.Start(ctx, p.id); err != nil {
		// Killed while created (a Kill racing this Start): runc finds it
		// stopped. That is a stopped container's Start: FailedPrecondition,
		// not runc's failure.
		if st, serr := p.state(ctx); serr == nil && st.Status == "stopped" {
			return fmt.Errorf("the container stopped before it was started: %w", &TransitionError{From: Stopped, To: Running})
		}
		return runc.WrapError("start", p.bundle, err)
	}
	p.mu.Lock()
	if p.status == Created {
		p.status = Running
	}
	p.mu.Unlock()
	return nil
}

// Kill signals the init process, or with all every process in the
// container. With all it still reaches a stopped init's container, whose
// other processes outlive the init when the container shares a PID
// namespace (as the stock shim does); the container being gone is
// ErrExited.
func (p *Init) Kill(ctx context.Context, sig int, all bool) error {
	p.mu.Lock()
	s, reaped := p.status, p.reaped
	p.mu.Unlock()
	if s == Deleted || (!all && (s == Stopped || reaped)) {
		return ErrExited
	}
	if err := p.runtime.Kill(ctx, p.id, sig, &gorunc.KillOpts{All: all}); err != nil {
		if p.gone(ctx) {
			return ErrExited
		}
		return runc.WrapError("kill", p.bundle, err)
	}
	return nil
}

// KillAll sends SIGKILL to every process of the container: what is left
// of a container without a PID namespace of its own once its init exited.
func (p *Init) KillAll(ctx context.Context) error {
	return p.Kill(ctx, int(unix.SIGKILL), true)
}

// gone says, after a failed runc call, whether the container's init has
// exited: recorded so, or runc reports the container stopped or unknown.
// runc's state is asked rather than its error text matched.
func (p *Init) gone(ctx context.Context) bool {
	if s := p.Status(); s == Stopped || s == Deleted {
		return true
	}
	st, err := p.state(ctx)
	return err != nil || st.Status == "stopped"
}

// stateTimeout bounds `runc state` when the request's own context may
// have ended (the runc call before it was killed by its deadline).
const stateTimeout = 10 * time.Second

// state runs `runc state` on a context of its own: a request whose
// deadline killed runc must not read "no state" as "no container".
func (p *Init) state(ctx context.Context) (*gorunc.Container, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stateTimeout)
	defer cancel()
	return p.runtime.State(ctx, p.id)
}

// Pause freezes the running container with `runc pause`.
func (p *Init) Pause(ctx context.Context) error {
	return p.setFrozen(ctx, true)
}

// Resume thaws the paused container with `runc resume`.
func (p *Init) Resume(ctx context.Context) error {
	return p.setFrozen(ctx, false)
}

func (p *Init) setFrozen(ctx context.Context, frozen bool) error {
	p.freeze.Lock()
	defer p.freeze.Unlock()
	from, to, op, run := Paused, Running, "resume", p.runtime.Resume
	if frozen {
		from, to, op, run = Running, Paused, "pause", p.runtime.Pause
	}
	// Only from exactly from: a created container is neither paused nor
	// running (runc would pause its init before it started, or fail).
	if st := p.Status(); st != from {
		return &TransitionError{From: st, To: to}
	}
	if err := run(ctx, p.id); err != nil {
		if p.gone(ctx) {
			return ErrExited
		}
		return runc.WrapError(op, p.bundle, err)
	}
	p.mu.Lock()
	if p.status == from { // not reaped meanwhile
		p.status = to
	}
	p.mu.Unlock()
	return nil
}

// HoldUnfrozen keeps the container from being paused until release is
// called, for an exec's `runc exec`; a paused container is refused.
func (p *Init) HoldUnfrozen() (release func(), err error) {
	p.freeze.RLock()
	if st := p.Status(); st == Paused {
		p.freeze.RUnlock()
		return nil, fmt.Errorf("exec in a paused container: %w", &TransitionError{From: st, To: Running})
	}
	return p.freeze.RUnlock, nil
}

// Update sets the container's cgroup resources with `runc update` while it
// is created or running.
func (p *Init) Update(ctx context.Context, r *specs.LinuxResources) error {
	if s := p.Status(); s == Stopped || s == Deleted {
		return ErrExited
	}
	if err := p.runtime.Update(ctx, p.id, r); err != nil {
		if p.gone(ctx) {
			return ErrExited
		}
		return runc.WrapError("update", p.bundle, err)
	}
	return nil
}

// Pids lists the container's processes.
func (p *Init) Pids(ctx context.Context) ([]int, error) {
	pids, err := p.runtime.Ps(ctx, p.id)
	if err != nil {
		return nil, runc.WrapError("ps", p.bundle, err)
	}
	return pids, nil
}

// Delete runs `runc delete`, unmounts the rootfs and closes stdio. A
// created (never started) container is force-deleted; a running one is
// refused.
func (p *Init) Delete(ctx context.Context) error {
	status := p.Status()
	if err := transition(status, Deleted); err != nil {
		return err
	}
	var errs []error
	if err := p.runtime.Delete(ctx, p.id, &gorunc.DeleteOpts{Force: status == Created}); err != nil {
		if ctx.Err() != nil {
			// The caller's deadline killed runc: the container is still
			// there, for a later Delete (or the delete action) to remove.
			return runc.WrapError("delete", p.bundle, fmt.Errorf("%w: %w", err, ctx.Err()))
		}
		if _, serr := p.state(ctx); serr != nil {
			// already gone from runc; nothing left to delete there
			log.G(ctx).WithError(err).WithField("container_id", p.id).Debug("runc delete of a missing container")
		} else if ferr := p.runtime.Delete(ctx, p.id, &gorunc.DeleteOpts{Force: true}); ferr != nil {
			errs = append(errs, runc.WrapError("delete", p.bundle, ferr))
		}
	}
	if len(p.mounts) > 0 {
		if err := runc.UnmountAll(p.rootfs()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	io, err := p.markDeleted()
	if err != nil {
		return err
	}
	if io != nil {
		io.Close()
	}
	return nil
}
