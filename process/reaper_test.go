package process

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The reaper must hand a monitored command its own exit and everything else
// to the handler; this test runs in its own process, whose children are
// only the ones it starts.
func TestReaperRoutesExits(t *testing.T) {
	others := make(chan []Reaped, 16)
	r := NewReaper(func(e []Reaped) { others <- e })
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	t.Cleanup(func() { cancel(); <-r.Done() })

	for _, tc := range []struct {
		name   string
		args   []string
		status int
	}{
		{"exit code", []string{"sh", "-c", "exit 7"}, 7},
		{"killed", []string{"sh", "-c", "kill -9 $$"}, 128 + int(unix.SIGKILL)},
		{"success", []string{"true"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(tc.args[0], tc.args[1:]...)
			ch, err := r.Start(cmd)
			if err != nil {
				t.Fatal(err)
			}
			status, err := r.Wait(cmd, ch)
			if err != nil || status != tc.status {
				t.Fatalf("status %d, %v; want %d", status, err, tc.status)
			}
		})
	}

	// A process the reaper did not start (here: started by exec.Cmd
	// without the monitor, as a container init reparented to the shim
	// would be) goes to the handler.
	cmd := exec.Command("sh", "-c", "exit 3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case exits := <-others:
		if len(exits) != 1 || exits[0].Pid != cmd.Process.Pid || exits[0].Status != 3 {
			t.Fatalf("handler got %+v, want pid %d status 3", exits, cmd.Process.Pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exit of an unmonitored child never reached the handler")
	}
}

func TestStartLocked(t *testing.T) {
	r := NewReaper(func([]Reaped) {})
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	t.Cleanup(func() { cancel(); <-r.Done() })
	cmd := exec.Command("sh", "-c", "exit 4")
	ch, err := r.StartLocked(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if status, err := r.Wait(cmd, ch); err != nil || status != 4 {
		t.Fatalf("status %d, %v; want 4", status, err)
	}
	if _, err := r.StartLocked(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

// Every command's pidfd (os.Process holds one on Linux) is closed when its
// Wait returns, not when the garbage collector runs.
func TestReaperClosesPidfds(t *testing.T) {
	r := NewReaper(func([]Reaped) {})
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	t.Cleanup(func() { cancel(); <-r.Done() })
	before := countPidfds(t)
	for i := 0; i < 20; i++ {
		cmd := exec.Command("true")
		ch, err := r.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if status, err := r.Wait(cmd, ch); err != nil || status != 0 {
			t.Fatalf("status %d, %v", status, err)
		}
	}
	if after := countPidfds(t); after > before {
		t.Fatalf("%d pidfds open after 20 commands, %d before", after, before)
	}
}

func countPidfds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:[pidfd]" {
			n++
		}
	}
	return n
}
