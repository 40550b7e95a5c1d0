package task

import (
	"context"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"oomshim/process"
)

// Checkpoint passes runc's CheckpointOptions through, and with exit the
// init's exit (criu ends the container at the end of the dump) comes after
// TaskCheckpointed.
func TestCheckpointOptionsAndOrder(t *testing.T) {
	h := newHarness(t, nil)
	init := h.startInit("c1")
	init.onCheckpoint = func() { h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137)}) }
	opts, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{
		Exit: true, OpenTcp: true, ExternalUnixSockets: true, Terminal: true, FileLocks: true,
		EmptyNamespaces: []string{"network"}, CgroupsMode: "soft", WorkPath: "/work", ParentPath: "/parent",
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Checkpoint(context.Background(), &taskapi.CheckpointTaskRequest{ID: "c1", Path: "/image", Options: opts}); err != nil {
		t.Fatal(err)
	}
	if len(init.checkpoints) != 1 {
		t.Fatalf("%d checkpoints", len(init.checkpoints))
	}
	got := init.checkpoints[0]
	if got.ImagePath != "/image" || !got.Exit || !got.OpenTCP || !got.ExternalUnixSockets || !got.Terminal || !got.FileLocks ||
		len(got.EmptyNamespaces) != 1 || got.CgroupsMode != "soft" || got.WorkPath != "/work" || got.ParentPath != "/parent" {
		t.Fatalf("checkpoint config %+v", got)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/checkpointed", "/tasks/exit")
}

// Options of another type, or an unknown cgroups mode, are refused; no
// options at all is a plain leave-running dump.
func TestCheckpointBadOptions(t *testing.T) {
	h := newHarness(t, nil)
	init := h.startInit("c1")
	wrong, err := typeurl.MarshalAnyToProto(&options.Options{})
	if err != nil {
		t.Fatal(err)
	}
	badMode, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{CgroupsMode: "sideways"})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []*anypb.Any{wrong, badMode, {TypeUrl: "nonsense", Value: []byte{0xff}}} {
		_, err := h.svc.Checkpoint(context.Background(), &taskapi.CheckpointTaskRequest{ID: "c1", Path: "/image", Options: o})
		if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
			t.Errorf("options %v: %v, want InvalidArgument", o.GetTypeUrl(), err)
		}
	}
	if _, err := h.svc.Checkpoint(context.Background(), &taskapi.CheckpointTaskRequest{ID: "c1", Path: "/image"}); err != nil {
		t.Fatal(err)
	}
	if n := len(init.checkpoints); n != 1 || init.checkpoints[0].Exit {
		t.Fatalf("checkpoints %+v, want one leave-running", init.checkpoints)
	}
	if _, err := h.svc.Checkpoint(context.Background(), &taskapi.CheckpointTaskRequest{ID: "nope", Path: "/image"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("checkpoint of an unknown container: %v", err)
	}
}
