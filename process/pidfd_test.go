package process

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// runningExec is an Exec in state Running whose process is a child of the
// test (as an exec is the shim's), its pidfd taken as Start takes it.
func runningExec(t *testing.T) (*Exec, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	e := NewExec(ExecConfig{ID: "e1"})
	e.pid, e.status, e.pidfd = cmd.Process.Pid, Running, openPidfd(cmd.Process.Pid)
	t.Cleanup(func() {
		if e.pidfd >= 0 {
			unix.Close(e.pidfd)
		}
	})
	return e, cmd
}

// Kill goes through the pidfd: it reaches the process, and once the
// process is reaped (here before the shim marked it, the window a pid
// could be given to another process) it reports ErrExited, never
// signalling the pid.
func TestExecKillThroughPidfd(t *testing.T) {
	e, cmd := runningExec(t)
	if e.pidfd < 0 {
		t.Fatal("no pidfd for a child of this process (kernel 5.3 or later has them)")
	}
	if err := e.Kill(context.Background(), int(unix.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("process ended with %v, want killed by SIGKILL", err)
	}
	if err := e.Kill(context.Background(), int(unix.SIGTERM)); !errors.Is(err, ErrExited) {
		t.Fatalf("kill after the process was reaped: %v, want ErrExited", err)
	}
}

// Without pidfds (a kernel before 5.3) the pid is signalled as before.
func TestExecKillWithoutPidfd(t *testing.T) {
	saved := pidfdOpen
	pidfdOpen = func(int) (int, error) { return -1, unix.ENOSYS }
	t.Cleanup(func() { pidfdOpen = saved })
	e, cmd := runningExec(t)
	if e.pidfd != -1 {
		t.Fatalf("pidfd %d without pidfd_open", e.pidfd)
	}
	if err := e.Kill(context.Background(), int(unix.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("process not killed")
	}
	if err := e.Kill(context.Background(), int(unix.SIGTERM)); !errors.Is(err, ErrExited) {
		t.Fatalf("kill after the process was reaped: %v, want ErrExited", err)
	}
}

// A pid that is not the shim's child gets no pidfd: it is not the exec
// (which the shim adopted) but a process that took its pid.
func TestNoPidfdForAStranger(t *testing.T) {
	if fd := openPidfd(1); fd != -1 {
		unix.Close(fd)
		t.Fatal("got a pidfd for pid 1, which is not this process's child")
	}
}
