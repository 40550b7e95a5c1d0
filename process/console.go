package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/containerd/console"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// receiveTimeout bounds the wait for runc's pty master. runc sends it
// before `create` or `exec --detach` returns, so it is normally already
// queued on the socket.
const receiveTimeout = 10 * time.Second

// tty is a process's terminal: the pty master runc hands over through the
// console socket. The shim copies the master to containerd's stdout (a
// terminal merges stderr into it) and containerd's stdin into the master.
// Both copies wait on Go's poller, not on parked threads, and an idle
// terminal costs two parked goroutines.
//
// The output copy ends when the master reads EIO: every holder of the
// slave has closed it, i.e. the process (and anything that inherited the
// terminal) is gone and the kernel has handed over all it buffered. Its
// end closes drained, which the exit path waits on (bounded) so that a
// process's output is in the fifo before its TaskExit.
//
// When containerd's stdin ends (CloseIO, after everything written before
// it is copied; stdin.go), the process gets what was written, then EOF
// (endInput), and the master is closed, which hangs up the terminal, as a
// closed ssh session does: a leftover `kubectl exec -it` does not outlive
// its client.
type tty struct {
	master console.Console // as received; Resize
	rw     *os.File        // a non-blocking dup of master, for the copies
	out    *os.File        // stdout target, nil to discard
	in     *stdinFifo      // containerd's stdin fifo, nil for none

	hangupOnce sync.Once
	hungUp     chan struct{} // closed by hangup
	drained    chan struct{} // closed when the output copy has ended
	inDone     chan struct{} // closed when the stdin copy has ended
}

// receiveMaster waits (bounded) for runc to send the pty master to socket.
func receiveMaster(socket *gorunc.Socket) (console.Console, error) {
	type result struct {
		c   console.Console
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := socket.ReceiveMaster()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(receiveTimeout):
		socket.Close() // ends the Accept
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, fmt.Errorf("no pty master from runc within %s", receiveTimeout)
	}
}

// newTTY starts copying master to out (nil discards) and the stdin fifo
// (if any) to master. It owns master and out from then on, also on error.
func newTTY(ctx context.Context, master console.Console, out *os.File, stdin string) (_ *tty, err error) {
	t := &tty{master: master, out: out, hungUp: make(chan struct{}), drained: make(chan struct{}), inDone: make(chan struct{})}
	defer func() {
		if err != nil {
			t.hangup()
			if t.out != nil {
				t.out.Close()
			}
		}
	}()
	fd, err := unix.FcntlInt(master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup pty master: %w", err)
	}
	// O_NONBLOCK belongs to the open file description, shared with master:
	// harmless, master is used for ioctls only.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pty master: %w", err)
	}
	t.rw = os.NewFile(uintptr(fd), "pty-master") // pollable: non-blocking
	if stdin != "" {
		if t.in, err = openStdinFifo(stdin); err != nil {
			return nil, fmt.Errorf("open stdin: %w", err)
		}
		go t.copyIn(ctx)
	} else {
		close(t.inDone)
	}
	go t.copyOut(ctx)
	return t, nil
}

// openTTYOutput opens the terminal's output target (not a logging binary)
// for the shim's own copy: a fifo or file:// file, nil (discard) for none.
// Unlike the descriptors handed to a process, it is non-blocking, on Go's
// poller.
func openTTYOutput(target string) (*os.File, error) {
	o, err := parseOutput(target)
	switch {
	case err != nil || o.path == "":
		return nil, err
	case o.file:
		return os.OpenFile(o.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	}
	// O_RDWR: never ENXIO or EPIPE while containerd's reader is away.
	return os.OpenFile(o.path, os.O_RDWR, 0)
}

func (t *tty) copyOut(ctx context.Context) {
	defer close(t.drained)
	var dst io.Writer = io.Discard
	if t.out != nil {
		dst = t.out
		defer t.out.Close() // containerd's reader sees EOF
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := t.rw.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				if !errors.Is(werr, os.ErrClosed) {
					log.G(ctx).WithError(werr).Warn("terminal output copy failed")
				}
				return
			}
		}
		if err != nil {
			// EIO: the slave side is closed everywhere. ErrClosed: hung up.
			if !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				log.G(ctx).WithError(err).Warn("terminal output copy failed")
			}
			return
		}
	}
}

