package task

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"oomshim/event"
	"oomshim/process"
	"oomshim/runc"
)

// recorder forwards nothing; it records topics in order. A test may hold
// forwards with gate.
type recorder struct {
	mu      sync.Mutex
	topics  []string
	exitIDs []string // the process ID of each TaskExit
	gate    chan struct{}
}

func (r *recorder) Forward(ctx context.Context, env *types.Envelope) error {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	r.topics = append(r.topics, env.Topic)
	if v, err := typeurl.UnmarshalAny(env.Event); err == nil {
		if ex, ok := v.(*eventstypes.TaskExit); ok {
			r.exitIDs = append(r.exitIDs, ex.ID)
		}
	}
	r.mu.Unlock()
	return nil
}

func (r *recorder) exits() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.exitIDs...)
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.topics...)
}

type harness struct {
	t       *testing.T
	svc     *Service
	rec     *recorder
	events  *event.Sequencer
	inits   map[string]*fakeInit
	execs   map[string]*fakeExec
	nextPid int
	stopped chan struct{}
}

func newHarness(t *testing.T, rec *recorder) *harness {
	if rec == nil {
		rec = &recorder{}
	}
	h := &harness{t: t, rec: rec, inits: map[string]*fakeInit{}, execs: map[string]*fakeExec{}, nextPid: 100, stopped: make(chan struct{})}
	h.events = event.New("ns", rec, event.Backoff{Attempts: 1})
	var once sync.Once
	h.svc = New(context.Background(), Config{Namespace: "ns", Events: h.events, Shutdown: func() { once.Do(func() { close(h.stopped) }) }})
	h.svc.factory = factory{
		newInit: func(c process.InitConfig) initProcess {
			h.nextPid++
			f := &fakeInit{fakeProc: newFakeProc(c.ID, h.nextPid), bundle: c.Bundle}
			h.inits[c.ID] = f
			return f
		},
		newExec: func(c process.ExecConfig) execProcess {
			h.nextPid++
			f := &fakeExec{fakeProc: newFakeProc(c.ID, 0), spec: c.Spec}
			f.startPid = h.nextPid
			h.execs[c.ID] = f
			return f
		},
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.events.Shutdown(ctx)
	})
	return h
}

// start starts the container's init (execID "") or an exec and fails the
// test if Start fails.
func (h *harness) start(id, execID string) *taskapi.StartResponse {
	h.t.Helper()
	r, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: id, ExecID: execID})
	if err != nil {
		h.t.Fatalf("start %s %s: %v", id, execID, err)
	}
	return r
}

// wait waits for the process and fails the test if Wait fails.
func (h *harness) wait(id, execID string) *taskapi.WaitResponse {
	h.t.Helper()
	r, err := h.svc.Wait(context.Background(), &taskapi.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		h.t.Fatalf("wait %s %s: %v", id, execID, err)
	}
	return r
}

// bundleConfig is a container with a PID namespace of its own.
const bundleConfig = `{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"}]}}`

func (h *harness) bundle() string { return h.bundleWith(bundleConfig) }

func (h *harness) bundleWith(config string) string {
	dir := h.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return dir
}

func (h *harness) create(id string) *fakeInit {
	h.t.Helper()
	return h.createIn(id, h.bundle())
}

func (h *harness) createIn(id, bundle string) *fakeInit {
	h.t.Helper()
	opts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "/bin/true"})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.svc.Create(context.Background(), &taskapi.CreateTaskRequest{ID: id, Bundle: bundle, Options: opts}); err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
	return h.inits[id]
}

func (h *harness) exec(id, execID string) *fakeExec {
	h.t.Helper()
	spec, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}, Cwd: "/"})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.svc.Exec(context.Background(), &taskapi.ExecProcessRequest{ID: id, ExecID: execID, Spec: spec}); err != nil {
		h.t.Fatalf("exec %s: %v", execID, err)
	}
	return h.execs[execID]
}

