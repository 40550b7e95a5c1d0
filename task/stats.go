package task

import (
	"context"
	"errors"
	"fmt"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
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
		a, err = cg.FinalStats(final.OOMKill, final.Max)
	}
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// ResizePty is not served yet: terminals are not supported.
func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("resize pty: %w", errdefs.ErrNotImplemented))
}

// Pause is not served yet.
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("pause: %w", errdefs.ErrNotImplemented))
}

// Resume is not served yet.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("resume: %w", errdefs.ErrNotImplemented))
}

// Checkpoint is not served yet.
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented))
}

// Update is not served yet.
func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("update: %w", errdefs.ErrNotImplemented))
}
