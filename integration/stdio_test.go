package integration

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/client"
)

// TestStdoutStderr: both streams arrive separately and exactly.
func TestStdoutStderr(t *testing.T) {
	te := newTestEnv(t)
	var stdout, stderr bytes.Buffer
	code := te.runToExit("streams", te.io(nil, &stdout, &stderr), "sh", "-c", "echo out; echo err >&2")
	if code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if stdout.String() != "out\n" {
		t.Errorf("stdout %q, want %q", stdout.String(), "out\n")
	}
	if stderr.String() != "err\n" {
		t.Errorf("stderr %q, want %q", stderr.String(), "err\n")
	}
}

// TestLargeOutput: everything written before exit has been copied by the time
// the exit is seen and the output fifos reach EOF.
func TestLargeOutput(t *testing.T) {
	requireHarness(t)
	const size = 1 << 20
	t.Run("1MiB stdout", func(t *testing.T) {
		te := newTestEnv(t)
		var stdout bytes.Buffer
		code := te.runToExit("mib", te.io(nil, &stdout, io.Discard),
			"sh", "-c", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x", size))
		if code != 0 {
			t.Fatalf("exit status %d, want 0", code)
		}
		if stdout.Len() != size {
			t.Fatalf("got %d bytes of stdout, want %d", stdout.Len(), size)
		}
		if strings.Trim(stdout.String(), "x") != "" {
			t.Fatalf("stdout holds bytes other than 'x'")
		}
	})

	t.Run("seq on both streams", func(t *testing.T) {
		te := newTestEnv(t)
		const n = 100000
		var stdout, stderr bytes.Buffer
		code := te.runToExit("seq", te.io(nil, &stdout, &stderr),
			"sh", "-c", fmt.Sprintf("seq 1 %d; seq 1 %d >&2; exit 4", n, n))
		if code != 4 {
			t.Fatalf("exit status %d, want 4", code)
		}
		var want strings.Builder
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&want, "%d\n", i)
		}
		for name, got := range map[string]string{"stdout": stdout.String(), "stderr": stderr.String()} {
			if got != want.String() {
				t.Errorf("%s: %d bytes, want %d (last line %q)", name, len(got), want.Len(), lastLine(got))
			}
		}
	})
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// TestStdin: cat echoes its stdin back and exits 0 once stdin is closed
// through CloseIO.
func TestStdin(t *testing.T) {
	te := newTestEnv(t)
	payload := strings.Repeat("the quick brown fox\n", 4096) // 80 KiB: more than a pipe holds
	stdin, stdinW := io.Pipe()
	t.Cleanup(func() { stdinW.Close() })
	out := newSyncBuffer()
	task, exitCh := te.startTask(te.container("cat", "cat"), te.io(stdin, out, io.Discard))

	writeErr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(stdinW, payload)
		writeErr <- err
	}()
	if err := out.waitLen(te.ctx, len(payload)); err != nil {
		t.Fatalf("cat did not echo the payload: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write stdin: %v", err)
	}
	stdinW.Close()
	if err := task.CloseIO(te.ctx, client.WithStdinCloser); err != nil {
		t.Fatalf("CloseIO: %v", err)
	}
	if code := te.waitExit("cat", exitCh).ExitCode(); code != 0 {
		t.Fatalf("cat exit status %d after stdin closed, want 0", code)
	}
	te.waitIO("cat", task)
	if got := out.String(); got != payload {
		t.Fatalf("echoed %d bytes, want exactly the %d-byte payload", len(got), len(payload))
	}
	st, err := task.Delete(te.ctx)
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if st.ExitCode() != 0 {
		t.Fatalf("Delete returned exit status %d, want 0", st.ExitCode())
	}
}
