package task

import (
	"context"
	"fmt"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// taskV2 serves the task API v2, which containerd 1.6 and 1.7 speak (and
// 2.x to a shim that does not name a version), with the one Service: each
// request is converted to its v3 twin and each response back. The two
// versions' messages are the same protobuf messages under another package
// name (TestTaskV2MessagesMatchV3 checks every field), so converting is a
// marshal and an unmarshal, and every guarantee of the v3 service holds
// for v2 callers.
type taskV2 struct{ s *Service }

var _ taskv2.TTRPCTaskService = taskV2{}

// convert copies from into to, a message with the same fields.
func convert(from, to proto.Message) error {
	data, err := proto.Marshal(from)
	if err != nil {
		return err
	}
	return proto.Unmarshal(data, to)
}

// viaV3 serves one v2 call with the v3 method f: r2 converted into q3,
// f's answer converted into p2.
func viaV3[Q3, P3, P2 proto.Message](ctx context.Context, r2 proto.Message, q3 Q3, f func(context.Context, Q3) (P3, error), p2 P2) (P2, error) {
	var zero P2
	if err := convert(r2, q3); err != nil {
		return zero, errgrpc.ToGRPC(fmt.Errorf("task v2 request: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	p3, err := f(ctx, q3)
	if err != nil {
		return zero, err
	}
	if err := convert(p3, p2); err != nil {
		return zero, errgrpc.ToGRPC(fmt.Errorf("task v2 response: %w", err))
	}
	return p2, nil
}

func (t taskV2) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return viaV3(ctx, r, &taskapi.StateRequest{}, t.s.State, &taskv2.StateResponse{})
}

func (t taskV2) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	return viaV3(ctx, r, &taskapi.CreateTaskRequest{}, t.s.Create, &taskv2.CreateTaskResponse{})
}

func (t taskV2) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	return viaV3(ctx, r, &taskapi.StartRequest{}, t.s.Start, &taskv2.StartResponse{})
}

func (t taskV2) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	return viaV3(ctx, r, &taskapi.DeleteRequest{}, t.s.Delete, &taskv2.DeleteResponse{})
}

func (t taskV2) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return viaV3(ctx, r, &taskapi.PidsRequest{}, t.s.Pids, &taskv2.PidsResponse{})
}

func (t taskV2) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.PauseRequest{}, t.s.Pause, &emptypb.Empty{})
}

func (t taskV2) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.ResumeRequest{}, t.s.Resume, &emptypb.Empty{})
}

func (t taskV2) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.CheckpointTaskRequest{}, t.s.Checkpoint, &emptypb.Empty{})
}

func (t taskV2) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.KillRequest{}, t.s.Kill, &emptypb.Empty{})
}

func (t taskV2) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.ExecProcessRequest{}, t.s.Exec, &emptypb.Empty{})
}

func (t taskV2) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.ResizePtyRequest{}, t.s.ResizePty, &emptypb.Empty{})
}

func (t taskV2) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.CloseIORequest{}, t.s.CloseIO, &emptypb.Empty{})
}

func (t taskV2) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.UpdateTaskRequest{}, t.s.Update, &emptypb.Empty{})
}

func (t taskV2) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	return viaV3(ctx, r, &taskapi.WaitRequest{}, t.s.Wait, &taskv2.WaitResponse{})
}

func (t taskV2) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return viaV3(ctx, r, &taskapi.StatsRequest{}, t.s.Stats, &taskv2.StatsResponse{})
}

func (t taskV2) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return viaV3(ctx, r, &taskapi.ConnectRequest{}, t.s.Connect, &taskv2.ConnectResponse{})
}

func (t taskV2) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	return viaV3(ctx, r, &taskapi.ShutdownRequest{}, t.s.Shutdown, &emptypb.Empty{})
}
