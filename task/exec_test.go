package task

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"oomshim/process"
)

// startInit creates and starts container id.
func (h *harness) startInit(id string) *fakeInit {
	h.t.Helper()
	init := h.create(id)
	if _, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: id}); err != nil {
		h.t.Fatalf("start %s: %v", id, err)
	}
	return init
}

func (h *harness) startExec(id, execID string) error {
	_, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: id, ExecID: execID})
	return errgrpc.ToNative(err)
}

func (h *harness) wantExits(ids ...string) {
	h.t.Helper()
	h.flush()
	if got := h.rec.exits(); !slices.Equal(got, ids) {
		h.t.Fatalf("TaskExit of %v, want %v", got, ids)
	}
}

// An exec counts as running from the moment its Start is called: the init
// dying while `runc exec` is still at work holds the init's TaskExit until
// the exec has started and exited. Meanwhile another exec can be added,
// and its Start fails with FailedPrecondition.
func TestInitExitWaitsForStartingExec(t *testing.T) {
	h := newHarness(t, nil)
	init := h.startInit("c1")
	e1 := h.exec("c1", "e1")
	var e2Add, e2Start error
	e1.onStart = func() {
		h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137)})
		h.flush()
		if got := h.rec.exits(); len(got) > 0 {
			t.Errorf("TaskExit of %v while an exec was inside its Start", got)
		}
		spec, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}, Cwd: "/"})
		if err != nil {
			t.Error(err)
			return
		}
		_, e2Add = h.svc.Exec(context.Background(), &taskapi.ExecProcessRequest{ID: "c1", ExecID: "e2", Spec: spec})
		e2Start = h.startExec("c1", "e2")
	}
	if err := h.startExec("c1", "e1"); err != nil {
		t.Fatal(err)
	}
	if e2Add != nil {
		t.Errorf("Exec while the init's exit is held: %v, want it added", e2Add)
	}
	if !errdefs.IsFailedPrecondition(e2Start) {
		t.Errorf("Start of an exec after the init exited: %v, want FailedPrecondition", e2Start)
	}
	h.wantExits()
	h.svc.HandleExits([]process.Reaped{exit(e1.Pid(), 137)})
	h.wantExits("e1", "c1")
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit")
}

// An exec whose start fails after the init died releases the init's exit.
func TestInitExitAfterExecStartFails(t *testing.T) {
	h := newHarness(t, nil)
	init := h.startInit("c1")
	e1 := h.exec("c1", "e1")
	e1.startErr = errors.New("runc exec: container not running")
	e1.onStart = func() { h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)}) }
	if err := h.startExec("c1", "e1"); err == nil {
		t.Fatal("exec start succeeded, want its error")
	}
	h.wantExits("c1")
}

// Two concurrent Start calls of one exec make one process; of one init,
// one runc start, and the loser does not disturb the winner's window.
func TestConcurrentStartsMakeOneProcess(t *testing.T) {
	h := newHarness(t, nil)
	init := h.create("c1")
	var second error
	init.onStart = func() {
		_, second = h.svc.Start(context.Background(), &taskapi.StartRequest{ID: "c1"})
		h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)}) // dies inside the winner's window
	}
	if _, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if !errdefs.IsFailedPrecondition(errgrpc.ToNative(second)) {
		t.Errorf("concurrent init Start: %v, want FailedPrecondition", second)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exit")

	h2 := newHarness(t, nil)
	h2.startInit("c2")
	e := h2.exec("c2", "e")
	var starts sync.WaitGroup
	errs := make([]error, 8)
	release := make(chan struct{})
	e.onStart = func() { <-release }
	for i := range errs {
		starts.Add(1)
		go func() {
			defer starts.Done()
			errs[i] = h2.startExec("c2", "e")
		}()
	}
	close(release)
	starts.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errdefs.IsFailedPrecondition(err):
			t.Errorf("losing exec Start: %v, want FailedPrecondition", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent exec Starts succeeded, want 1", ok, len(errs))
	}
}

