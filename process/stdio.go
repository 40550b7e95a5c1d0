package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// ErrUnsupportedIO is returned for stdio the shim does not provide yet.
var ErrUnsupportedIO = errors.New("process: unsupported stdio")

// Stdio names a process's stdio as containerd sends it: fifo paths (or
// file:// URIs), empty for none.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// IO is a process's opened stdio.
//
// stdout and stderr are handed to the process itself: it writes straight
// into containerd's fifo (or log file), with no copy loop in the shim. So
// everything the process wrote before it exited is in the fifo by the time
// its exit is reaped, and an idle container costs the shim no goroutine.
// The exception is IoUid/IoGid, whose output goes through pipes the shim
// owns and copies (outcopy.go), so that containerd's fifos are never
// chowned.
// The descriptors are opened without O_NONBLOCK (the process shares the open
// file description) and O_RDWR for fifos, so a containerd restart never
// turns into EPIPE for the container.
//
// stdin goes through a pipe that the shim feeds from the fifo (stdin.go):
// the process gets EOF once containerd has called CloseIO and everything
// written into the fifo before has been copied.
//
// With a logging binary (binary://), stdout and stderr are pipes into it
// (logger.go), again written by the process itself. A process with a
// terminal gets none of these: runc gives it the slave of a pty and sends
// the master to socket; Attach then starts the copies (console.go).
type IO struct {
	stdout, stderr *os.File // the process's ends; closed after start
	stdinR         *os.File // the process's end of the stdin pipe

	mu     sync.Mutex
	stdinW *os.File      // the shim's end, closed when the copy ends
	fifo   *stdinFifo    // containerd's stdin fifo
	copied chan struct{} // closed when the stdin copy has ended

	terminal Stdio          // what Attach connects, for a terminal
	socket   *gorunc.Socket // terminal: where runc sends the pty master
	tty      *tty           // terminal, once attached
	logger   *logger        // binary:// stdout, stopped by Close
	outputs  *outputCopies  // IoUid/IoGid: stdout and stderr through pipes
}

// IOConfig is how OpenIO opens a process's stdio.
type IOConfig struct {
	// UID and GID, when non-zero, own the descriptors the process gets
	// (runc option IoUid/IoGid), so it can reopen /proc/self/fd/N.
	UID, GID int
	// ContainerID and Namespace are given to a logging binary.
	ContainerID, Namespace string
}

// OpenIO opens s.
func OpenIO(ctx context.Context, s Stdio, c IOConfig) (_ *IO, err error) {
	out, err := parseOutput(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("stdout: %w", err)
	}
	p := &IO{}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if out.binary != nil {
		// stdout and stderr both go to the logging binary.
		if p.logger, err = startLogger(out.binary, c.ContainerID, c.Namespace); err != nil {
			return nil, err
		}
	}
	if s.Terminal {
		if p.socket, err = gorunc.NewTempConsoleSocket(); err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		p.terminal = s
		return p, nil
	}
	if p.logger != nil {
		p.stdout, p.stderr = p.logger.take()
	} else {
		if p.stdout, err = openOutput(out); err != nil {
			return nil, fmt.Errorf("open stdout: %w", err)
		}
		if s.Stderr != "" && s.Stderr == s.Stdout {
			p.stderr = p.stdout
		} else if p.stderr, err = openTarget(s.Stderr); err != nil {
			return nil, fmt.Errorf("open stderr: %w", err)
		}
	}
	if s.Stdin != "" {
		if err := p.openStdin(ctx, s.Stdin); err != nil {
			return nil, fmt.Errorf("open stdin: %w", err)
		}
	}
	if c.UID != 0 || c.GID != 0 {
		if p.logger == nil {
			if err := p.pipeOutputs(ctx); err != nil {
				return nil, err
			}
		}
		// Only pipes the shim made: never containerd's fifos or a file.
		for _, f := range []*os.File{p.stdout, p.stderr, p.stdinR} {
			if f != nil && f.Name() != os.DevNull {
				if err := f.Chown(c.UID, c.GID); err != nil {
					return nil, fmt.Errorf("chown stdio to %d:%d: %w", c.UID, c.GID, err)
				}
			}
		}
	}
	return p, nil
}

// output is a resolved output target.
type output struct {
	path   string   // a fifo or file; "" for none
	file   bool     // path is a file:// target (its directory exists)
	binary *url.URL // a binary:// or binary-v2:// logging binary
}

// parseOutput resolves an output target: "" for none, a fifo path (bare
// or fifo://), a file:// URI (its directory is created), or a logging
// binary (binary://, binary-v2://).
func parseOutput(target string) (output, error) {
	o, err := classifyOutput(target)
	if err != nil || !o.file {
		return o, err
	}
	if err := os.MkdirAll(filepath.Dir(o.path), 0o755); err != nil {
		return output{}, err
	}
	return o, nil
}

// classifyOutput is parseOutput without touching the filesystem. A
// fifo:// or file:// URI must name an absolute path ("file://log" names a
// host, not a file), as a logging binary must.
func classifyOutput(target string) (output, error) {
	if target == "" {
		return output{}, nil
	}
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" {
		return output{path: target}, nil
	}
	switch u.Scheme {
	case "fifo", "file":
		if !filepath.IsAbs(u.Path) {
			return output{}, fmt.Errorf("%s:// stdio %q is not an absolute path: %w", u.Scheme, target, errdefs.ErrInvalidArgument)
		}
		return output{path: u.Path, file: u.Scheme == "file"}, nil
	case "binary", "binary-v2":
		if !filepath.IsAbs(u.Path) {
			return output{}, fmt.Errorf("logging binary %q is not an absolute path: %w", u.Path, ErrUnsupportedIO)
		}
		return output{binary: u}, nil
	}
	return output{}, fmt.Errorf("%w: %s:// stdio", ErrUnsupportedIO, u.Scheme)
}

