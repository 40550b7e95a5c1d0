package task

// The exit-ordering rule. All of a container's events are queued, under
// Service.mu, on the one event.Sequencer, which forwards them in the order
// they were queued. For one container that order is:
//
//  1. The start event (TaskStart, TaskExecStarted) of a process, before
//     its TaskExit: an exit reaped while its start is still returning is
//     held in a start window (beginStart/endStart) until the start event
//     is queued.
//  2. TaskOOM, for each OOM kill the kernel counted, before the TaskExit
//     of the process it killed: before an exec's TaskExit the counters are
//     re-read (checkOOMLocked); before the init's the watch gives its
//     final word and ends (unwatchLocked in publishInitExitLocked). The
//     watcher queues TaskOOM with the container's watch locked, so no
//     TaskOOM can be on its way while the exit is queued.
//  3. Every exec's TaskExit, before the init's: the init's exit is held
//     (pendingInit) while an exec is starting or running, for at most
//     execExitGrace (exitLocked, flushInitIfDueLocked).
//  4. The init's TaskExit, before TaskDelete: a process is marked stopped
//     only once its TaskExit is queued (publishExitLocked), Delete needs it
//     stopped, and Delete first ends the execs that outlived the init and
//     waits for their exits (endExecs).
//
// Wait answers only once the process's TaskExit has been forwarded (the
// ticket given to SetExited), so whoever acts on Wait's answer has had
// every event before it, TaskOOM included.

import (
	"context"
	"errors"
	"fmt"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"oomshim/process"
	"oomshim/runc"
)

// execExitGrace bounds how long an init's TaskExit waits for the exits of
// its container's exec processes (the kernel kills them when the init of a
// pid namespace dies, but reaping order is arbitrary). Past it the init's
// exit is published anyway: a wedged exec never wedges the container.
const execExitGrace = 2 * time.Second

// ttyDrainGrace bounds how long a TaskExit waits for the process's terminal
// output to reach the fifo. It is normally there within microseconds of
// the exit; a background process still holding the terminal, or a reader
// that stopped reading, costs this much delay and no more.
const ttyDrainGrace = 2 * time.Second

// execStopTimeout bounds how long a container's Delete waits for the
// exits of execs that outlived their init, once it has killed them.
const execStopTimeout = 5 * time.Second

// killAllTimeout bounds the `runc kill --all` that ends what is left of a
// container sharing a PID namespace once its init exited.
const killAllTimeout = 10 * time.Second

// proc is what the service needs of an init or exec process.
type proc interface {
	ID() string
	Pid() int
	State() process.State
	Wait(ctx context.Context) (process.Exit, error)
	SetExited(e process.Exit, published <-chan struct{}) error
	MarkReaped()
	Drained() <-chan struct{}
	Resize(width, height uint32) error
	CloseStdin()
}

// running is a live process the reaper may report.
type running struct {
	c      *container
	p      proc
	execID string // empty for the init
}

// pid is the process's pid, 0 for no process (a failed start).
func (r *running) pid() int {
	if r == nil {
		return 0
	}
	return r.p.Pid()
}

// HandleExits is the reaper's handler: it receives every reaped child that
// is not a runc command, in reaping order.
func (s *Service) HandleExits(exits []process.Reaped) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range exits {
		r, ok := s.running[e.Pid]
		if !ok {
			if s.starting > 0 {
				// Possibly a process whose pid its starter does not know
				// yet; endStart looks here.
				s.pending = append(s.pending, e)
			}
			continue
		}
		delete(s.running, e.Pid)
		s.reapedLocked(r, e)
	}
}