// The request's terminal flag wins over the process spec's.
func TestExecTerminalFromRequest(t *testing.T) {
	h := newHarness(t, nil)
	h.startInit("c1")
	spec, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"sh"}, Cwd: "/", Terminal: false})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Exec(context.Background(), &taskapi.ExecProcessRequest{ID: "c1", ExecID: "tty", Spec: spec, Terminal: true}); err != nil {
		t.Fatal(err)
	}
	if !h.execs["tty"].spec.Terminal {
		t.Error("exec spec without a terminal though the request asked for one")
	}
}

const sharedPIDConfig = `{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}`

// A container sharing a PID namespace: when its init exits, the rest of
// its processes are killed (runc kill --all); Kill with all still reaches
// them after the init stopped; a container with its own PID namespace is
// left to the kernel.
func TestSharedPIDNamespaceKillAll(t *testing.T) {
	h := newHarness(t, nil)
	init := h.createIn("c1", h.bundleWith(sharedPIDConfig))
	init.killAlls = make(chan struct{}, 4)
	if _, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	select {
	case <-init.killAlls:
	case <-time.After(10 * time.Second):
		t.Fatal("no runc kill --all after the init of a shared PID namespace exited")
	}
	h.wantExits("c1")
	if _, err := h.svc.Kill(context.Background(), &taskapi.KillRequest{ID: "c1", Signal: 9, All: true}); err != nil {
		t.Errorf("Kill all of a stopped init: %v, want it sent", err)
	}
	if _, err := h.svc.Kill(context.Background(), &taskapi.KillRequest{ID: "c1", Signal: 9}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("Kill of a stopped init: %v, want NotFound", err)
	}

	own := h.startInit("c2")
	own.killAlls = make(chan struct{}, 1)
	h.svc.HandleExits([]process.Reaped{exit(own.Pid(), 0)})
	h.wantExits("c1", "c2")
	select {
	case <-own.killAlls:
		t.Error("runc kill --all for a container with its own PID namespace")
	default:
	}
}

// Delete of a container whose exec outlived its init kills the exec and
// publishes its exit before the TaskDelete; it never drops it running.
func TestDeleteEndsExecsFirst(t *testing.T) {
	h := newHarness(t, nil)
	init := h.startInit("c1")
	e := h.exec("c1", "e")
	if err := h.startExec("c1", "e"); err != nil {
		t.Fatal(err)
	}
	e.onKill = func() { go h.svc.HandleExits([]process.Reaped{exit(e.Pid(), 137)}) }
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	// The init's exit is published once execExitGrace has passed.
	ctx, cancel := context.WithTimeout(context.Background(), 4*execExitGrace)
	defer cancel()
	if _, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st != process.Running {
		t.Fatalf("exec is %s before the Delete", st)
	}
	if _, err := h.svc.Delete(context.Background(), &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit", "/tasks/delete")
	h.wantExits("c1", "e")
}

// Deleting a container tears its execs' stdio down (draining copies,
// stopping logging binaries: up to seconds) without the service's lock:
// the shim's other containers are answered meanwhile.
func TestDeleteExecsWithoutTheLock(t *testing.T) {
	h := newHarness(t, nil)
	h.startInit("other")
	init := h.startInit("c1")
	e := h.exec("c1", "e1")
	if err := h.startExec("c1", "e1"); err != nil {
		t.Fatal(err)
	}
	h.svc.HandleExits([]process.Reaped{exit(e.Pid(), 0), exit(init.Pid(), 0)})
	h.flush()
	answered := make(chan error, 1)
	e.onDelete = func() {
		go func() {
			_, err := h.svc.State(context.Background(), &taskapi.StateRequest{ID: "other"})
			answered <- err
		}()
		select {
		case err := <-answered:
			if err != nil {
				t.Errorf("State of another container during the exec's teardown: %v", err)
			}
		case <-time.After(5 * time.Second): // a hang guard
			t.Error("State of another container waited on an exec's teardown")
		}
	}
	if _, err := h.svc.Delete(context.Background(), &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if st := e.State(); st.Status != process.Deleted {
		t.Fatalf("exec %v after its container's Delete, want deleted", st.Status)
	}
}
