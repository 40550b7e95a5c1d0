package process

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
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
	sc, _ := console.ConsoleFromFile(slave)
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

// containerd's stdin ending (its writer closed, or CloseIO) hangs up the
// terminal: the process reads EOF/EIO, and both copies end.
func TestTerminalHangupOnStdinEOF(t *testing.T) {
	for _, viaCloseIO := range []bool{false, true} {
		name := "writer closed"
		if viaCloseIO {
			name = "CloseIO"
		}
		t.Run(name, func(t *testing.T) {
			in := mkfifo(t, "stdin")
			master, slave := newPty(t)
			tt, err := newTTY(context.Background(), master, nil, in)
			if err != nil {
				t.Fatal(err)
			}
			defer tt.Close()
			w, err := os.OpenFile(in, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if viaCloseIO {
				tt.CloseStdin()
				defer w.Close()
			} else {
				w.Close()
			}
			waitClosed(t, "stdin copy end", tt.inDone)
			waitClosed(t, "output copy end", tt.drained)
			n, err := slave.Read(make([]byte, 1))
			if n != 0 || (err != nil && !errors.Is(err, unix.EIO) && err != io.EOF) {
				t.Fatalf("process read %d, %v after the hangup; want EOF or EIO", n, err)
			}
		})
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
	time.Sleep(50 * time.Millisecond)                // let the fifo fill
	closed := make(chan struct{})
	go func() {
		tt.Close()
		close(closed)
	}()
	waitClosed(t, "Close", closed)
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
