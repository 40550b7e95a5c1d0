package process

import (
	"context"
	"errors"
	"sync"
	"time"
)

var (
	// ErrNotStarted is returned when an operation needs a started process.
	ErrNotStarted = errors.New("process: not started")
	// ErrExited is returned when an operation needs a live process.
	ErrExited = errors.New("process: already exited")
)

// Exit is a process's recorded end.
type Exit struct {
	Status int
	At     time.Time
}

// State is a snapshot of a process for the State API.
type State struct {
	ID     string
	Pid    int
	Status Status
	Exit   Exit
	Stdio  Stdio
}

// base is what init and exec processes share: the state machine, the exit
// record, and the exit barrier that Wait blocks on.
type base struct {
	id    string
	stdio Stdio

	mu     sync.Mutex
	status Status
	pid    int
	exit   Exit
	io     *IO

	exited    chan struct{} // closed by SetExited
	published <-chan struct{}
	reaped    bool // the pid is gone, though the exit may not be recorded yet
	starting  bool // a Start is under way
}

func newBase(id string, stdio Stdio) base {
	return base{id: id, stdio: stdio, status: Created, exited: make(chan struct{})}
}

// ID is the exec ID, or the container ID for an init process.
func (b *base) ID() string { return b.id }

// Pid is 0 until the process exists.
func (b *base) Pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pid
}

// Status returns the current state.
func (b *base) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// State returns a snapshot.
func (b *base) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return State{ID: b.id, Pid: b.pid, Status: b.status, Exit: b.exit, Stdio: b.stdio}
}

// claimStart reserves the start of a Created process for one caller: a
// concurrent second Start fails as if the process were already running, so
// two Start calls never make two processes. The caller gives it back with
// endStart.
func (b *base) claimStart() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.starting {
		return &TransitionError{From: Running, To: Running}
	}
	// Only a created process starts: a paused one may move to Running,
	// but by Resume.
	if b.status != Created {
		return &TransitionError{From: b.status, To: Running}
	}
	b.starting = true
	return nil
}

// endStart ends a start claimed with claimStart; a failed start leaves the
// process Created.
func (b *base) endStart() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.starting = false
}

// SetExited records the reaped exit and moves the process to Stopped.
// published is done when the TaskExit event for it has left the event
// queue; Wait does not return before that. The caller queues TaskExit
// (after any TaskOOM it owes) before calling SetExited, so nothing that
// SetExited unblocks can be published ahead of the exit.
func (b *base) SetExited(e Exit, published <-chan struct{}) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := transition(b.status, Stopped); err != nil {
		return err
	}
	b.status = Stopped
	b.exit = e
	b.published = published
	close(b.exited)
	return nil
}

// Wait blocks until the process has exited and its TaskExit has been
// forwarded, or ctx ends.
func (b *base) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-b.exited:
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
	b.mu.Lock()
	e, published := b.exit, b.published
	b.mu.Unlock()
	if published != nil {
		select {
		case <-published:
		case <-ctx.Done():
			return Exit{}, ctx.Err()
		}
	}
	return e, nil
}

// MarkReaped records that the process was reaped before its exit is
// recorded (SetExited waits for its terminal to drain): its pid may
// belong to someone else from now on, so it is no longer signalled.
func (b *base) MarkReaped() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reaped = true
}

// Drained is closed once the process's terminal output has all been
// copied; nil without a terminal.
func (b *base) Drained() <-chan struct{} {
	b.mu.Lock()
	io := b.io
	b.mu.Unlock()
	if io == nil {
		return nil
	}
	return io.Drained()
}

// Resize sets the size of the process's terminal, if it has one.
func (b *base) Resize(width, height uint32) error {
	b.mu.Lock()
	io := b.io
	b.mu.Unlock()
	if io == nil {
		return nil
	}
	return io.Resize(width, height)
}

// CloseStdin gives the process EOF on stdin.
func (b *base) CloseStdin() {
	b.mu.Lock()
	io := b.io
	b.mu.Unlock()
	if io != nil {
		io.CloseStdin()
	}
}

// markDeleted moves to Deleted and returns the IO to release.
func (b *base) markDeleted() (*IO, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := transition(b.status, Deleted); err != nil {
		return nil, err
	}
	b.status = Deleted
	io := b.io
	b.io = nil
	return io, nil
}