// reapedLocked handles a reaped process: at once, or, while its terminal
// output is still being copied, once that copy ends (or ttyDrainGrace
// passed). Meanwhile the process counts as running for the ordering of
// exits (an init's TaskExit still waits for it) but is no longer
// signalled: its pid is free.
func (s *Service) reapedLocked(r running, e process.Reaped) {
	drained := r.p.Drained()
	if drained == nil {
		s.exitLocked(r, e)
		return
	}
	select {
	case <-drained:
		s.exitLocked(r, e)
		return
	default:
	}
	r.p.MarkReaped()
	go func() {
		t := time.NewTimer(ttyDrainGrace)
		defer t.Stop()
		select {
		case <-drained:
		case <-t.C:
			log.G(s.ctx).WithFields(log.Fields{"container_id": r.c.init.ID(), "id": r.p.ID(), "pid": e.Pid}).
				Warn("terminal output still open after the exit; publishing the exit")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.exitLocked(r, e)
	}()
}

// beginStart opens a start window: until the matching endStart, exits of
// unknown pids are kept, so a process that exits before its starter has
// learned its pid is not lost. pid, if known (init start), is taken off the
// running table so its exit also waits for endStart: the start event must be
// queued before the exit event. held says whether it was taken off: when
// not (a concurrent Start of the same init holds it), the caller's window
// must not register or handle that pid.
func (s *Service) beginStart(pid int) (held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starting++
	if pid > 0 {
		_, held = s.running[pid]
		delete(s.running, pid)
	}
	return held
}

// endStart closes a start window. announce (may be nil) queues the event
// that must precede the process's exit. If r has a pid that exited inside
// the window, the exit is handled now; otherwise r becomes running. r is nil
// when the start failed.
func (s *Service) endStart(r *running, announce func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endStartLocked(r, announce)
}

func (s *Service) endStartLocked(r *running, announce func()) {
	s.starting--
	if announce != nil {
		announce()
	}
	if pid := r.pid(); pid > 0 {
		if e, ok := s.takePending(pid); ok {
			s.reapedLocked(*r, e)
		} else if r.p.State().Status != process.Stopped {
			// (Stopped: reaped before the window opened, e.g. an init
			// that died between create and a start that then failed.
			// Registering its pid again could take a stranger's exit.)
			s.running[pid] = *r
		}
	}
	if s.starting == 0 {
		s.pending = nil
	}
}

// beginExecStart counts an exec as running from the moment its Start is
// called: if the init dies while `runc exec` is still at work, the init's
// TaskExit waits until this exec has started and exited, or failed to
// start. It opens a start window (beginStart). An exec does not start in
// a paused container, nor once the init has exited.
func (s *Service) beginExecStart(c *container) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.initExited {
		return fmt.Errorf("container %s init process is not running: %w", c.init.ID(), errdefs.ErrFailedPrecondition)
	}
	if st := c.init.Status(); st == process.Paused {
		return fmt.Errorf("start exec in a paused container: %w", errdefs.ErrFailedPrecondition)
	}
	c.runningExecs++
	c.startingExecs++
	s.starting++
	return nil
}

// endExecStart closes an exec's start window; r is nil when it failed, and
// the exec no longer counts as running.
func (s *Service) endExecStart(c *container, r *running, announce func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.startingExecs--
	if r == nil {
		c.runningExecs--
	}
	s.endStartLocked(r, announce)
	s.flushInitIfDueLocked(c)
}

func (s *Service) takePending(pid int) (process.Reaped, bool) {
	for i, e := range s.pending {
		if e.Pid == pid {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			return e, true
		}
	}
	return process.Reaped{}, false
}

// exitLocked handles one reaped process. An exec's exit is published at
// once; an init's waits until its container has no exec running or
// starting, so that every exec's TaskExit precedes the init's. A container
// without a PID namespace of its own loses its other processes with its
// init, as with the stock shim: they are killed (`runc kill --all`).
func (s *Service) exitLocked(r running, e process.Reaped) {
	c := r.c
	if r.execID != "" {
		c.runningExecs--
		s.checkOOMLocked(c)
		s.publishExitLocked(c, r.p, e)
		s.flushInitIfDueLocked(c)
		return
	}
	c.initExited = true
	if c.sharedPID {
		go s.killAll(c)
	}
	if c.runningExecs > 0 {
		c.pendingInit = &e
		c.graceTimer = time.AfterFunc(execExitGrace, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			c.graceExpired = true
			s.flushInitIfDueLocked(c)
		})
		return
	}
	s.publishInitExitLocked(c, e)
}

// killAll kills what is left of a container whose init exited while it
// shares a PID namespace. It runs off the reaper's path (runc takes
// milliseconds), bounded by killAllTimeout.
func (s *Service) killAll(c *container) {
	ctx, cancel := context.WithTimeout(s.ctx, killAllTimeout)
	defer cancel()
	if err := c.init.KillAll(ctx); err != nil && !errors.Is(err, process.ErrExited) {
		log.G(ctx).WithError(err).WithField("container_id", c.init.ID()).Warn("kill the processes left after the init exited")
	}
}

