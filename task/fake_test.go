package task

import (
	"context"
	"sync"

	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"oomshim/process"
	"oomshim/runc"
)

// fakeProc stands in for a runc-backed process; hooks let a test run code
// (such as reaping) in the middle of a Start.
type fakeProc struct {
	id  string
	mu  sync.Mutex
	pid int
	st  process.Status
	ex  process.Exit

	exited    chan struct{}
	published <-chan struct{}

	onStart  func() // runs inside Start, before it returns
	startPid int    // pid Start reports (exec) or sets
	startErr error  // what Start fails with (exec)
	starting bool   // a Start is under way (process.base's claim)
	onKill   func() // runs inside Kill
	onDelete func() // runs inside an exec's Delete

	drained chan struct{} // a terminal's output copy; nil for none
	reaped  bool
	sizes   [][2]uint32 // what Resize was given
}

func newFakeProc(id string, pid int) *fakeProc {
	return &fakeProc{id: id, pid: pid, st: process.Created, exited: make(chan struct{})}
}

func (f *fakeProc) ID() string { return f.id }
func (f *fakeProc) Pid() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pid
}
func (f *fakeProc) Status() process.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}
func (f *fakeProc) State() process.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return process.State{ID: f.id, Pid: f.pid, Status: f.st, Exit: f.ex}
}
func (f *fakeProc) SetExited(e process.Exit, published <-chan struct{}) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st != process.Created && f.st != process.Running && f.st != process.Paused {
		return &process.TransitionError{From: f.st, To: process.Stopped}
	}
	f.st, f.ex, f.published = process.Stopped, e, published
	close(f.exited)
	return nil
}
func (f *fakeProc) Wait(ctx context.Context) (process.Exit, error) {
	select {
	case <-f.exited:
	case <-ctx.Done():
		return process.Exit{}, ctx.Err()
	}
	f.mu.Lock()
	e, p := f.ex, f.published
	f.mu.Unlock()
	if p != nil {
		select {
		case <-p:
		case <-ctx.Done():
			return process.Exit{}, ctx.Err()
		}
	}
	return e, nil
}
func (f *fakeProc) CloseStdin() {}
func (f *fakeProc) MarkReaped() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reaped = true
}
func (f *fakeProc) Drained() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.drained == nil {
		return nil
	}
	return f.drained
}
func (f *fakeProc) Resize(width, height uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sizes = append(f.sizes, [2]uint32{width, height})
	return nil
}

// start claims the start as process.base does, runs onStart, and moves
// to Running unless startErr is set.
func (f *fakeProc) start() error {
	f.mu.Lock()
	if f.starting || f.st != process.Created {
		from := f.st
		if f.starting {
			from = process.Running
		}
		f.mu.Unlock()
		return &process.TransitionError{From: from, To: process.Running}
	}
	f.starting = true
	f.mu.Unlock()
	if f.onStart != nil {
		f.onStart()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starting = false
	if f.startErr != nil {
		return f.startErr
	}
	if f.st == process.Created {
		f.st = process.Running
	}
	return nil
}

func (f *fakeProc) killed() {
	if f.onKill != nil {
		f.onKill()
	}
}

func (f *fakeProc) del() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == process.Running || f.st == process.Paused {
		return &process.TransitionError{From: f.st, To: process.Deleted}
	}
	f.st = process.Deleted
	return nil
}

type fakeInit struct {
	*fakeProc
	bundle   string
	updates  []*specs.LinuxResources // what Update was given
	killAlls chan struct{}           // gets one value per KillAll, if set
	// checkpoints records what Checkpoint was given; onCheckpoint, if
	// set, runs inside it (e.g. to reap the init as criu ends it).
	checkpoints  []process.CheckpointConfig
	onCheckpoint func()
}

func (f *fakeInit) Checkpoint(ctx context.Context, c process.CheckpointConfig) error {
	f.mu.Lock()
	f.checkpoints = append(f.checkpoints, c)
	hook := f.onCheckpoint
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return nil
}

func (f *fakeInit) Bundle() string                   { return f.bundle }
func (f *fakeInit) Cgroup() *runc.Cgroup             { return nil }
func (f *fakeInit) Runtime() *gorunc.Runc            { return nil }
func (f *fakeInit) Config() runc.Config              { return runc.Config{} }
func (f *fakeInit) HoldUnfrozen() (func(), error)    { return func() {}, nil }
func (f *fakeInit) Create(ctx context.Context) error { return nil }
func (f *fakeInit) Start(ctx context.Context) error  { return f.start() }
func (f *fakeInit) Kill(ctx context.Context, sig int, all bool) error {
	f.mu.Lock()
	s, reaped := f.st, f.reaped
	f.mu.Unlock()
	if s == process.Deleted || (!all && (s == process.Stopped || reaped)) {
		return process.ErrExited
	}
	f.killed()
	return nil
}
func (f *fakeInit) KillAll(ctx context.Context) error {
	if f.killAlls != nil {
		f.killAlls <- struct{}{}
	}
	return f.Kill(ctx, 9, true)
}
func (f *fakeInit) Pids(ctx context.Context) ([]int, error) { return []int{f.Pid()}, nil }
func (f *fakeInit) Delete(ctx context.Context) error        { return f.del() }
func (f *fakeInit) Pause(ctx context.Context) error {
	return f.setStatus(process.Running, process.Paused)
}
func (f *fakeInit) Resume(ctx context.Context) error {
	return f.setStatus(process.Paused, process.Running)
}
func (f *fakeInit) setStatus(from, to process.Status) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st != from {
		return &process.TransitionError{From: f.st, To: to}
	}
	f.st = to
	return nil
}
func (f *fakeInit) Update(ctx context.Context, r *specs.LinuxResources) error {
	if s := f.Status(); s == process.Stopped || s == process.Deleted {
		return process.ErrExited
	}
	f.mu.Lock()
	f.updates = append(f.updates, r)
	f.mu.Unlock()
	return nil
}

type fakeExec struct {
	*fakeProc
	spec *specs.Process // as the service passed it
}

func (f *fakeExec) Start(ctx context.Context) (int, error) {
	if err := f.start(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	f.pid = f.startPid
	f.mu.Unlock()
	return f.startPid, nil
}
func (f *fakeExec) Kill(ctx context.Context, sig int) error {
	f.mu.Lock()
	gone := f.reaped || f.st == process.Stopped || f.st == process.Deleted
	f.mu.Unlock()
	if gone {
		return process.ErrExited
	}
	f.killed()
	return nil
}
func (f *fakeExec) Delete(ctx context.Context) error {
	if f.onDelete != nil {
		f.onDelete()
	}
	return f.del()
}