func (h *harness) flush() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.events.Flush(ctx); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) want(topics ...string) {
	h.t.Helper()
	h.flush()
	if got := h.rec.got(); !slices.Equal(got, topics) {
		h.t.Fatalf("events %v, want %v", got, topics)
	}
}

func exit(pid, status int) process.Reaped {
	return process.Reaped{Pid: pid, Status: status, Timestamp: time.Now()}
}

func TestLifecycleEvents(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	if _, err := h.svc.Start(ctx, &taskapi.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 3)})
	w, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait: %v %v", w, err)
	}
	d, err := h.svc.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 3 {
		t.Fatalf("delete: %v %v", d, err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
	if _, err := h.svc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	<-h.stopped
}

// TestInitExitRecordedInBundle: the init's exit is in the bundle before
// its TaskExit is queued, for the delete action of a shim that dies before
// containerd has the event.
func TestInitExitRecordedInBundle(t *testing.T) {
	h := newHarness(t, nil)
	init := h.create("c1")
	if _, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	e := exit(init.Pid(), 3)
	h.svc.HandleExits([]process.Reaped{e})
	got, err := runc.ReadExitStatus(init.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	if got.Pid != init.Pid() || got.Status != 3 || !got.Timestamp.Equal(e.Timestamp) {
		t.Fatalf("recorded %+v, want pid %d, status 3, at %v", got, init.Pid(), e.Timestamp)
	}
}

// containerd gives Shutdown 3 s. With containerd slow to take events (a
// forward in flight, not failing), Shutdown still answers within the
// caller's deadline; the event stays queued for the server's last drain.
func TestShutdownWithinCallersDeadline(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	h := newHarness(t, rec)
	t.Cleanup(func() { close(rec.gate) }) // before the harness's cleanup
	h.create("c1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := h.svc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: "c1", Now: true}); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Shutdown answered after the caller's deadline")
	}
	select {
	case <-h.stopped:
	default:
		t.Fatal("Shutdown answered without shutting the server down")
	}
	if got := rec.got(); len(got) != 0 {
		t.Fatalf("forwarded %v with containerd not answering", got)
	}
}

// expectExitHeld checks, right after the init of id was reaped and long
// before any grace period can have passed, that its TaskExit is held: not
// queued, and Wait does not answer.
func (h *harness) expectExitHeld(id string) {
	h.t.Helper()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.svc.Wait(done, &taskapi.WaitRequest{ID: id}); err == nil {
		h.t.Fatalf("Wait for %s answered while its exit should be held", id)
	}
	if err := h.events.Flush(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	for _, topic := range h.rec.got() {
		if topic == "/tasks/exit" {
			h.t.Fatalf("TaskExit of %s published at once: %v", id, h.rec.got())
		}
	}
}

// The init reaped while `runc start` is still returning: its exit must not
// overtake its start event.
func TestInitExitDuringStart(t *testing.T) {
	h := newHarness(t, nil)
	init := h.create("c1")
	init.onStart = func() { h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)}) }
	if _, err := h.svc.Start(context.Background(), &taskapi.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exit")
	if s := init.Status(); s != process.Stopped {
		t.Fatalf("init is %s after its exit", s)
	}
}

// An exec reaped before `runc exec` has told the shim its pid.
func TestExecExitBeforePidKnown(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.create("c1")
	h.start("c1", "")
	e := h.exec("c1", "e1")
	e.onStart = func() { h.svc.HandleExits([]process.Reaped{exit(e.startPid, 5)}) }
	if _, err := h.svc.Start(ctx, &taskapi.StartRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	w, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1", ExecID: "e1"})
	if err != nil || w.ExitStatus != 5 {
		t.Fatalf("wait: %v %v", w, err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit")
}

// The kernel kills the execs when the init dies, but the reaper may see the
// init first; the init's TaskExit still comes last.
func TestInitExitWaitsForExecExits(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	h.start("c1", "")
	e1, e2 := h.exec("c1", "e1"), h.exec("c1", "e2")
	h.start("c1", "e1")
	h.start("c1", "e2")
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137), exit(e1.Pid(), 137)})
	h.flush()
	if s := init.Status(); s != process.Running {
		t.Fatalf("init marked %s while an exec still runs", s)
	}
	h.svc.HandleExits([]process.Reaped{exit(e2.Pid(), 137)})
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-added",
		"/tasks/exec-started", "/tasks/exec-started", "/tasks/exit", "/tasks/exit", "/tasks/exit")
	if w, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
}

