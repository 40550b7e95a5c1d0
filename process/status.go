// Package process holds the container's init process and its exec
// processes: their state machine, the runc calls that move them, and their
// stdio.
package process

import (
	"errors"
	"fmt"
)

// Status is the lifecycle state of a process.
type Status int

const (
	// Created: runc created it (init) or the exec was registered; not started.
	Created Status = iota + 1
	// Running: started and not yet reaped.
	Running
	// Paused: an init whose container runc froze; Resume thaws it.
	Paused
	// Stopped: reaped; its exit status is known.
	Stopped
	// Deleted: its resources are released; it answers nothing but errors.
	Deleted
)

func (s Status) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// ErrInvalidTransition is wrapped by every TransitionError.
var ErrInvalidTransition = errors.New("process: invalid state transition")

// TransitionError reports a state change the state machine forbids.
type TransitionError struct {
	From, To Status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("process: cannot go from %s to %s", e.From, e.To)
}

func (e *TransitionError) Unwrap() error { return ErrInvalidTransition }

// allowed lists every valid transition. Created -> Stopped is a process
// reaped before it was started (killed, or OOM-killed, between create and
// start). Running -> Deleted is not allowed: a running process is killed
// and reaped first. Paused -> Stopped is a paused container killed (runc
// thaws it to deliver SIGKILL).
var allowed = map[Status][]Status{
	Created: {Running, Stopped, Deleted},
	Running: {Paused, Stopped},
	Paused:  {Running, Stopped},
	Stopped: {Deleted},
}

// transition checks from -> to.
func transition(from, to Status) error {
	for _, s := range allowed[from] {
		if s == to {
			return nil
		}
	}
	return &TransitionError{From: from, To: to}
}
