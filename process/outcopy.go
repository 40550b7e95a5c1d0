package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// outputCopies carry a process's stdout and stderr through pipes the shim
// made, when the runtime options ask for IoUid/IoGid: the process gets
// pipe ends chowned to that uid and gid (it can reopen /proc/self/fd/N),
// and containerd's fifos and a host file:// log keep their owner. Without
// IoUid/IoGid the process writes into the fifos itself and no copy runs.
type outputCopies struct {
	files []*os.File    // pipe read ends and targets, closed by close
	done  chan struct{} // closed once every copy has ended
}

// pipeOutputs replaces p.stdout and p.stderr (fifos or files) with pipes
// whose read ends are copied into them; stdout and stderr sharing one
// target share one pipe.
func (p *IO) pipeOutputs(ctx context.Context) error {
	oc := &outputCopies{done: make(chan struct{})}
	var wg sync.WaitGroup
	pipe := func(blocking *os.File) (*os.File, error) {
		if blocking == nil || blocking.Name() == os.DevNull {
			return blocking, nil
		}
		// Only the shim writes the target now: on Go's poller, so that
		// close ends a copy stuck on a fifo nobody reads.
		target, err := pollable(blocking)
		if err != nil {
			return nil, err
		}
		r, w, err := os.Pipe()
		if err != nil {
			target.Close()
			return nil, fmt.Errorf("output pipe: %w", err)
		}
		oc.files = append(oc.files, r, target)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer target.Close()
			if _, err := io.Copy(target, r); err != nil && !errors.Is(err, os.ErrClosed) {
				log.G(ctx).WithError(err).Warn("output copy ended")
			}
			r.Close()
		}()
		return w, nil
	}
	stdout, stderr := p.stdout, p.stderr
	shared := stdout == stderr
	var err error
	if p.stdout, err = pipe(stdout); err != nil {
		p.stdout = stdout
		return err
	}
	if shared {
		p.stderr = p.stdout
	} else if p.stderr, err = pipe(stderr); err != nil {
		p.stderr = stderr
		return err
	}
	// The blocking descriptors were replaced (pollable dup'd them).
	for _, f := range []*os.File{stdout, stderr} {
		if f != nil && f.Name() != os.DevNull {
			f.Close()
		}
	}
	go func() {
		wg.Wait()
		close(oc.done)
	}()
	p.outputs = oc
	return nil
}

// close ends the copies (the process may still hold its ends) and waits.
func (oc *outputCopies) close() {
	for _, f := range oc.files {
		f.Close()
	}
	<-oc.done
}

// pollable returns a non-blocking duplicate of f, on Go's poller where the
// file kind allows (a fifo does; a regular file stays blocking, harmless).
func pollable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := rc.Control(func(old uintptr) { fd, derr = unix.FcntlInt(old, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