// An exec that outlives its init (no private pid namespace) delays the
// init's exit, but only for a bounded time: both bounds are checked.
func TestInitExitNotWedgedByExec(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	h.start("c1", "")
	h.exec("c1", "e1")
	h.start("c1", "e1")
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	h.expectExitHeld("c1")
	wctx, cancel := context.WithTimeout(ctx, 10*execExitGrace)
	defer cancel()
	if _, err := h.svc.Wait(wctx, &taskapi.WaitRequest{ID: "c1"}); err != nil {
		t.Fatalf("init wait wedged by a live exec: %v", err)
	}
}

func TestWaitHoldsUntilExitForwarded(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	h := newHarness(t, rec)
	ctx := context.Background()
	go func() { // let create and start through
		rec.gate <- struct{}{}
		rec.gate <- struct{}{}
	}()
	init := h.create("c1")
	h.start("c1", "")
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 1)})
	done := make(chan error, 1)
	go func() {
		_, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
		done <- err
	}()
	select {
	case <-done:
		t.Fatal("Wait returned before TaskExit was forwarded")
	case <-time.After(50 * time.Millisecond):
	}
	rec.gate <- struct{}{} // TaskExit goes out
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(rec.gate)
}

func TestErrorCodes(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	h.start("c1", "")
	code := func(err error) error { return errgrpc.ToNative(err) }
	for _, tc := range []struct {
		name string
		call func() error
		is   func(error) bool
	}{
		{"id with slash", func() error {
			_, err := h.svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "../x", Bundle: h.bundle()})
			return err
		}, errdefs.IsInvalidArgument},
		{"duplicate id", func() error {
			_, err := h.svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: h.bundle()})
			return err
		}, errdefs.IsAlreadyExists},
		{"relative bundle", func() error {
			_, err := h.svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c2", Bundle: "rel/dir"})
			return err
		}, errdefs.IsInvalidArgument},
		{"missing runc", func() error {
			opts, _ := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "/nonexistent/runc"})
			_, err := h.svc.Create(ctx, &taskapi.CreateTaskRequest{ID: "c3", Bundle: h.bundle(), Options: opts})
			return err
		}, errdefs.IsFailedPrecondition},
		{"unknown state", func() error {
			_, err := h.svc.State(ctx, &taskapi.StateRequest{ID: "nope"})
			return err
		}, errdefs.IsNotFound},
		{"unknown exec", func() error {
			_, err := h.svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", ExecID: "nope", Signal: 9})
			return err
		}, errdefs.IsNotFound},
		{"delete running", func() error {
			_, err := h.svc.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"})
			return err
		}, errdefs.IsFailedPrecondition},
		{"bad exec id", func() error {
			_, err := h.svc.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c1", ExecID: "a/b"})
			return err
		}, errdefs.IsInvalidArgument},
		{"exec without spec", func() error {
			_, err := h.svc.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c1", ExecID: "e"})
			return err
		}, errdefs.IsInvalidArgument},
		{"checkpoint of an unknown container", func() error {
			_, err := h.svc.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: "nope", Path: "/image"})
			return err
		}, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil || !tc.is(code(err)) {
				t.Fatalf("got %v", err)
			}
		})
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	h.wait("c1", "")
	if _, err := h.svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 9}); !errdefs.IsNotFound(code(err)) {
		t.Fatalf("kill of an exited init: %v, want NotFound", err)
	}
	spec, _ := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}})
	if _, err := h.svc.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c1", ExecID: "late", Spec: spec}); !errdefs.IsFailedPrecondition(code(err)) {
		t.Fatalf("exec in a stopped container: %v, want FailedPrecondition", err)
	}
}

