package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"oomshim/runc"
)

// deleteTimeout bounds the cleanup's runc call.
const deleteTimeout = 30 * time.Second

// cleanupAction is the delete action's cleanup run in a process of its own
// (see runDelete); containerd never passes it.
const cleanupAction = "delete-cleanup"

// runDelete is the delete action: containerd runs it whenever a shim's
// connection closes, after a clean task delete as much as after a shim
// died, and a task delete waits for it. It force-deletes the runc container
// if the runtime still has state for it, unmounts the rootfs, removes a
// dead shim's socket and reports the init's exit (deleteResponse).
//
// After a shim died containerd gives the action 5 seconds
// (io.containerd.timeout.shim.cleanup) and then SIGKILLs it; the bundle
// goes soon after, when CRI deletes the task. `runc delete --force` can
// take longer on a loaded node (a pod's shim killed while its containers
// were being OOM-killed: 2.6-4.2 s each under emulation, eleven at once);
// killed half way it would leave the runtime's state and the container's
// cgroup for good. So while the runtime has state, the cleanup runs in a
// child of its own session, which finishes even if this process is
// killed; this process waits for it and passes its warnings on.
func runDelete(f flags, stdout io.Writer) error {
	bundle := f.bundle
	if bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		bundle = wd
	}
	opts, err := runc.ReadOptions(bundle)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v; using default runtime options\n", err)
	}
	cfg := runc.NewConfig(opts, f.namespace)
	// After a clean delete the runtime has no state directory left for
	// the container (<root>/<id>, as runc, crun and youki keep it): no
	// runc call (about 4 ms of start-up on the path of every task delete)
	// and no child.
	if _, err := os.Stat(filepath.Join(cfg.Root, f.id)); errors.Is(err, fs.ErrNotExist) {
		cleanup(f, bundle, cfg, false, os.Stderr)
	} else if err := cleanupDetached(f, bundle, opts); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v; cleaning up in this process\n", err)
		cleanup(f, bundle, cfg, true, os.Stderr)
	}
	data, err := proto.Marshal(deleteResponse(bundle))
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}

// deleteResponse is the init's exit as the shim recorded it in the bundle
// (runc.WriteExitStatus), or, when it died before the init exited, a
// SIGKILL now with the pid from runc's pid file.
func deleteResponse(bundle string) *taskapi.DeleteResponse {
	e, err := runc.ReadExitStatus(bundle)
	if err == nil {
		return &taskapi.DeleteResponse{Pid: uint32(e.Pid), ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Timestamp)}
	}
	if !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	pid, err := gorunc.ReadPidFile(filepath.Join(bundle, runc.InitPidFile))
	if err != nil {
		pid = 0
	}
	return &taskapi.DeleteResponse{Pid: uint32(pid), ExitStatus: 128 + uint32(unix.SIGKILL), ExitedAt: timestamppb.Now()}
}

// cleanupDetached runs the cleanup action in a child that outlives this
// process: a session of its own (containerd's kill reaches only this
// process, and no parent-death signal), stdout to /dev/null and stderr
// through a pipe of ours, not containerd's: containerd waits for its pipe
// to close, which a child holding it would delay past the kill. The child
// gets the runtime options on stdin: containerd may have removed the bundle
// by the time it reads them.
func cleanupDetached(f flags, bundle string, opts *options.Options) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", f.namespace, "-id", f.id, "-bundle", bundle}
	if f.debug {
		args = append(args, "-debug")
	}
	var warnings bytes.Buffer
	cmd := exec.Command(self, append(args, cleanupAction)...)
	cmd.Dir = "/" // the bundle may be removed while it runs
	cmd.Stderr = &warnings
	if opts != nil {
		data, err := json.Marshal(opts)
		if err != nil {
			return err
		}
		cmd.Stdin = bytes.NewReader(data)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the cleanup: %w", err)
	}
	err = cmd.Wait()
	os.Stderr.Write(warnings.Bytes())
	if err != nil {
		// Its warnings say what failed; the runtime was called.
		fmt.Fprintf(os.Stderr, "warning: cleanup: %v\n", err)
	}
	return nil
}

// runCleanup is the cleanup action, the child of cleanupDetached. Its
// stderr is a pipe to the delete action, which may be killed: a warning
// written then must fail with EPIPE, not end the process by SIGPIPE. The
// runtime options come on stdin (none: the defaults).
func runCleanup(f flags, stdin io.Reader) error {
	signal.Ignore(unix.SIGPIPE)
	if f.bundle == "" {
		return errors.New("cleanup needs -bundle")
	}
	data, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("read runtime options: %w", err)
	}
	var opts *options.Options
	if len(data) > 0 {
		if opts, err = runc.ParseOptions(data); err != nil {
			return err
		}
	}
	cleanup(f, f.bundle, runc.NewConfig(opts, f.namespace), true, os.Stderr)
	return nil
}

// cleanup force-deletes the runtime's container (withRuntime), removes a
// cgroup a create killed half way left, unmounts the rootfs and removes
// a dead shim's socket. Failures are warnings: each step runs regardless.
func cleanup(f flags, bundle string, cfg runc.Config, withRuntime bool, warn io.Writer) {
	if withRuntime {
		// runc logs to stderr here, not to the bundle's log.json: after a
		// killed delete action containerd removes the bundle while this
		// runs, and runc that cannot open its log file does nothing (seen
		// in the systemd lane).
		rt := cfg.Runtime(bundle)
		rt.Log = ""
		ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
		err := rt.Delete(ctx, f.id, &gorunc.DeleteOpts{Force: true})
		cancel()
		if err != nil {
			fmt.Fprintf(warn, "warning: %v\n", runc.WrapError("delete", bundle, err))
		}
	}
	// A create that did not finish (the shim was killed in it) leaves a
	// cgroup runc has no state for.
	if err := runc.RemoveLeftoverCgroup(bundle, f.id, cfg.SystemdCgroup); err != nil {
		fmt.Fprintf(warn, "warning: %v\n", err)
	}
	if err := runc.UnmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		fmt.Fprintf(warn, "warning: %v\n", err)
	}
	removeDeadSocket(bundle)
}

// removeDeadSocket removes the socket of the bundle's shim (the address
// containerd 2.x recorded in bootstrap.json, or the address file the start
// action wrote, which containerd 1.x reads) once nothing listens on it: a
// shim killed with its container cannot remove it itself. A shim still
// serving other containers of its group accepts the connection and keeps
// it.
func removeDeadSocket(bundle string) {
	var address string
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var res struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &res) == nil {
			address = res.Address
		}
	} else if data, err := os.ReadFile(filepath.Join(bundle, addressFile)); err == nil {
		address = strings.TrimSpace(string(data))
	}
	path, ok := strings.CutPrefix(address, "unix://")
	if !ok {
		return
	}
	c, err := net.DialTimeout("unix", path, 100*time.Millisecond)
	if err == nil {
		c.Close()
		return
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "warning: remove dead shim socket: %v\n", err)
		}
	}
}
