package task

import (
	"context"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"

	"oomshim/process"
)

// Checkpoint dumps the container with criu (`runc checkpoint`) into
// r.Path, with the runc CheckpointOptions of r.Options. TaskCheckpointed
// is queued once the dump succeeded; with exit, the init's exit (criu
// ends the container at the end of the dump) is held until then, so
// TaskCheckpointed comes before that TaskExit.
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (_ *emptypb.Empty, retErr error) {
	ctx = withIDs(ctx, r.ID, "")
	defer func() { retErr = toGRPC(retErr) }()
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	cfg, err := checkpointConfig(r)
	if err != nil {
		return nil, err
	}
	pid := c.init.Pid()
	held := s.beginStart(pid)
	err = c.init.Checkpoint(ctx, cfg)
	var announce func()
	if err == nil {
		announce = func() {
			s.queue(ctx, "/tasks/checkpointed", &eventstypes.TaskCheckpointed{ContainerID: r.ID, Checkpoint: cfg.ImagePath})
		}
	}
	run := &running{c: c, p: c.init}
	if !held {
		run = nil
	}
	s.endStart(run, announce)
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// checkpointConfig reads a checkpoint request's options: runc's
// CheckpointOptions, or none.
func checkpointConfig(r *taskapi.CheckpointTaskRequest) (process.CheckpointConfig, error) {
	cfg := process.CheckpointConfig{ImagePath: r.Path}
	if r.Options == nil || len(r.Options.GetValue()) == 0 && r.Options.GetTypeUrl() == "" {
		return cfg, nil
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return cfg, fmt.Errorf("checkpoint options: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	o, ok := v.(*options.CheckpointOptions)
	if !ok {
		return cfg, fmt.Errorf("checkpoint options of type %s, want containerd.runc.v1.CheckpointOptions: %w", r.Options.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	switch o.CgroupsMode {
	case "", "soft", "full", "strict":
	default:
		return cfg, fmt.Errorf("checkpoint cgroups mode %q (want soft, full or strict): %w", o.CgroupsMode, errdefs.ErrInvalidArgument)
	}
	if o.ImagePath != "" {
		cfg.ImagePath = o.ImagePath
	}
	cfg.WorkPath = o.WorkPath
	cfg.ParentPath = o.ParentPath
	cfg.Exit = o.Exit
	cfg.OpenTCP = o.OpenTcp
	cfg.ExternalUnixSockets = o.ExternalUnixSockets
	cfg.Terminal = o.Terminal
	cfg.FileLocks = o.FileLocks
	cfg.EmptyNamespaces = o.EmptyNamespaces
	cfg.CgroupsMode = o.CgroupsMode
	return cfg, nil
}
