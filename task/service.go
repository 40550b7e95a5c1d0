// Package task serves containerd's task API (v3) over ttrpc for the
// containers of one shim.
package task

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"oomshim/event"
	"oomshim/oom"
	"oomshim/process"
	"oomshim/runc"
)

// shutdownFlush bounds how long Shutdown waits for queued events; the
// caller's deadline (containerd gives Shutdown 3 s) bounds it too, less
// replyMargin to answer in.
const (
	shutdownFlush = 10 * time.Second
	replyMargin   = 500 * time.Millisecond
)

// flushContext is Shutdown's wait for queued events: shutdownFlush, and
// never past the caller's own deadline less replyMargin, so that a slow
// containerd does not make Shutdown miss that deadline. Whatever is still
// queued then is forwarded after the reply, before the shim exits.
func flushContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := shutdownFlush
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, max(time.Until(dl)-replyMargin, 0))
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// initProcess is a container's init process (*process.Init).
type initProcess interface {
	proc
	process.Container
	Status() process.Status
	Cgroup() *runc.Cgroup
	Create(ctx context.Context) error
	Start(ctx context.Context) error
	Kill(ctx context.Context, sig int, all bool) error
	KillAll(ctx context.Context) error
	Pids(ctx context.Context) ([]int, error)
	Update(ctx context.Context, r *specs.LinuxResources) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Delete(ctx context.Context) error
	Checkpoint(ctx context.Context, c process.CheckpointConfig) error
}

// execProcess is an exec process (*process.Exec).
type execProcess interface {
	proc
	Start(ctx context.Context) (int, error)
	Kill(ctx context.Context, sig int) error
	Delete(ctx context.Context) error
}

// factory makes processes; tests replace it with fakes.
type factory struct {
	newInit func(process.InitConfig) initProcess
	newExec func(process.ExecConfig) execProcess
}

var runcFactory = factory{
	newInit: func(c process.InitConfig) initProcess { return process.NewInit(c) },
	newExec: func(c process.ExecConfig) execProcess { return process.NewExec(c) },
}

// container is one container of the shim: its init and its execs.
type container struct {
	init      initProcess
	execs     map[string]execProcess
	sharedPID bool // no PID namespace of its own: kill the rest when the init exits

	// Exit ordering (exits.go), guarded by Service.mu.
	runningExecs  int             // execs started or starting, not yet reaped
	startingExecs int             // execs inside their Start
	initExited    bool            // the init was reaped: no exec starts any more
	pendingInit   *process.Reaped // init reaped while execs still ran or started
	graceTimer    *time.Timer     // sets graceExpired
	graceExpired  bool            // execExitGrace passed since the init exited
	finalOOM      *oom.Counts     // the OOM watch's last word, once the init exited
}

// oomWatcher is the OOM watcher (*oom.Watcher).
type oomWatcher interface {
	Add(id, dir string, v2 bool) error
	Check(id string) error
	Stop(id string, sigkilled bool) (oom.Counts, error)
}

// Config is what a Service is built from.
type Config struct {
	Namespace string
	Version   string
	Events    *event.Sequencer
	// OOM watches the containers' memory cgroups; its reporter must queue
	// on Events (see OOMReporter).
	OOM oomWatcher
	// Shutdown stops the shim's server; called once, after the reply to
	// the Shutdown call that ends the shim has been written.
	Shutdown func()
	// IdleExit is how long a server holding no container waits for a
	// request before it exits (idle.go); 0 never exits that way.
	IdleExit time.Duration
}

// Service implements containerd's task v3 API.
type Service struct {
	ctx       context.Context
	namespace string
	version   string
	events    *event.Sequencer
	oom       oomWatcher
	shutdown  func()

	mu         sync.Mutex
	containers map[string]*container // nil value: a Create in progress
	running    map[int]running       // pid -> live process, for the reaper
	starting   int                   // open start windows
	pending    []process.Reaped      // unknown exits seen while starting > 0
	closing    bool

	idleMu sync.Mutex
	idle   idleState

	factory factory
}

// New returns a Service; its exits come through HandleExits. ctx carries
// the logger for work not tied to a request.
func New(ctx context.Context, c Config) *Service {
	return &Service{
		ctx:        ctx,
		namespace:  c.Namespace,
		version:    c.Version,
		events:     c.Events,
		oom:        c.OOM,
		shutdown:   c.Shutdown,
		idle:       idleState{after: c.IdleExit, releaseAfter: releaseAfter, releaseDue: heapReleaseDue, freeMemory: freeHeap},
		containers: make(map[string]*container),
		running:    make(map[int]running),
		factory:    runcFactory,
	}
}