func (t *tty) copyIn(ctx context.Context) {
	defer close(t.inDone)
	if _, err := io.Copy(t.rw, t.in); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, unix.EIO) {
		log.G(ctx).WithError(err).Debug("terminal input copy ended")
	}
	t.in.Close()
	if t.endInput() {
		// Give the process time to answer EOF and exit, so its last
		// output is not cut off by the hangup.
		select {
		case <-t.drained:
		case <-t.hungUp:
		case <-time.After(eofGrace):
		}
	}
	t.hangup()
}

const (
	// inputReadPoll and inputReadGrace pace and bound the wait for the
	// process to read its terminal's input.
	inputReadPoll  = time.Millisecond
	inputReadGrace = 2 * time.Second
	// eofGrace bounds how long a terminal given EOF stays up for its
	// process to exit.
	eofGrace = 2 * time.Second
)

// endInput ends the terminal's input once containerd's stdin has ended,
// without losing what was written: a hangup flushes the terminal's input
// queue. It waits, bounded by inputReadGrace, until the process has read
// what the stdin copy wrote; then, if the terminal is in canonical mode
// (a shell, `read`), it types the terminal's EOF character (^D), as a
// user at the keyboard would: the reader sees EOF after everything before
// it (a line not yet ended is delivered instead). It reports whether it
// typed it.
//
// Both go through a descriptor of the slave that the kernel opens from
// the master (TIOCGPTPEER, Linux 4.13), held only meanwhile: its input
// queue and its termios are the process's.
func (t *tty) endInput() (eof bool) {
	// Through rw's raw descriptor: master.Fd() would make the open file
	// description, which rw shares, blocking under the output copy.
	rc, err := t.rw.SyscallConn()
	if err != nil {
		return false
	}
	var fd uintptr
	var errno unix.Errno
	if err := rc.Control(func(m uintptr) {
		fd, _, errno = unix.Syscall(unix.SYS_IOCTL, m, unix.TIOCGPTPEER, unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC)
	}); err != nil || errno != 0 {
		return false
	}
	defer unix.Close(int(fd))
	t.waitInputRead(int(fd))
	term, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	if err != nil || term.Lflag&unix.ICANON == 0 || term.Cc[unix.VEOF] == 0 {
		return false
	}
	_, err = t.rw.Write([]byte{term.Cc[unix.VEOF]})
	return err == nil
}

// waitInputRead waits, bounded by inputReadGrace, until the slave peer
// has no input the process could read. poll(2), not TIOCINQ: the kernel
// hands bytes written to the master to the slave's queue from a work
// item, and only poll and read wait for it first (n_tty_poll:
// tty_buffer_flush_work). In canonical mode only ended lines count.
func (t *tty) waitInputRead(peer int) {
	deadline := time.Now().Add(inputReadGrace)
	for time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(peer), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 || fds[0].Revents&unix.POLLIN == 0 || fds[0].Revents&unix.POLLHUP != 0 {
			return
		}
		select {
		case <-t.hungUp:
			return
		case <-time.After(inputReadPoll):
		}
	}
}

// hangup closes the master: the terminal is hung up and both copies end.
func (t *tty) hangup() {
	t.hangupOnce.Do(func() {
		close(t.hungUp)
		if t.rw != nil {
			t.rw.Close()
		}
		t.master.Close()
	})
}

// Resize sets the terminal's window size.
func (t *tty) Resize(width, height uint32) error {
	return t.master.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// CloseStdin is CloseIO: the stdin copy ends once it has copied what was
// written, which hangs up the terminal.
func (t *tty) CloseStdin() {
	if t.in != nil {
		t.in.CloseWrite()
	}
}

// Close hangs up the terminal and waits for both copies to end (closing
// the output unblocks a copy stuck on a full fifo).
func (t *tty) Close() {
	if t.in != nil {
		t.in.Close()
	}
	t.hangup()
	<-t.inDone
	if t.out != nil {
		t.out.Close()
	}
	<-t.drained
}