// An init reaped between create and start: the failed start must not put
// its pid back in the running table, where a later process re-using the
// pid would be taken for it.
func TestDeadInitNotReRegistered(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137)})
	if _, err := h.svc.Start(ctx, &taskapi.StartRequest{ID: "c1"}); err == nil {
		t.Fatal("start of a stopped init succeeded")
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)}) // a stranger with the same pid
	h.want("/tasks/create", "/tasks/exit")
}

// Update hands the decoded resources to the init; bad resources are
// InvalidArgument, an unknown or exited container NotFound (CRI's "task
// already gone").
func TestUpdate(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	h.start("c1", "")
	code := func(err error) error { return errgrpc.ToNative(err) }

	limit, shares := int64(48<<20), uint64(512)
	res, err := typeurl.MarshalAnyToProto(&specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Shares: &shares},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetTypeUrl() != "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources" {
		t.Fatalf("type URL %q is not the one containerd sends", res.GetTypeUrl())
	}
	if _, err := h.svc.Update(ctx, &taskapi.UpdateTaskRequest{ID: "c1", Resources: res}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if len(init.updates) != 1 || *init.updates[0].Memory.Limit != limit || *init.updates[0].CPU.Shares != shares {
		t.Fatalf("init got %+v", init.updates)
	}

	proc, _ := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}})
	for _, tc := range []struct {
		name string
		req  *taskapi.UpdateTaskRequest
		is   func(error) bool
	}{
		{"unknown id", &taskapi.UpdateTaskRequest{ID: "nope", Resources: res}, errdefs.IsNotFound},
		{"no resources", &taskapi.UpdateTaskRequest{ID: "c1"}, errdefs.IsInvalidArgument},
		{"process spec as resources", &taskapi.UpdateTaskRequest{ID: "c1", Resources: proc}, errdefs.IsInvalidArgument},
		{"malformed resources", &taskapi.UpdateTaskRequest{ID: "c1", Resources: &anypb.Any{TypeUrl: res.TypeUrl, Value: []byte("{")}}, errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.svc.Update(ctx, tc.req); err == nil || !tc.is(code(err)) {
				t.Fatalf("got %v", err)
			}
		})
	}
	if len(init.updates) != 1 {
		t.Fatalf("a refused update reached the init: %+v", init.updates)
	}

	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	h.wait("c1", "")
	if _, err := h.svc.Update(ctx, &taskapi.UpdateTaskRequest{ID: "c1", Resources: res}); !errdefs.IsNotFound(code(err)) {
		t.Fatalf("update of an exited container: %v, want NotFound", err)
	}
}