// deleteExecs deletes the execs of a container being deleted.
func deleteExecs(ctx context.Context, execs map[string]execProcess) {
	for id, e := range execs {
		if err := e.Delete(ctx); err != nil {
			log.G(ctx).WithError(err).WithField("exec_id", id).Warn("delete exec with its container")
		}
	}
}

// Register adds the service to a ttrpc server, as the task API v3 and v2.
func (s *Service) Register(server *ttrpc.Server) {
	taskapi.RegisterTTRPCTaskService(server, s)
	taskv2.RegisterTTRPCTaskService(server, taskV2{s})
}

// get returns a container by ID.
func (s *Service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.getLocked(id)
}

func (s *Service) getLocked(id string) (*container, error) {
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// lookup returns the init (execID empty) or an exec of container id; e is
// the exec, nil for the init.
func (s *Service) lookup(id, execID string) (c *container, p proc, e execProcess, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, err = s.getLocked(id); err != nil {
		return nil, nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil, nil
	}
	e, ok := c.execs[execID]
	if !ok {
		return nil, nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, e, e, nil
}

func withIDs(ctx context.Context, id, execID string) context.Context {
	f := log.Fields{"container_id": id}
	if execID != "" {
		f["exec_id"] = execID
	}
	return log.WithLogger(ctx, log.G(ctx).WithFields(f))
}

// Create mounts the rootfs and runs `runc create`. A failed Create leaves
// no runc container, mount, fifo or table entry behind.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, retErr error) {
	ctx = withIDs(ctx, r.ID, "")
	defer func() { retErr = toGRPC(retErr) }()
	if err := validateID("container", r.ID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, fmt.Errorf("shim is shutting down: %w", errdefs.ErrUnavailable)
	}
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[r.ID] = nil // reserved while runc works
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()
	if r.Checkpoint == "" && r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("a parent checkpoint without a checkpoint to restore: %w", errdefs.ErrInvalidArgument)
	}
	bundle, err := checkBundle(r.Bundle)
	if err != nil {
		return nil, err
	}
	opts, err := runtimeOptions(r.Options)
	if err != nil {
		return nil, err
	}
	cfg := runc.NewConfig(opts, s.namespace)
	if _, err := cfg.LookPath(); err != nil {
		return nil, err
	}

	if err := runc.WriteOptions(r.Bundle, opts); err != nil {
		return nil, err
	}
	init := s.factory.newInit(process.InitConfig{
		ID:      r.ID,
		Bundle:  r.Bundle,
		Rootfs:  r.Rootfs,
		Stdio:   process.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Runtime: cfg,

		Checkpoint:       r.Checkpoint,
		ParentCheckpoint: r.ParentCheckpoint,
	})
	c := &container{init: init, execs: make(map[string]execProcess), sharedPID: bundle.sharedPID}

	s.beginStart(0)
	if err := init.Create(ctx); err != nil {
		s.endStart(nil, nil)
		return nil, err
	}
	s.endStart(&running{c: c, p: init}, func() {
		s.containers[r.ID] = c
		s.queue(ctx, "/tasks/create", &eventstypes.TaskCreate{
			ContainerID: r.ID,
			Bundle:      r.Bundle,
			Rootfs:      r.Rootfs,
			IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
			Checkpoint:  r.Checkpoint,
			Pid:         uint32(init.Pid()),
		})
		s.watchLocked(ctx, c)
	})
	log.G(ctx).WithField("pid", init.Pid()).Debug("container created")
	return &taskapi.CreateTaskResponse{Pid: uint32(init.Pid())}, nil
}

// queue publishes an event; a failure is logged, the event is then lost
// only because the shim is shutting down.
func (s *Service) queue(ctx context.Context, topic string, ev proto.Message) {
	if _, err := s.events.Publish(ctx, topic, ev); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Error("queue event")
	}
}

