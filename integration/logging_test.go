package integration

import (
	"bytes"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"golang.org/x/sys/unix"
)

// TestLoggingBinary: binary:// stdio (containerd's LogURI, what nerdctl
// uses for detached containers) runs the logging binary with the
// process's stdout and stderr on its fds 3 and 4; it has the container's
// ID and namespace, and sees EOF once the process is gone.
func TestLoggingBinary(t *testing.T) {
	te := newTestEnv(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "logger.sh")
	script := `#!/bin/sh
dir=$2
echo "$CONTAINER_ID $CONTAINER_NAMESPACE" > "$dir/env"
cat <&3 > "$dir/out" 5>&- &
cat <&4 > "$dir/err" 5>&- &
exec 5>&-
wait
echo done > "$dir/done"
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "done"), 0o600); err != nil {
		t.Fatal(err)
	}
	done, err := os.OpenFile(filepath.Join(dir, "done"), os.O_RDWR, 0) // never EOF; read with a deadline
	if err != nil {
		t.Fatal(err)
	}
	defer done.Close()

	uri := &url.URL{Scheme: "binary", Path: bin, RawQuery: url.Values{"dir": {dir}}.Encode()}
	c := te.container("logged", "sh", "-c", "echo out; echo err >&2; exit 2")
	task := te.newTask(c, cio.LogURI(uri))
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if err := task.Start(te.ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	if code := te.waitExit("logged", exitCh).ExitCode(); code != 2 {
		t.Fatalf("exit status %d, want 2", code)
	}
	deadline, _ := te.ctx.Deadline()
	if deadline.IsZero() {
		deadline = time.Now().Add(time.Minute)
	}
	done.SetReadDeadline(deadline)
	buf := make([]byte, 5)
	if _, err := done.Read(buf); err != nil || !bytes.Equal(buf, []byte("done\n")) {
		t.Fatalf("the logging binary never saw EOF on both streams: %q, %v", buf, err)
	}
	for name, want := range map[string]string{"out": "out\n", "err": "err\n", "env": "logged " + te.ns + "\n"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if ex := te.logExcerpt("logged", 100); strings.Contains(ex, "level=error") {
		t.Errorf("errors about the container in containerd's log:\n%s", ex)
	}
}