// Pause and Resume move the init between running and paused with their
// events; a paused container refuses exec starts and Delete, and its exit
// is still recorded and published.
func TestPauseResume(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	code := func(err error) error { return errgrpc.ToNative(err) }
	init := h.create("c1")
	if _, err := h.svc.Pause(ctx, &taskapi.PauseRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(code(err)) {
		t.Fatalf("pause of a created container: %v, want FailedPrecondition", err)
	}
	h.start("c1", "")
	if _, err := h.svc.Resume(ctx, &taskapi.ResumeRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(code(err)) {
		t.Fatalf("resume of a running container: %v, want FailedPrecondition", err)
	}
	if _, err := h.svc.Pause(ctx, &taskapi.PauseRequest{ID: "nope"}); !errdefs.IsNotFound(code(err)) {
		t.Fatalf("pause of an unknown container: %v, want NotFound", err)
	}
	spec, _ := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}})
	if _, err := h.svc.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: spec}); err != nil {
		t.Fatalf("exec: %v", err)
	}

	if _, err := h.svc.Pause(ctx, &taskapi.PauseRequest{ID: "c1"}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	st, err := h.svc.State(ctx, &taskapi.StateRequest{ID: "c1"})
	if err != nil || st.Status != tasktypes.Status_PAUSED {
		t.Fatalf("state of a paused container: %v %v", st, err)
	}
	for name, call := range map[string]func() error{
		"pause again": func() error { _, err := h.svc.Pause(ctx, &taskapi.PauseRequest{ID: "c1"}); return err },
		"start exec":  func() error { _, err := h.svc.Start(ctx, &taskapi.StartRequest{ID: "c1", ExecID: "e1"}); return err },
		"new exec": func() error {
			_, err := h.svc.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c1", ExecID: "e2", Spec: spec})
			return err
		},
		"delete": func() error { _, err := h.svc.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"}); return err },
	} {
		if err := call(); !errdefs.IsFailedPrecondition(code(err)) {
			t.Errorf("%s while paused: %v, want FailedPrecondition", name, err)
		}
	}
	if _, err := h.svc.Resume(ctx, &taskapi.ResumeRequest{ID: "c1"}); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st, err := h.svc.State(ctx, &taskapi.StateRequest{ID: "c1"}); err != nil || st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("state after resume: %v, %v", st.GetStatus(), err)
	}

	// Killed while paused: the exit is recorded and published as usual.
	if _, err := h.svc.Pause(ctx, &taskapi.PauseRequest{ID: "c1"}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137)})
	w, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait after an exit while paused: %v %v", w, err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/paused", "/tasks/resumed", "/tasks/paused", "/tasks/exit")
}

// Processes with a terminal: a TaskExit waits until the terminal's output
// is drained into the fifo; meanwhile the reaped pid is not signalled, and
// the init's exit still comes after its exec's, whichever drains first.
func TestTerminalExitWaitsForDrain(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	code := func(err error) error { return errgrpc.ToNative(err) }
	init := h.create("c1")
	init.drained = make(chan struct{})
	h.start("c1", "")
	e := h.exec("c1", "e1")
	e.drained = make(chan struct{})
	h.start("c1", "e1")

	h.svc.HandleExits([]process.Reaped{exit(e.Pid(), 0), exit(init.Pid(), 137)})
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started")
	if _, err := h.svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", ExecID: "e1", Signal: 9}); !errdefs.IsNotFound(code(err)) {
		t.Fatalf("kill of a reaped exec: %v, want NotFound", err)
	}
	if _, err := h.svc.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 9}); !errdefs.IsNotFound(code(err)) {
		t.Fatalf("kill of a reaped init: %v, want NotFound", err)
	}
	if _, err := h.svc.ResizePty(ctx, &taskapi.ResizePtyRequest{ID: "c1", ExecID: "e1", Width: 80, Height: 24}); err != nil {
		t.Fatalf("resize: %v", err)
	}
	if len(e.sizes) != 1 || e.sizes[0] != [2]uint32{80, 24} {
		t.Fatalf("exec resized to %v", e.sizes)
	}

	close(init.drained)
	close(e.drained)
	if w, err := h.svc.Wait(ctx, &taskapi.WaitRequest{ID: "c1"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exit")
	if got := h.rec.exits(); len(got) != 2 || got[0] != "e1" || got[1] != "c1" {
		t.Fatalf("exits in order %v, want [e1 c1]", got)
	}
}

// A terminal that never drains (a background process holds it) delays the
// exit by ttyDrainGrace and no more: both bounds are checked.
func TestTerminalExitGrace(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	init := h.create("c1")
	init.drained = make(chan struct{})
	h.start("c1", "")
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 0)})
	h.expectExitHeld("c1")
	wctx, cancel := context.WithTimeout(ctx, 10*ttyDrainGrace)
	defer cancel()
	if _, err := h.svc.Wait(wctx, &taskapi.WaitRequest{ID: "c1"}); err != nil {
		t.Fatalf("exit wedged by an undrained terminal: %v", err)
	}
}