// Start starts the init or an exec process.
func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (_ *taskapi.StartResponse, retErr error) {
	ctx = withIDs(ctx, r.ID, r.ExecID)
	defer func() { retErr = toGRPC(retErr) }()
	c, _, e, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if e == nil {
		// A container created from a checkpoint has no process until
		// Start restores it: its pid is learned here, and its exit waits
		// in the start window like any other.
		pid := c.init.Pid()
		restoring := pid == 0
		held := s.beginStart(pid)
		err := c.init.Start(ctx)
		var announce func()
		if err == nil {
			pid = c.init.Pid()
			announce = func() {
				s.queue(ctx, "/tasks/start", &eventstypes.TaskStart{ContainerID: r.ID, Pid: uint32(pid)})
				if restoring {
					s.watchLocked(ctx, c)
				}
			}
		}
		run := &running{c: c, p: c.init}
		if (!held && !restoring) || (restoring && err != nil) {
			run = nil // a concurrent Start's window has the pid, or there is none
		}
		s.endStart(run, announce)
		if err != nil {
			return nil, err
		}
		return &taskapi.StartResponse{Pid: uint32(pid)}, nil
	}
	if err := s.beginExecStart(c); err != nil {
		return nil, err
	}
	pid, err := e.Start(ctx)
	if err != nil {
		s.endExecStart(c, nil, nil)
		return nil, err
	}
	s.endExecStart(c, &running{c: c, p: e, execID: r.ExecID}, func() {
		s.queue(ctx, "/tasks/exec-started", &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: uint32(pid)})
	})
	return &taskapi.StartResponse{Pid: uint32(pid)}, nil
}

