package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// newPty returns a pty master (as runc would send it) and its slave (the
// process's end) in raw mode, so bytes pass unchanged and are not echoed.
func newPty(t *testing.T) (console.Console, *os.File) {
	t.Helper()
	master, name, err := console.NewPty()
	if err != nil {
		if os.Getenv("REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("no pty here: %v", err)
		}
		t.Skipf("no pty here: %v", err)
	}
	slave, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatal(err)
	}
	sc, err := console.ConsoleFromFile(slave)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.SetRaw(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not happen", what)
	}
}

// The terminal copies stdin into the process and its output into the
// stdout fifo; once the slave is closed everywhere, drained closes and
// containerd's reader sees all of it, then EOF.
func TestTerminalCopies(t *testing.T) {
	in, out := mkfifo(t, "stdin"), mkfifo(t, "stdout")
	reader, err := os.OpenFile(out, os.O_RDONLY|unix.O_NONBLOCK, 0) // containerd's
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	master, slave := newPty(t)
	outFile, err := openTTYOutput(out)
	if err != nil {
		t.Fatal(err)
	}
	tt, err := newTTY(context.Background(), master, outFile, in)
	if err != nil {
		t.Fatal(err)
	}
	defer tt.Close()

	w, err := os.OpenFile(in, os.O_WRONLY, 0) // containerd's stdin writer
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(slave, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("process read %q, %v", buf, err)
	}

	if err := tt.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	sc, err := console.ConsoleFromFile(slave)
	if err != nil {
		t.Fatal(err)
	}
	if ws, err := sc.Size(); err != nil || ws.Width != 100 || ws.Height != 40 {
		t.Fatalf("window size %+v, %v; want 100x40", ws, err)
	}

	payload := bytes.Repeat([]byte("x"), 100<<10) // more than a pipe holds
	done := make(chan error, 1)
	go func() {
		_, err := slave.Write(payload)
		slave.Close()
		done <- err
	}()
	var got bytes.Buffer
	if err := unix.SetNonblock(int(reader.Fd()), false); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(&got, reader); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("stdout got %d bytes, want %d", got.Len(), len(payload))
	}
	waitClosed(t, "drained", tt.drained)
}

// A client's writer closing does not end the terminal's stdin (it may
// attach again); CloseIO does, after everything written before it has
// reached the process: then the terminal is hung up, the process reads
// EOF/EIO, and both copies end.
func TestTerminalStdinReattachAndCloseIO(t *testing.T) {
	t.Run("raw", func(t *testing.T) { terminalStdinRounds(t, false) })
	t.Run("canonical", func(t *testing.T) { terminalStdinRounds(t, true) })
}

// terminalStdinRounds: in raw mode the process reads every byte, then EIO
// from the hangup; in canonical mode (a shell) every line, then EOF (the
// terminal's ^D), and it exits (closes the slave) before any hangup.
func terminalStdinRounds(t *testing.T, canonical bool) {
	want := "onetwo"
	if canonical {
		want = "one\ntwo\n"
	}
	for i := range 50 {
		in := mkfifo(t, "stdin")
		master, slave := newPty(t) // raw: bytes arrive as written, no echo
		if canonical {
			term, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			term.Lflag |= unix.ICANON
			term.Cc[unix.VEOF] = 4
			if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, term); err != nil {
				t.Fatal(err)
			}
		}
		tt, err := newTTY(context.Background(), master, nil, in)
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			got []byte
			err error
		}
		read := make(chan result, 1)
		go func() { // the process, reading its terminal until EOF or EIO
			var r result
			buf := make([]byte, 64)
			for {
				n, err := slave.Read(buf)
				r.got = append(r.got, buf[:n]...)
				if err != nil || n == 0 {
					switch {
					case canonical && err != io.EOF:
						r.err = fmt.Errorf("read %v, want EOF", err)
					case err != nil && !errors.Is(err, unix.EIO) && err != io.EOF:
						r.err = err
					}
					if canonical {
						slave.Close() // the process exits at EOF
					}
					read <- r
					return
				}
			}
		}()
		w, err := os.OpenFile(in, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(want[:len(want)/2])); err != nil {
			t.Fatal(err)
		}
		w.Close() // detach
		w, err = os.OpenFile(in, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		tt.CloseStdin() // CloseIO, with the client's writer still open
		if _, err := w.Write([]byte(want[len(want)/2:])); err != nil {
			t.Fatal(err)
		}
		w.Close()
		waitClosed(t, fmt.Sprintf("round %d: stdin copy end", i), tt.inDone)
		var r result
		select {
		case r = <-read:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the process never read EOF or EIO", i)
		}
		if r.err != nil || string(r.got) != want {
			t.Fatalf("round %d: process read %q, %v; want %q, then EOF or EIO", i, r.got, r.err, want)
		}
		waitClosed(t, "output copy end", tt.drained)
		tt.Close()
		slave.Close()
	}
}

// Close returns even while the output copy is stuck on a fifo nobody reads.
func TestTerminalCloseWithStalledReader(t *testing.T) {
	out := mkfifo(t, "stdout")
	master, slave := newPty(t)
	outFile, err := openTTYOutput(out)
	if err != nil {
		t.Fatal(err)
	}
	tt, err := newTTY(context.Background(), master, outFile, "")
	if err != nil {
		t.Fatal(err)
	}
	go slave.Write(bytes.Repeat([]byte("y"), 1<<20)) // fails with EIO once hung up
	waitPipeFull(t, outFile)
	closed := make(chan struct{})
	go func() {
		tt.Close()
		close(closed)
	}()
	waitClosed(t, "Close", closed)
}

// waitPipeFull waits until the pipe or fifo behind f is full: not
// writable (poll without POLLOUT: less than PIPE_BUF free), so a writer
// blocks; for at most 10 s. Through SyscallConn: f.Fd() would make the
// descriptor blocking under the copy that writes to it.
func waitPipeFull(t *testing.T, f *os.File) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var writable bool
		var perr error
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			_, perr = unix.Poll(fds, 0)
			writable = fds[0].Revents&unix.POLLOUT != 0
		}); err != nil {
			t.Fatal(err)
		}
		if perr != nil && !errors.Is(perr, unix.EINTR) {
			t.Fatal(perr)
		}
		if !writable {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the fifo still takes writes after 10 s")
		}
		runtime.Gosched()
	}
}

// Without stdin or stdout the output is read and discarded, so the process
// never blocks on a full terminal.
func TestTerminalDiscardsWithoutStdout(t *testing.T) {
	master, slave := newPty(t)
	tt, err := newTTY(context.Background(), master, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer tt.Close()
	if _, err := slave.Write(bytes.Repeat([]byte("z"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	waitClosed(t, "drained", tt.drained)
}
