package task

import (
	"context"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"
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
func (s *Service) HandleExits(exits []runc.Exit) {
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
func (s *Service) reapedLocked(r running, e runc.Exit) {
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
// queued before the exit event.
func (s *Service) beginStart(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starting++
	if pid > 0 {
		delete(s.running, pid)
	}
}

// endStart closes a start window. announce (may be nil) queues the event
// that must precede the process's exit. If r has a pid that exited inside
// the window, the exit is handled now; otherwise r becomes running. r is nil
// when the start failed.
func (s *Service) endStart(r *running, announce func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starting--
	if announce != nil {
		announce()
	}
	if pid := r.pid(); pid > 0 {
		if r.execID != "" {
			r.c.runningExecs++ // exitLocked counts it down
		}
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

func (s *Service) takePending(pid int) (runc.Exit, bool) {
	for i, e := range s.pending {
		if e.Pid == pid {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			return e, true
		}
	}
	return runc.Exit{}, false
}

// exitLocked handles one reaped process. An exec's exit is published at
// once; an init's waits until its container has no running exec, so that
// every exec's TaskExit precedes the init's.
func (s *Service) exitLocked(r running, e runc.Exit) {
	c := r.c
	if r.execID != "" {
		c.runningExecs--
		s.checkOOMLocked(c)
		s.publishExitLocked(c, r.p, e)
		if c.runningExecs == 0 && c.pendingInit != nil {
			s.flushInitExitLocked(c)
		}
		return
	}
	if c.runningExecs > 0 {
		c.pendingInit = &e
		c.graceTimer = time.AfterFunc(execExitGrace, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if c.pendingInit != nil {
				log.G(s.ctx).WithField("container_id", c.init.ID()).Warn("exec processes outlived their init; publishing its exit")
				s.flushInitExitLocked(c)
			}
		})
		return
	}
	s.publishInitExitLocked(c, e)
}

func (s *Service) flushInitExitLocked(c *container) {
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
func (s *Service) publishInitExitLocked(c *container, e runc.Exit) {
	s.unwatchLocked(c)
	s.publishExitLocked(c, c.init, e)
}

// publishExitLocked queues TaskExit and only then marks the process
// stopped, so a Delete (which needs it stopped) can never queue its
// TaskDelete ahead of the exit.
func (s *Service) publishExitLocked(c *container, p proc, e runc.Exit) {
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