// openTarget opens an output target that is not a logging binary.
func openTarget(target string) (*os.File, error) {
	o, err := parseOutput(target)
	if err != nil {
		return nil, err
	}
	if o.binary != nil {
		return nil, fmt.Errorf("%w: a logging binary for stderr only", ErrUnsupportedIO)
	}
	return openOutput(o)
}

// openOutput opens one output for the process: nothing (/dev/null), a
// fifo, or a file (appended to, created if missing).
func openOutput(o output) (*os.File, error) {
	switch {
	case o.path == "":
		return openFile(os.DevNull, unix.O_WRONLY, 0)
	case o.file:
		return openFile(o.path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, 0o640)
	}
	return openFile(o.path, unix.O_RDWR, 0)
}

// openFile opens with a raw open(2), so the descriptor stays blocking: Go's
// os.OpenFile would make a fifo non-blocking, and the process shares the
// file description.
func openFile(path string, flags int, perm uint32) (*os.File, error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func (p *IO) openStdin(ctx context.Context, path string) error {
	f, err := openStdinFifo(path)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		f.Close()
		return err
	}
	p.fifo, p.stdinR, p.stdinW = f, r, w
	p.copied = make(chan struct{})
	go p.copyStdin(ctx, f, w)
	return nil
}

// copyStdin feeds the process from containerd's fifo until the fifo ends
// (after CloseStdin) or Close, then gives the process EOF.
func (p *IO) copyStdin(ctx context.Context, src io.Reader, dst io.Writer) {
	defer close(p.copied)
	if _, err := io.Copy(dst, src); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, unix.EPIPE) {
		log.G(ctx).WithError(err).Debug("stdin copy ended")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdinW != nil {
		p.stdinW.Close()
		p.stdinW = nil
	}
}

// Set implements go-runc's IO: the runc command, and through it the
// process, gets the descriptors.
func (p *IO) Set(cmd *exec.Cmd) {
	if p.stdinR != nil {
		cmd.Stdin = p.stdinR
	}
	cmd.Stdout = p.stdout
	cmd.Stderr = p.stderr
}

// CloseAfterStart implements go-runc's StartCloser: once runc has the
// descriptors, the shim drops its copies of the process's ends.
func (p *IO) CloseAfterStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range []**os.File{&p.stdinR, &p.stdout, &p.stderr} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
	return nil
}

// Stdin implements go-runc's IO; the shim owns the stdin pipe itself.
func (p *IO) Stdin() io.WriteCloser { return nil }

// Stdout implements go-runc's IO; stdout is not read by the shim.
func (p *IO) Stdout() io.ReadCloser { return nil }

// Stderr implements go-runc's IO; stderr is not read by the shim.
func (p *IO) Stderr() io.ReadCloser { return nil }

// ConsoleSocket is where runc is to send the pty master; nil without a
// terminal.
func (p *IO) ConsoleSocket() *gorunc.Socket { return p.socket }

// Attach receives the pty master after runc created the process and starts
// the terminal's copies. Without a terminal it does nothing.
func (p *IO) Attach(ctx context.Context) error {
	p.mu.Lock()
	socket := p.socket
	p.socket = nil
	p.mu.Unlock()
	if socket == nil {
		return nil
	}
	defer socket.Close()
	master, err := receiveMaster(socket)
	if err != nil {
		return err
	}
	var out *os.File
	if p.logger != nil {
		var stderr *os.File
		out, stderr = p.logger.take()
		if stderr != nil {
			stderr.Close() // a terminal has no stderr: the binary sees EOF on it
		}
	} else if out, err = openTTYOutput(p.terminal.Stdout); err != nil {
		master.Close()
		return fmt.Errorf("open stdout: %w", err)
	}
	t, err := newTTY(ctx, master, out, p.terminal.Stdin)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.tty = t
	p.mu.Unlock()
	return nil
}

// Drained is closed once the process's output has all been copied: a
// terminal's (its slave is closed everywhere), or the output pipes'
// (IoUid/IoGid; outcopy.go); nil otherwise, when the process writes into
// the fifo itself.
func (p *IO) Drained() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.tty != nil:
		return p.tty.drained
	case p.outputs != nil:
		return p.outputs.done
	}
	return nil
}

// Resize sets the terminal's window size; without a terminal it does
// nothing.
func (p *IO) Resize(width, height uint32) error {
	p.mu.Lock()
	t := p.tty
	p.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.Resize(width, height)
}

// CloseStdin is CloseIO: the process gets EOF on stdin once everything
// written into the fifo before is copied and the clients' writers are
// closed; a terminal fed from stdin is then hung up.
func (p *IO) CloseStdin() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty != nil {
		p.tty.CloseStdin()
	}
	if p.fifo != nil {
		p.fifo.CloseWrite()
	}
}

// Close releases everything and waits for the copies to end.
func (p *IO) Close() error {
	p.CloseAfterStart()
	p.mu.Lock()
	f, copied := p.fifo, p.copied
	p.fifo = nil
	socket, t := p.socket, p.tty
	p.socket, p.tty = nil, nil
	p.mu.Unlock()
	if socket != nil {
		socket.Close()
	}
	if t != nil {
		t.Close()
	}
	if p.logger != nil {
		p.logger.Close()
	}
	if p.outputs != nil {
		p.outputs.close()
	}
	if f != nil {
		f.Close()
	}
	if copied != nil {
		<-copied
	}
	return nil
}
