package task

import (
	"context"
	"errors"
	"fmt"

	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"oomshim/runc"
)

// Stats returns the container's cgroup metrics. Once the cgroup is gone
// (the init exited and, with the systemd driver, its scope went with it),
// it keeps answering the final memory events until Delete.
func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (_ *taskapi.StatsResponse, retErr error) {
	defer func() { retErr = toGRPC(retErr) }()
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	cg := c.init.Cgroup()
	if cg == nil {
		return nil, fmt.Errorf("container %q has no known cgroup: %w", r.ID, errdefs.ErrNotFound)
	}
	a, err := cg.Stats()
	if errors.Is(err, runc.ErrCgroupGone) {
		s.mu.Lock()
		final := c.finalOOM
		s.mu.Unlock()
		if final == nil {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		a, err = finalStats(cg.Unified(), final.OOMKill, final.Max)
	}
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// finalStats is what Stats answers after the cgroup has gone: the memory
// events as the OOM watcher last read them, in the metrics type of the
// cgroup's hierarchy. CRI cross-checks oom_kill on an exit 137, and with
// the systemd driver the scope can vanish before anyone asked.
func finalStats(unified bool, oomKill, max uint64) (*anypb.Any, error) {
	if unified {
		return typeurl.MarshalAnyToProto(&stats2.Metrics{
			MemoryEvents: &stats2.MemoryEvents{OomKill: oomKill, Oom: oomKill, Max: max},
		})
	}
	return typeurl.MarshalAnyToProto(&stats1.Metrics{
		MemoryOomControl: &stats1.MemoryOomControl{OomKill: oomKill},
	})
}

// ResizePty sets the window size of a process's terminal; for a process
// without one it does nothing (as containerd's own shim).
func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = toGRPC(retErr) }()
	_, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.Resize(r.Width, r.Height); err != nil {
		return nil, fmt.Errorf("resize terminal: %w", err)
	}
	return &emptypb.Empty{}, nil
}

// Pause freezes a running container (`runc pause`) and publishes
// TaskPaused. While paused, execs cannot start and the container cannot be
// deleted; it can be killed, resumed and updated.
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return s.setFrozen(ctx, r.ID, true)
}

// Resume thaws a paused container (`runc resume`) and publishes
// TaskResumed.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return s.setFrozen(ctx, r.ID, false)
}

func (s *Service) setFrozen(ctx context.Context, id string, frozen bool) (_ *emptypb.Empty, retErr error) {
	ctx = withIDs(ctx, id, "")
	defer func() { retErr = toGRPC(retErr) }()
	c, err := s.get(id)
	if err != nil {
		return nil, err
	}
	if frozen {
		err = c.init.Pause(ctx)
	} else {
		err = c.init.Resume(ctx)
	}
	if err != nil {
		return nil, err
	}
	if frozen {
		s.queue(ctx, "/tasks/paused", &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.queue(ctx, "/tasks/resumed", &eventstypes.TaskResumed{ContainerID: id})
	}
	return &emptypb.Empty{}, nil
}

// Update sets the container's cgroup resources (`runc update`), as CRI's
// UpdateContainerResources asks for kubelet's CPU manager and in-place pod
// resize. An exited container answers NotFound, which CRI takes as "task
// already gone". Annotations are not used by runc and are ignored.
func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (_ *emptypb.Empty, retErr error) {
	ctx = withIDs(ctx, r.ID, "")
	defer func() { retErr = toGRPC(retErr) }()
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	res, err := linuxResources(r.Resources)
	if err != nil {
		return nil, err
	}
	if err := c.init.Update(ctx, res); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
