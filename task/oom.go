package task

import (
	"context"
	"errors"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"

	"oomshim/event"
	"oomshim/oom"
)

// OOMReporter returns the reporter for the OOM watcher: it queues TaskOOM
// on the one event sequencer. The watcher calls it with the container's
// watch locked, and the exit path stops that watch before queueing
// TaskExit, so a TaskOOM is always queued ahead of the exit it explains.
func OOMReporter(ctx context.Context, events *event.Sequencer) oom.Reporter {
	return func(ev oom.Event) {
		if _, err := events.Publish(ctx, "/tasks/oom", &eventstypes.TaskOOM{ContainerID: ev.ID}); err != nil {
			log.G(ctx).WithError(err).WithField("container_id", ev.ID).Error("queue TaskOOM")
		}
	}
}

// watchLocked starts the OOM watch of a just-created container: after
// `runc create` and before Start, so a process that OOMs at once is seen.
func (s *Service) watchLocked(ctx context.Context, c *container) {
	cg := c.init.Cgroup()
	if s.oom == nil || cg == nil {
		return
	}
	if err := s.oom.Add(c.init.ID(), cg.MemoryDir(), cg.Unified()); err != nil {
		log.G(ctx).WithError(err).WithField("cgroup", cg.MemoryDir()).Warn("OOM watch not started")
	}
}

// checkOOMLocked re-reads the container's OOM counters before an exec's
// exit is queued, so an OOM-killed exec's TaskOOM comes first.
func (s *Service) checkOOMLocked(c *container) {
	if s.oom == nil {
		return
	}
	if err := s.oom.Check(c.init.ID()); err != nil && !errors.Is(err, oom.ErrNotWatched) {
		log.G(s.ctx).WithError(err).WithField("container_id", c.init.ID()).Warn("OOM check")
	}
}

// unwatchLocked ends the container's OOM watch with a final read and keeps
// its last counters for Stats. sigkilled says the init died of SIGKILL,
// which lets the watch look at the parent cgroup when the container's own
// was removed before that read (oom/parent.go).
func (s *Service) unwatchLocked(c *container, sigkilled bool) {
	if s.oom == nil {
		return
	}
	counts, err := s.oom.Stop(c.init.ID(), sigkilled)
	if err != nil {
		if !errors.Is(err, oom.ErrNotWatched) {
			log.G(s.ctx).WithError(err).WithField("container_id", c.init.ID()).Warn("OOM watch stop")
		}
		return
	}
	c.finalOOM = &counts
}
