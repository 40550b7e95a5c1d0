package shim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// listenFdEnv names the descriptor of the socket that start bound for the
// server.
const listenFdEnv = "SHIM_LISTEN_FD"

// bindSocket binds the socket of a group's server, or finds that a live
// server already has it (existing). The start action binds it and hands it
// to the server it launches, so of many concurrent starts for one group
// exactly one launches a server: the others find the socket bound (a bound
// socket accepts connections into its backlog before its server calls
// accept). A stale socket (nothing listens) is replaced under an flock of
// the socket directory, so two starts replacing it cannot unlink each
// other's live socket.
func bindSocket(address string) (l *net.UnixListener, existing bool, err error) {
	path := socketPath(address)
	if len(path) > 106 {
		return nil, false, fmt.Errorf("socket path %q is too long for a unix socket", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create socket dir: %w", err)
	}
	lock, err := os.Open(dir)
	if err != nil {
		return nil, false, fmt.Errorf("open socket dir: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, false, fmt.Errorf("lock socket dir: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	l, err = listenUnix(path)
	if errors.Is(err, unix.EADDRINUSE) {
		if canConnect(address) {
			return nil, true, nil
		}
		os.Remove(path)
		l, err = listenUnix(path)
	}
	if err != nil {
		return nil, false, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, false, nil
}

func listenUnix(path string) (*net.UnixListener, error) {
	return net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
}

// serverSocket is the socket the server serves: the one start bound and
// passed down, or (a server started by hand) one it binds itself.
type serverSocket struct {
	*net.UnixListener
	path string
	file unix.Stat_t // the socket file as it was when the server got it
}

func serverListener(address string) (*serverSocket, error) {
	var l *net.UnixListener
	fd, err := strconv.Atoi(os.Getenv(listenFdEnv))
	os.Unsetenv(listenFdEnv)
	if err != nil || fd < 3 {
		var existing bool
		if l, existing, err = bindSocket(address); err != nil {
			return nil, err
		}
		if existing {
			return nil, fmt.Errorf("a server already listens on %s", address)
		}
	} else {
		f := os.NewFile(uintptr(fd), "listener")
		nl, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("socket from start: %w", err)
		}
		var ok bool
		if l, ok = nl.(*net.UnixListener); !ok {
			nl.Close()
			return nil, fmt.Errorf("socket from start is not a unix socket")
		}
	}
	// The server removes the file itself, and only if it is still its own.
	l.SetUnlinkOnClose(false)
	s := &serverSocket{UnixListener: l, path: socketPath(address)}
	if err := unix.Stat(s.path, &s.file); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket file: %w", &os.PathError{Op: "stat", Path: s.path, Err: err})
	}
	return s, nil
}

// remove unlinks the socket file if it is still the one the server got:
// never a socket another server has bound since.
func (s *serverSocket) remove() {
	var now unix.Stat_t
	if err := unix.Stat(s.path, &now); err == nil && now.Dev == s.file.Dev && now.Ino == s.file.Ino {
		os.Remove(s.path)
	}
}
