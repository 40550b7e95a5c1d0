package integration

import (
	"io"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// ttyIO is a terminal's stdio: one output stream, and stdin if given.
func (te *testEnv) ttyIO(stdin io.Reader, stdout io.Writer) cio.Creator {
	return cio.NewCreator(cio.WithStreams(stdin, stdout, nil), cio.WithTerminal, cio.WithFIFODir(te.h.FifoDir))
}

// TestTerminal: processes with a terminal (ctr run -t, kubectl exec -it):
// the pty reaches the process, ResizePty sets its size, all output arrives,
// stdin is fed through, and containerd's stdin ending hangs the terminal up.
func TestTerminal(t *testing.T) {
	requireHarness(t)
	t.Run("init", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.containerWith("tty", nil, oci.WithTTY,
			oci.WithProcessArgs("sh", "-c", "tty; stty size; head -c 300000 /dev/zero | tr '\\0' x; echo; exit 3"))
		out := newSyncBuffer()
		task := te.newTask(c, te.ttyIO(nil, out))
		exitCh, err := task.Wait(te.ctx)
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		if err := task.Resize(te.ctx, 100, 40); err != nil {
			t.Fatalf("resize: %v", err)
		}
		if err := task.Start(te.ctx); err != nil {
			t.Fatalf("start: %v", err)
		}
		if code := te.waitExit("tty", exitCh).ExitCode(); code != 3 {
			t.Fatalf("exit status %d, want 3", code)
		}
		te.waitIO("tty", task)
		got := out.String()
		for _, want := range []string{"/dev/pts/", "40 100\r\n"} {
			if !strings.Contains(got, want) {
				t.Errorf("terminal output lacks %q: %q", want, head(got))
			}
		}
		if n := strings.Count(got, "x"); n != 300000 {
			t.Errorf("terminal output holds %d of the 300000 bytes written before the exit", n)
		}
		if _, err := task.Delete(te.ctx); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})

	t.Run("exec with stdin", func(t *testing.T) {
		te := newTestEnv(t)
		c := te.container("host", "sleep", "1000")
		task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
		spec := te.processSpec(c, "sh", "-c", "tty; read line; echo got-$line; cat")
		spec.Terminal = true
		stdin, stdinW := io.Pipe()
		t.Cleanup(func() { stdinW.Close() })
		out := newSyncBuffer()
		proc, exitCh := te.startSpec(task, "shell", spec, te.ttyIO(stdin, out))
		if err := proc.Resize(te.ctx, 132, 43); err != nil {
			t.Fatalf("resize exec: %v", err)
		}
		if _, err := io.WriteString(stdinW, "hello\n"); err != nil {
			t.Fatalf("write stdin: %v", err)
		}
		if err := out.waitFor(te.ctx, "got-hello\r\n"); err != nil {
			t.Fatalf("the exec never answered its stdin: %v (output %q)", err, head(out.String()))
		}
		// containerd's stdin ends: the terminal is hung up and cat (and
		// the shell) end, as after a closed ssh session.
		stdinW.Close()
		if err := proc.CloseIO(te.ctx, client.WithStdinCloser); err != nil {
			t.Fatalf("CloseIO: %v", err)
		}
		te.waitExit("exec after hangup", exitCh)
		te.waitIO("exec", proc)
		if !strings.Contains(out.String(), "/dev/pts/") {
			t.Errorf("exec output lacks its terminal: %q", head(out.String()))
		}
		if _, err := proc.Delete(te.ctx); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
	})
}

// head shortens s for a failure message.
func head(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
