package task

import (
	"context"
	"strings"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/reflect/protoreflect"

	"oomshim/process"
)

// The v2 service converts by wire format, which is lossless only while
// every v3 message has a v2 twin with the same fields.
func TestTaskV2MessagesMatchV3(t *testing.T) {
	v3 := taskapi.File_runtime_task_v3_shim_proto.Messages()
	v2 := taskv2.File_runtime_task_v2_shim_proto.Messages()
	if v3.Len() == 0 {
		t.Fatal("no v3 messages")
	}
	for i := 0; i < v3.Len(); i++ {
		m3 := v3.Get(i)
		m2 := v2.ByName(m3.Name())
		if m2 == nil {
			t.Errorf("v3 message %s has no v2 twin", m3.Name())
			continue
		}
		sameFields(t, m3, m2)
	}
}

func sameFields(t *testing.T, m3, m2 protoreflect.MessageDescriptor) {
	t.Helper()
	f3, f2 := m3.Fields(), m2.Fields()
	if f3.Len() != f2.Len() {
		t.Errorf("%s: %d fields in v3, %d in v2", m3.Name(), f3.Len(), f2.Len())
		return
	}
	for j := 0; j < f3.Len(); j++ {
		a := f3.Get(j)
		b := f2.ByNumber(a.Number())
		if b == nil || a.Name() != b.Name() || a.Kind() != b.Kind() || a.Cardinality() != b.Cardinality() {
			t.Errorf("%s field %d (%s): v2 has %v", m3.Name(), a.Number(), a.Name(), b)
			continue
		}
		if a.Kind() == protoreflect.MessageKind && localName(a.Message()) != localName(b.Message()) {
			t.Errorf("%s field %s: message %s in v3, %s in v2", m3.Name(), a.Name(), a.Message().FullName(), b.Message().FullName())
		}
	}
}

// localName drops the task API's own package, which differs between the
// versions, and keeps any other (e.g. google.protobuf.Timestamp).
func localName(m protoreflect.MessageDescriptor) string {
	n := string(m.FullName())
	for _, p := range []string{"containerd.task.v2.", "containerd.task.v3."} {
		n = strings.TrimPrefix(n, p)
	}
	return n
}

// A v2 caller gets the same service: create, start, state, exit, wait,
// delete, with the same events and errors.
func TestTaskV2Lifecycle(t *testing.T) {
	h := newHarness(t, nil)
	v2 := taskV2{h.svc}
	ctx := context.Background()
	opts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := v2.Create(ctx, &taskv2.CreateTaskRequest{ID: "c1", Bundle: h.bundle(), Options: opts})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	init := h.inits["c1"]
	if cr.Pid != uint32(init.Pid()) {
		t.Fatalf("create: pid %d, want %d", cr.Pid, init.Pid())
	}
	if _, err := v2.Start(ctx, &taskv2.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	st, err := v2.State(ctx, &taskv2.StateRequest{ID: "c1"})
	if err != nil || st.ID != "c1" || st.Bundle == "" || st.Pid != uint32(init.Pid()) {
		t.Fatalf("state: %+v, %v", st, err)
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 7)})
	w, err := v2.Wait(ctx, &taskv2.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 7 || w.ExitedAt == nil {
		t.Fatalf("wait: %+v, %v", w, err)
	}
	d, err := v2.Delete(ctx, &taskv2.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 7 {
		t.Fatalf("delete: %+v, %v", d, err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
	if _, err := v2.State(ctx, &taskv2.StateRequest{ID: "c1"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("state of a deleted task: %v, want NotFound", err)
	}
	if _, err := v2.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "c1"}); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
