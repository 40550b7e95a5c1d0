package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// loggerScript writes a logging binary that copies fd 3 and fd 4 into
// files of the directory given as its "dir" argument, records its
// environment, and at the end writes "done" into the fifo dir/done. ready
// is the shell that announces readiness on fd 5.
func loggerScript(t *testing.T, ready string) (bin, dir string) {
	t.Helper()
	dir = t.TempDir()
	bin = filepath.Join(dir, "logger.sh")
	script := `#!/bin/sh
dir=$2
echo "$CONTAINER_ID $CONTAINER_NAMESPACE $PATH" > "$dir/env"
cat <&3 > "$dir/out" 5>&- &
cat <&4 > "$dir/err" 5>&- &
` + ready + `
wait
echo done > "$dir/done"
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "done"), 0o600); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

// waitDone blocks until the logger wrote its last line.
func waitDone(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "done")) // blocks until the writer comes
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, err := io.ReadAll(f); err != nil || string(b) != "done\n" {
		t.Fatalf("logger ended with %q, %v", b, err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The process's stdout and stderr are pipes into the logging binary, which
// sees EOF once they are closed; it gets the container's ID and namespace
// and nothing else in its environment; binary-v2 readiness is a byte.
func TestLoggingBinary(t *testing.T) {
	for scheme, ready := range map[string]string{"binary": "exec 5>&-", "binary-v2": "printf x >&5; exec 5>&-"} {
		t.Run(scheme, func(t *testing.T) {
			bin, dir := loggerScript(t, ready)
			uri := fmt.Sprintf("%s://%s?dir=%s", scheme, bin, dir)
			p, err := OpenIO(context.Background(), Stdio{Stdout: uri, Stderr: uri}, IOConfig{ContainerID: "c1", Namespace: "ns1"})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if _, err := p.stdout.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if _, err := p.stderr.Write([]byte("oops")); err != nil {
				t.Fatal(err)
			}
			p.CloseAfterStart() // the process would now hold the only write ends
			waitDone(t, dir)
			if got := readFile(t, filepath.Join(dir, "out")); got != "hello" {
				t.Errorf("stdout %q", got)
			}
			if got := readFile(t, filepath.Join(dir, "err")); got != "oops" {
				t.Errorf("stderr %q", got)
			}
			if got := readFile(t, filepath.Join(dir, "env")); !strings.HasPrefix(got, "c1 ns1 ") {
				t.Errorf("environment %q, want CONTAINER_ID c1 and CONTAINER_NAMESPACE ns1", got)
			}
		})
	}
}

// A logging binary that cannot start, dies before it is ready, or never
// gets ready fails OpenIO with ErrLogger and leaves nothing running.
func TestLoggingBinaryFailures(t *testing.T) {
	defer func(d time.Duration) { loggerReadyTimeout = d }(loggerReadyTimeout)
	loggerReadyTimeout = 300 * time.Millisecond
	for name, tc := range map[string]struct{ scheme, ready string }{
		"missing binary":           {"binary", ""},
		"binary-v2 without a byte": {"binary-v2", "exec 5>&-"},
		"never ready":              {"binary", "exec sleep 1000"},
	} {
		t.Run(name, func(t *testing.T) {
			bin, dir := loggerScript(t, tc.ready)
			if tc.ready == "" {
				bin = filepath.Join(dir, "missing")
			}
			uri := fmt.Sprintf("%s://%s?dir=%s", tc.scheme, bin, dir)
			p, err := OpenIO(context.Background(), Stdio{Stdout: uri}, IOConfig{})
			if err == nil {
				p.Close()
				t.Fatal("OpenIO succeeded")
			}
			if !errors.Is(err, ErrLogger) {
				t.Fatalf("got %v, want ErrLogger", err)
			}
		})
	}
}

// Close stops a logging binary that does not end on EOF (SIGTERM).
func TestLoggingBinaryStopped(t *testing.T) {
	bin, dir := loggerScript(t, "exec 5>&-; exec sleep 1000")
	p, err := OpenIO(context.Background(), Stdio{Stdout: "binary://" + bin + "?dir=" + dir}, IOConfig{})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	waitClosed(t, "Close", closed)
}

// sendMaster plays runc: it connects to the console socket and passes the
// pty master.
func sendMaster(t *testing.T, socket string, master console.Console) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _, err = conn.(*net.UnixConn).WriteMsgUnix([]byte("/dev/ptmx"), unix.UnixRights(int(master.Fd())), nil)
	if err != nil {
		t.Fatal(err)
	}
}

// A terminal whose output goes to a logging binary: Attach receives the
// master from the console socket and copies it into the binary's stdout
// pipe; the binary's stderr pipe is closed at once.
func TestTerminalToLoggingBinary(t *testing.T) {
	bin, dir := loggerScript(t, "exec 5>&-")
	p, err := OpenIO(context.Background(), Stdio{Terminal: true, Stdout: "binary://" + bin + "?dir=" + dir}, IOConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	master, slave := newPty(t)
	sendMaster(t, p.ConsoleSocket().Path(), master)
	master.Close() // runc's copy
	socketDir := filepath.Dir(p.ConsoleSocket().Path())
	if err := p.Attach(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socketDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("console socket directory still there after Attach: %v", err)
	}
	if _, err := slave.Write([]byte("tty-hello")); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	waitClosed(t, "drained", p.Drained())
	waitDone(t, dir)
	if got := readFile(t, filepath.Join(dir, "out")); got != "tty-hello" {
		t.Errorf("stdout %q", got)
	}
}