// endExecs kills the execs still running in a container whose init has
// exited (they outlived it by execExitGrace) and waits, bounded, until
// their exits are published. So Delete never drops a running exec with its
// stdio open, and no exec's TaskExit follows the container's TaskDelete.
// An exec that does not die in time fails the Delete (FailedPrecondition).
func (s *Service) endExecs(ctx context.Context, c *container) error {
	s.mu.Lock()
	var live []execProcess
	for _, e := range c.execs {
		if e.State().Status == process.Running {
			live = append(live, e)
		}
	}
	s.mu.Unlock()
	if len(live) == 0 {
		return nil
	}
	if c.sharedPID {
		if err := c.init.KillAll(ctx); err != nil && !errors.Is(err, process.ErrExited) {
			log.G(ctx).WithError(err).Warn("kill the container's processes before delete")
		}
	}
	for _, e := range live {
		if err := e.Kill(ctx, int(unix.SIGKILL)); err != nil && !errors.Is(err, process.ErrExited) {
			log.G(ctx).WithError(err).WithField("exec_id", e.ID()).Warn("kill exec before delete")
		}
	}
	wctx, cancel := context.WithTimeout(ctx, execStopTimeout)
	defer cancel()
	for _, e := range live {
		if _, err := e.Wait(wctx); err != nil {
			return fmt.Errorf("exec %s still running %s after SIGKILL: %w", e.ID(), execStopTimeout, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

// flushInitIfDueLocked publishes an init exit held for the container's
// execs once none is starting and none is running (or execExitGrace has
// passed since the init exited).
func (s *Service) flushInitIfDueLocked(c *container) {
	if c.pendingInit == nil || c.startingExecs > 0 {
		return
	}
	if c.runningExecs > 0 {
		if !c.graceExpired {
			return
		}
		log.G(s.ctx).WithField("container_id", c.init.ID()).Warn("exec processes outlived their init; publishing its exit")
	}
	e := *c.pendingInit
	c.pendingInit = nil
	if c.graceTimer != nil {
		c.graceTimer.Stop()
		c.graceTimer = nil
	}
	s.publishInitExitLocked(c, e)
}

// publishInitExitLocked gives the OOM watch its final word, which queues
// any TaskOOM still owed, and only then queues the init's TaskExit.
//
// The exit is recorded in the bundle first: if this shim dies before
// containerd has the TaskExit, the delete action containerd then runs
// reports this status instead of an assumed SIGKILL.
func (s *Service) publishInitExitLocked(c *container, e process.Reaped) {
	if err := runc.WriteExitStatus(c.init.Bundle(), e.Pid, e.Status, e.Timestamp); err != nil {
		log.G(s.ctx).WithError(err).WithField("container_id", c.init.ID()).Warn("record the exit in the bundle")
	}
	s.unwatchLocked(c, e.Status == 128+int(unix.SIGKILL))
	s.publishExitLocked(c, c.init, e)
}

// publishExitLocked queues TaskExit and only then marks the process
// stopped, so a Delete (which needs it stopped) can never queue its
// TaskDelete ahead of the exit.
func (s *Service) publishExitLocked(c *container, p proc, e process.Reaped) {
	ctx := log.WithLogger(s.ctx, log.G(s.ctx).WithFields(log.Fields{
		"container_id": c.init.ID(), "pid": e.Pid, "exit_status": e.Status,
	}))
	ticket, err := s.events.Publish(ctx, "/tasks/exit", &eventstypes.TaskExit{
		ContainerID: c.init.ID(),
		ID:          p.ID(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    timestamppb.New(e.Timestamp),
	})
	if err != nil {
		log.G(ctx).WithError(err).Error("queue TaskExit")
	}
	if err := p.SetExited(process.Exit{Status: e.Status, At: e.Timestamp}, ticket); err != nil {
		log.G(ctx).WithError(err).Warn("record exit")
	}
	log.G(ctx).WithField("id", p.ID()).Debug("process exited")
}
