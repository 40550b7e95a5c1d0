package process

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func mkfifo(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOutputIsBlockingAndReachesFifo(t *testing.T) {
	path := mkfifo(t, "stdout")
	// containerd's reader
	r, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := OpenIO(context.Background(), Stdio{Stdout: path, Stderr: path}, IOConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.stdout != p.stderr {
		t.Fatal("the same fifo for stdout and stderr was opened twice")
	}
	fl, err := unix.FcntlInt(p.stdout.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		t.Fatal("stdout descriptor is non-blocking; the container would get EAGAIN")
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Fatal("fifo not opened read-write; a containerd restart would give the container EPIPE")
	}
	if _, err := p.stdout.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

func TestOutputTargets(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		stdio   Stdio
		wantErr error
	}{
		{"none", Stdio{}, nil},
		{"file uri", Stdio{Stdout: "file://" + filepath.Join(dir, "sub", "out.log")}, nil},
		{"syslog uri", Stdio{Stdout: "syslog://localhost"}, ErrUnsupportedIO},
		{"relative logging binary", Stdio{Stdout: "binary://logger"}, ErrUnsupportedIO},
		{"file uri naming a host, not a file", Stdio{Stdout: "file://out.log"}, errdefs.ErrInvalidArgument},
		{"terminal", Stdio{Terminal: true}, nil},
		{"terminal to a syslog uri", Stdio{Terminal: true, Stdout: "syslog://localhost"}, ErrUnsupportedIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := OpenIO(context.Background(), tc.stdio, IOConfig{})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p.Close()
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "sub", "out.log")); err != nil {
		t.Fatalf("file:// target not created: %v", err)
	}
	if _, err := OpenIO(context.Background(), Stdio{Stdout: filepath.Join(dir, "missing-fifo")}, IOConfig{}); err == nil {
		t.Fatal("a missing stdout fifo opened")
	}
}

// stdin as containerd's clients use it: a client writes, detaches (closes
// its writer) and attaches again; the process sees no EOF until CloseIO,
// and everything written before CloseIO reaches it, then EOF. Run many
// times: the last write and CloseIO race the shim's copy.
func TestStdinSurvivesReattachAndCloseIO(t *testing.T) {
	path := mkfifo(t, "stdin")
	for i := range 200 {
		p, err := OpenIO(context.Background(), Stdio{Stdin: path}, IOConfig{})
		if err != nil {
			t.Fatal(err)
		}
		child := p.stdinR // what the process would read
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("one\n")); err != nil {
			t.Fatal(err)
		}
		w.Close() // detach
		w, err = os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("two\n")); err != nil {
			t.Fatal(err)
		}
		p.CloseStdin() // CloseIO, with the client's writer still open
		if _, err := w.Write([]byte("three\n")); err != nil {
			t.Fatal(err)
		}
		w.Close()
		got, err := io.ReadAll(child)
		if err != nil || string(got) != "one\ntwo\nthree\n" {
			t.Fatalf("round %d: process read %q, %v; want all three lines, then EOF", i, got, err)
		}
		child.Close()
		p.stdinR = nil
		p.Close() // must not hang: the copy goroutine has ended
	}
}

// Close ends the stdin copy even while a client's writer stays open.
func TestStdinCloseWithWriterOpen(t *testing.T) {
	path := mkfifo(t, "stdin")
	p, err := OpenIO(context.Background(), Stdio{Stdin: path}, IOConfig{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	child := p.stdinR
	p.stdinR = nil
	defer child.Close()
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on the stdin copy")
	}
}

// IoUid/IoGid: the process gets pipes the shim made, owned by that uid and
// gid; containerd's fifo and a host file keep their owner, and what the
// process writes reaches them.
func TestIoUIDPipes(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("REQUIRE_INTEGRATION") == "1" {
			t.Fatal("chown needs root")
		}
		t.Skip("chown needs root")
	}
	fifoPath := mkfifo(t, "stdout")
	logPath := filepath.Join(t.TempDir(), "stderr.log")
	reader, err := os.OpenFile(fifoPath, os.O_RDONLY|unix.O_NONBLOCK, 0) // containerd's
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	const id = 1000
	p, err := OpenIO(context.Background(), Stdio{Stdout: fifoPath, Stderr: "file://" + logPath}, IOConfig{UID: id, GID: id})
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]*os.File{"stdout": p.stdout, "stderr": p.stderr} {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Uid != id || st.Gid != id {
			t.Errorf("the process's %s: mode %o owner %d:%d, want a pipe owned by %d:%d", name, st.Mode, st.Uid, st.Gid, id, id)
		}
	}
	for _, path := range []string{fifoPath, logPath} {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s chowned to %d:%d", path, st.Uid, st.Gid)
		}
	}
	if _, err := p.stdout.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.stderr.Write([]byte("err")); err != nil {
		t.Fatal(err)
	}
	p.CloseAfterStart() // the process's ends: the copies see EOF once it exits
	select {
	case <-p.Drained():
	case <-time.After(10 * time.Second):
		t.Fatal("output copies never ended")
	}
	if err := unix.SetNonblock(int(reader.Fd()), false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(reader, buf); err != nil || string(buf) != "out" {
		t.Errorf("fifo got %q, %v", buf, err)
	}
	if data, err := os.ReadFile(logPath); err != nil || string(data) != "err" {
		t.Errorf("log file holds %q, %v", data, err)
	}
	p.Close()
}

// FuzzClassifyOutput: a stdio target from containerd (a fifo path, fifo://,
// file://, binary://, binary-v2:// or anything else) never panics the
// parse; what it accepts as a path or a logging binary is absolute, and a
// refusal is ErrUnsupportedIO or InvalidArgument.
func FuzzClassifyOutput(f *testing.F) {
	for _, s := range []string{"", "/run/fifo/1-stdout", "fifo:///run/f", "file:///var/log/x.log", "file://log",
		"binary:///usr/bin/logger?a=b", "binary-v2:///bin/l", "binary://rel", "syslog://localhost", "%zz", "file:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		o, err := classifyOutput(target)
		if err != nil {
			if !errors.Is(err, ErrUnsupportedIO) && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%q: %v", target, err)
			}
			return
		}
		if o.binary != nil && !filepath.IsAbs(o.binary.Path) {
			t.Fatalf("%q: relative logging binary %q", target, o.binary.Path)
		}
		if o.file && !filepath.IsAbs(o.path) {
			t.Fatalf("%q: relative file %q", target, o.path)
		}
	})
}
