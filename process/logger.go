package process

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"time"

	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// ErrLogger is wrapped by errors of a logging binary that cannot be
// started or never became ready.
var ErrLogger = errors.New("process: logging binary failed")

var (
	// loggerReadyTimeout bounds the wait for a logging binary to say it is
	// ready.
	loggerReadyTimeout = 10 * time.Second
	// loggerStopTimeout bounds the wait for a logging binary to exit after
	// SIGTERM; then it is killed.
	loggerStopTimeout = 10 * time.Second
)

// logger is a logging binary, containerd's binary:// stdio (nerdctl's
// default for detached containers): the process's stdout and stderr are
// pipes whose read ends the binary gets as fds 3 and 4, and fd 5 is a pipe
// on which it says it is ready by closing it (binary://) or by writing a
// byte first (binary-v2://). Its arguments are the URI's query, key then
// first value; its environment holds CONTAINER_ID and CONTAINER_NAMESPACE
// only, as with containerd's own shim.
//
// The process writes into the pipes itself, so the shim copies nothing;
// the binary sees EOF once the process (and the shim's copies) closed them.
type logger struct {
	cmd    *exec.Cmd
	exited chan gorunc.Exit

	mu             sync.Mutex
	stdout, stderr *os.File // write ends, until handed over
	stopped        bool
}

// startLogger starts the binary of uri and waits until it is ready.
func startLogger(uri *url.URL, containerID, namespace string) (_ *logger, err error) {
	var closeOnReturn []*os.File
	defer func() {
		for _, f := range closeOnReturn {
			f.Close()
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err == nil {
			closeOnReturn = append(closeOnReturn, r)
		}
		return r, w, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return nil, err
	}
	l := &logger{stdout: outW}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	errR, errW, err := pipe()
	if err != nil {
		return nil, err
	}
	l.stderr = errW
	readyR, readyW, err := pipe()
	if err != nil {
		return nil, err
	}
	closeOnReturn = append(closeOnReturn, readyW)

	var args []string
	for k, vs := range uri.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(uri.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + containerID, "CONTAINER_NAMESPACE=" + namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	exited, err := gorunc.Monitor.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: start %s: %w", ErrLogger, uri.Path, err)
	}
	l.cmd, l.exited = cmd, exited
	readyW.Close() // only the binary holds the ready pipe's write end now

	if err := readyR.SetReadDeadline(time.Now().Add(loggerReadyTimeout)); err != nil {
		return nil, err
	}
	n, err := readyR.Read(make([]byte, 1))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, fmt.Errorf("%w: %s not ready within %s", ErrLogger, uri.Path, loggerReadyTimeout)
	case err != nil && err != io.EOF:
		return nil, fmt.Errorf("%w: read %s's readiness: %w", ErrLogger, uri.Path, err)
	case n == 0 && uri.Scheme == "binary-v2":
		return nil, fmt.Errorf("%w: %s closed its ready pipe without writing to it (did it crash?)", ErrLogger, uri.Path)
	}
	return l, nil
}

// take hands over the pipes' write ends; the caller closes them.
func (l *logger) take() (stdout, stderr *os.File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	stdout, stderr = l.stdout, l.stderr
	l.stdout, l.stderr = nil, nil
	return stdout, stderr
}

// Close closes the write ends the logger still holds and stops the
// binary: SIGTERM, so that it can flush, then SIGKILL after
// loggerStopTimeout.
func (l *logger) Close() {
	stdout, stderr := l.take()
	for _, f := range []*os.File{stdout, stderr} {
		if f != nil {
			f.Close()
		}
	}
	l.mu.Lock()
	stop := l.cmd != nil && !l.stopped
	l.stopped = true
	l.mu.Unlock()
	if !stop {
		return
	}
	l.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-l.exited:
	case <-time.After(loggerStopTimeout):
		l.cmd.Process.Kill()
		<-l.exited
	}
	// The exit is already reaped; this only releases the command's
	// resources (its error, ECHILD or "already called", is expected).
	_ = l.cmd.Wait()
	// and closes the pidfd the failed Wait leaves open.
	_ = l.cmd.Process.Release()
}