// Delete deletes an exec, or the container with its init.
func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (_ *taskapi.DeleteResponse, retErr error) {
	ctx = withIDs(ctx, r.ID, r.ExecID)
	defer func() { retErr = toGRPC(retErr) }()
	c, _, e, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if e != nil {
		if err := e.Delete(ctx); err != nil {
			return nil, err
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		return deleteResponse(e.State()), nil
	}
	st := c.init.State()
	if st.Status == process.Stopped {
		if err := s.endExecs(ctx, c); err != nil {
			return nil, err
		}
	}
	if st.Status == process.Created {
		// runc delete --force kills the never-started init; that exit is
		// not a task exit.
		s.mu.Lock()
		delete(s.running, st.Pid)
		s.mu.Unlock()
	}
	if err := c.init.Delete(ctx); err != nil {
		if st.Status == process.Created {
			s.mu.Lock()
			s.running[st.Pid] = running{c: c, p: c.init}
			s.mu.Unlock()
		}
		return nil, err
	}
	// The execs' stdio is torn down (copies drained, logging binaries
	// stopped) without the service's lock, which every other request of
	// the shim needs; one added meanwhile never started and has none.
	s.mu.Lock()
	execs := maps.Clone(c.execs)
	s.mu.Unlock()
	deleteExecs(ctx, execs)
	s.mu.Lock()
	for id := range execs {
		delete(c.execs, id)
	}
	deleteExecs(ctx, c.execs)
	delete(s.containers, r.ID)
	s.unwatchLocked(c, false)
	st = c.init.State()
	s.queue(ctx, "/tasks/delete", &eventstypes.TaskDelete{
		ContainerID: r.ID,
		ID:          r.ID,
		Pid:         uint32(st.Pid),
		ExitStatus:  uint32(st.Exit.Status),
		ExitedAt:    timestamppb.New(st.Exit.At),
	})
	s.mu.Unlock()
	log.G(ctx).Debug("container deleted")
	return deleteResponse(st), nil
}

func deleteResponse(st process.State) *taskapi.DeleteResponse {
	return &taskapi.DeleteResponse{
		Pid:        uint32(st.Pid),
		ExitStatus: uint32(st.Exit.Status),
		ExitedAt:   timestamppb.New(st.Exit.At),
	}
}

// Exec registers an extra process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (_ *emptypb.Empty, retErr error) {
	ctx = withIDs(ctx, r.ID, r.ExecID)
	defer func() { retErr = toGRPC(retErr) }()
	if err := validateID("exec", r.ExecID); err != nil {
		return nil, err
	}
	spec, err := processSpec(r.Spec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.getLocked(r.ID)
	if err != nil {
		return nil, err
	}
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrAlreadyExists)
	}
	// The request's terminal flag wins over the spec's, as with the stock
	// shim (runc refuses a console socket for a spec without a terminal).
	spec.Terminal = r.Terminal
	if st := c.init.Status(); st != process.Running {
		return nil, fmt.Errorf("exec in a %s container: %w", st, errdefs.ErrFailedPrecondition)
	}
	c.execs[r.ExecID] = s.factory.newExec(process.ExecConfig{
		ID:        r.ExecID,
		Container: c.init,
		Spec:      spec,
		Stdio:     process.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	s.queue(ctx, "/tasks/exec-added", &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// State reports a process's state.
func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (_ *taskapi.StateResponse, retErr error) {
	defer func() { retErr = toGRPC(retErr) }()
	c, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st := p.State()
	resp := &taskapi.StateResponse{
		ID:       st.ID,
		Bundle:   c.init.Bundle(),
		Pid:      uint32(st.Pid),
		Stdin:    st.Stdio.Stdin,
		Stdout:   st.Stdio.Stdout,
		Stderr:   st.Stdio.Stderr,
		Terminal: st.Stdio.Terminal,
		ExecID:   r.ExecID,
	}
	switch st.Status {
	case process.Created:
		resp.Status = tasktypes.Status_CREATED
	case process.Running:
		resp.Status = tasktypes.Status_RUNNING
	case process.Paused:
		resp.Status = tasktypes.Status_PAUSED
	case process.Stopped:
		resp.Status = tasktypes.Status_STOPPED
		resp.ExitStatus = uint32(st.Exit.Status)
		resp.ExitedAt = timestamppb.New(st.Exit.At)
	default:
		return nil, fmt.Errorf("process %q is %s: %w", st.ID, st.Status, errdefs.ErrNotFound)
	}
	return resp, nil
}

// Kill signals a process; with All, every process of the container.
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (_ *emptypb.Empty, retErr error) {
	ctx = withIDs(ctx, r.ID, r.ExecID)
	defer func() { retErr = toGRPC(retErr) }()
	c, _, e, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if e == nil {
		err = c.init.Kill(ctx, int(r.Signal), r.All)
	} else {
		err = e.Kill(ctx, int(r.Signal))
	}
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Wait returns once the process has exited and its TaskExit has been
// forwarded to containerd (or its retries ran out).
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (_ *taskapi.WaitResponse, retErr error) {
	defer func() { retErr = toGRPC(retErr) }()
	_, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	e, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return &taskapi.WaitResponse{ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.At)}, nil
}

// Pids lists the container's processes, naming the exec ones.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (_ *taskapi.PidsResponse, retErr error) {
	ctx = withIDs(ctx, r.ID, "")
	defer func() { retErr = toGRPC(retErr) }()
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.init.Pids(ctx)
	if err != nil {
		return nil, err
	}
	execs := make(map[int]string)
	s.mu.Lock()
	for id, e := range c.execs {
		if pid := e.Pid(); pid > 0 {
			execs[pid] = id
		}
	}
	s.mu.Unlock()
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execs[pid]; ok {
			if a, err := anypb.New(&options.ProcessDetails{ExecID: id}); err == nil {
				info.Info = a
			}
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = toGRPC(retErr) }()
	_, p, _, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.CloseStdin()
	}
	return &emptypb.Empty{}, nil
}

// Connect reports the shim's and the init's pids.
func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: s.version}
	if c, err := s.get(r.ID); err == nil {
		resp.TaskPid = uint32(c.init.Pid())
	}
	return resp, nil
}

// Shutdown ends the shim once it holds no container (or at once with Now).
// Every queued event is forwarded before the reply, so containerd never
// sees the shim go away with a TaskExit or TaskDelete still inside it;
// unless forwarding is failing: containerd, when it starts, loads its shims
// and shuts down those whose task ended while it was away before it serves
// events, so the reply comes at once and the server forwards the events,
// within their retries, before it exits.
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	if len(s.containers) > 0 && !r.Now {
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	first := !s.closing
	s.closing = true
	s.mu.Unlock()
	if first {
		fctx, cancel := flushContext(ctx)
		switch err := s.events.Flush(fctx); {
		case errors.Is(err, event.ErrStalled):
			// containerd is not taking events (it may be starting and
			// asking this shim to shut down before it serves them): reply
			// now; the server still forwards them, within their retries,
			// before it exits.
			log.G(ctx).Warn("containerd is not taking events; shutting down with events still queued")
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			log.G(ctx).WithError(err).Warn("flush events before shutdown")
		}
		cancel()
		s.shutdown()
	}
	return &emptypb.Empty{}, nil
}
