package process

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// An exec process is signalled through a pidfd taken right after `runc
// exec` returned, so a signal can never reach another process that was
// given its pid after it was reaped (the reaper reaps before the exec is
// marked reaped). Where the kernel has no pidfd (before 5.3) the pid is
// signalled as before, guarded by the reaped mark.

// pidfdOpen is unix.PidfdOpen; tests replace it to try the fallback.
var pidfdOpen = func(pid int) (int, error) { return unix.PidfdOpen(pid, 0) }

// openPidfd returns a pidfd for pid, a process the shim is the parent of
// (an exec is reparented to the shim, a child subreaper, when runc exits),
// or -1: no pidfd here, or pid is no longer that process (it died, was
// reaped and its pid given to another, which is not the shim's child).
func openPidfd(pid int) int {
	fd, err := pidfdOpen(pid)
	if err != nil {
		return -1
	}
	ppid, err := parentOf(pid)
	// Read while fd's process still holds pid (alive or a zombie), the
	// parent read was that process's.
	if err != nil || ppid != os.Getpid() || unix.PidfdSendSignal(fd, 0, nil, 0) != nil {
		unix.Close(fd)
		return -1
	}
	return fd
}

// parentOf reads pid's parent from /proc/<pid>/stat: the field after the
// state, after the command name in parentheses (which may hold anything).
func parentOf(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := bytes.Fields(data[i+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	return strconv.Atoi(string(fields[1]))
}

// signal sends sig to the process behind pidfd, or to pid when pidfd is
// -1. ESRCH means the process is gone (reaped).
func signal(pidfd, pid int, sig unix.Signal) error {
	if pidfd >= 0 {
		return unix.PidfdSendSignal(pidfd, sig, nil, 0)
	}
	return unix.Kill(pid, sig)
}
