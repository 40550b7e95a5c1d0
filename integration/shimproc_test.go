package integration

import (
	"oomshim/testkit"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// handShim is a shim started by hand the way containerd starts one, to test
// its start/delete protocol and its ttrpc API without containerd in between.
type handShim struct {
	te      *testEnv
	id      string
	bundle  string
	address string // unix://...
	conn    net.Conn
	client  *ttrpc.Client
	task    taskv3.TTRPCTaskService
	log     *syncBuffer // what the shim wrote to the bundle's "log" fifo
}

// minimalSpec is enough of an OCI spec for the shim's start action, which
// reads only annotations; Create is expected to fail on it anyway.
func minimalSpec(args ...string) []byte {
	spec := map[string]any{
		"ociVersion": "1.2.0",
		"process": map[string]any{
			"args": args, "cwd": "/", "env": []string{"PATH=/bin"},
			"user": map[string]any{"uid": 0, "gid": 0},
		},
		"root":        map[string]any{"path": "rootfs"},
		"linux":       map[string]any{"namespaces": []map[string]string{{"type": "pid"}, {"type": "mount"}}},
		"annotations": map[string]string{},
	}
	data, _ := json.Marshal(spec)
	return data
}

// handBundle makes <handDir>/<ns>/<id> with the given config.json (none if
// nil), an empty rootfs/ and a reader on the "log" fifo the shim writes its
// log to. Everything is removed at cleanup.
func (te *testEnv) handBundle(id string, config []byte) (string, *syncBuffer) {
	te.t.Helper()
	dir := filepath.Join(te.h.handDir, te.ns, id)
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o711); err != nil {
		te.t.Fatal(err)
	}
	te.t.Cleanup(func() {
		for _, m := range testkit.MountsUnder(dir) {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
		if err := os.RemoveAll(dir); err != nil {
			te.t.Errorf("cleanup: %v", err)
		}
		_ = os.Remove(filepath.Dir(dir)) // the namespace's dir, once empty
	})
	if config != nil {
		if err := os.WriteFile(filepath.Join(dir, "config.json"), config, 0o644); err != nil {
			te.t.Fatal(err)
		}
	}
	logBuf := newSyncBuffer()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := fifo.OpenFifo(ctx, filepath.Join(dir, "log"), syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
	if err != nil {
		cancel()
		te.t.Fatalf("log fifo: %v", err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(logBuf, r)
	}()
	te.t.Cleanup(func() {
		cancel()
		r.Close()
		<-copied
		if te.t.Failed() && logBuf.Len() > 0 {
			te.t.Logf("log of the hand-started shim %s:\n%s", id, logBuf.String())
		}
	})
	return dir, logBuf
}

// shimCommand builds `$SHIM_BINARY <flags> <action>` run in dir, with the
// environment containerd gives a shim.
func (te *testEnv) shimCommand(dir string, stdin []byte, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(te.ctx, te.h.s.shimBinary, args...)
	cmd.Dir = dir
	cmd.Env = te.h.Environ(
		"TTRPC_ADDRESS="+te.h.TTRPCAddress,
		"GRPC_ADDRESS="+te.h.Address,
		"NAMESPACE="+te.ns,
		"MAX_SHIM_VERSION=2", // what containerd 1.7 and 2.x set
	)
	cmd.Stdin = bytes.NewReader(stdin)
	// A start action that leaks its stdout to the daemon would block here
	// (and in containerd): bound the wait for the pipes.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// runShim runs one shim action and returns its stdout; stderr goes in the error.
func (te *testEnv) runShim(dir string, stdin []byte, args ...string) ([]byte, error) {
	cmd := te.shimCommand(dir, stdin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w; stderr: %s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func (te *testEnv) startFlags(id string) []string {
	return []string{"-namespace", te.ns, "-id", id, "-address", te.h.Address,
		"-publish-binary", te.h.s.containerd(), "-debug", "start"}
}

// bootstrapParams is what containerd v2.4.2 writes to a shim's stdin.
func (te *testEnv) bootstrapParams(id string) []byte {
	te.t.Helper()
	socketDir := te.h.SocketDir
	params := &bootapi.BootstrapParams{
		InstanceID:             id,
		Namespace:              te.ns,
		LogLevel:               bootapi.LogLevel_LOG_LEVEL_DEBUG,
		ContainerdVersion:      "2.4.2",
		ContainerdGrpcAddress:  te.h.Address,
		ContainerdTtrpcAddress: te.h.TTRPCAddress,
		ContainerdBinary:       te.h.s.containerd(),
		SocketDir:              &socketDir,
	}
	if err := params.AddExtension(&options.Options{}); err != nil {
		te.t.Fatal(err)
	}
	data, err := proto.Marshal(params)
	if err != nil {
		te.t.Fatal(err)
	}
	return data
}

// legacyOptions is what containerd before the bootstrap protocol wrote to a
// shim's stdin: the runtime options as a google.protobuf.Any.
func legacyOptions() ([]byte, error) {
	anyOpts, err := typeurl.MarshalAnyToProto(&options.Options{})
	if err != nil {
		return nil, err
	}
	return proto.Marshal(anyOpts)
}

// startBootstrapShim starts a shim by hand with the bootstrap protocol and
// connects to it.
func (te *testEnv) startBootstrapShim(id string) (*handShim, *bootapi.BootstrapResult) {
	te.t.Helper()
	dir, logBuf := te.handBundle(id, minimalSpec("true"))
	s := &handShim{te: te, id: id, bundle: dir, log: logBuf}
	te.t.Cleanup(s.cleanup)
	out, err := te.runShim(dir, te.bootstrapParams(id), te.startFlags(id)...)
	if err != nil {
		te.t.Fatalf("shim start (bootstrap): %v", err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &res); err != nil {
		te.t.Fatalf("shim start stdout %q is not a BootstrapResult protobuf: %v", out, err)
	}
	s.address = res.Address
	s.dial()
	return s, &res
}

// dial connects a ttrpc task client to the shim's address.
func (s *handShim) dial() {
	s.te.t.Helper()
	path, ok := strings.CutPrefix(s.address, "unix://")
	if !ok {
		s.te.t.Fatalf("shim address %q is not unix://", s.address)
	}
	conn, err := net.DialTimeout("unix", path, 10*time.Second)
	if err != nil {
		s.te.t.Fatalf("dial shim %s: %v", s.address, err)
	}
	s.conn = conn
	s.client = ttrpc.NewClient(conn)
	s.task = taskv3.NewTTRPCTaskClient(s.client)
}

// connect calls Connect: the shim is alive and answering.
func (s *handShim) connect() *taskv3.ConnectResponse {
	s.te.t.Helper()
	resp, err := s.task.Connect(s.te.ctx, &taskv3.ConnectRequest{ID: s.id})
	if err != nil {
		s.te.t.Fatalf("Connect to shim %s: %v", s.id, err)
	}
	if resp.ShimPid == 0 {
		s.te.t.Fatalf("Connect: shim pid 0")
	}
	return resp
}

// shutdown asks the shim to exit and returns the Shutdown error, with the
// errors of a connection the exiting shim closed mapped to nil.
func (s *handShim) shutdown(ctx context.Context) error {
	_, err := s.task.Shutdown(ctx, &taskv3.ShutdownRequest{ID: s.id, Now: true})
	if err == nil || errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return nil
	}
	return err
}

// cleanup stops the shim however it can and removes what it made.
func (s *handShim) cleanup() {
	h := s.te.h
	if s.client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.shutdown(ctx)
		cancel()
		s.client.Close()
	}
	for _, p := range h.shimProcesses() {
		if p.NS == s.te.ns && p.ID == s.id {
			if testkit.WaitPidExit(p.PID, 5*time.Second) != nil {
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
				_ = testkit.WaitPidExit(p.PID, 30*time.Second)
			}
		}
	}
	if path, ok := strings.CutPrefix(s.address, "unix://"); ok {
		_ = os.Remove(path)
	}
	testkit.DeleteRuncContainers(h.s.runc(), filepath.Join(runcRoot, s.te.ns))
}

// socketGone reports whether the unix socket behind address was removed.
func socketGone(address string) bool {
	path, _ := strings.CutPrefix(address, "unix://")
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}
