package process

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// stdinFifo is containerd's stdin fifo as the shim reads it. The shim
// holds a write end of its own, as the stock shim does, so the fifo does
// not read EOF when a client closes its writer: a client can detach and
// attach again. CloseIO closes the shim's write end (CloseWrite); the copy
// then drains everything clients wrote and ends at EOF once their writers
// are closed too, so nothing written before CloseIO is lost.
//
// Both ends are opened before openStdinFifo returns (a non-blocking open
// of the read end returns at once; the write end then finds a reader), so
// no client can close its writer before the shim's is there. The read end
// is non-blocking: the copy waits on Go's poller.
type stdinFifo struct {
	r         *os.File
	w         *os.File
	closeOnce sync.Once
}

func openStdinFifo(path string) (*stdinFifo, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil, fmt.Errorf("stdin %s is not a fifo: %w", path, ErrUnsupportedIO)
	}
	rfd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	r := os.NewFile(uintptr(rfd), path)
	wfd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("open the shim's writer: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	return &stdinFifo{r: r, w: os.NewFile(uintptr(wfd), path)}, nil
}

func (f *stdinFifo) Read(p []byte) (int, error) { return f.r.Read(p) }

// CloseWrite lets the fifo read EOF once the clients' writers are closed.
func (f *stdinFifo) CloseWrite() {
	f.closeOnce.Do(func() { f.w.Close() })
}

// Close closes both ends; a copy blocked reading ends.
func (f *stdinFifo) Close() error {
	f.CloseWrite()
	return f.r.Close()
}
