package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"oomshim/runc"
)

// deleteTimeout bounds the delete action's runc call.
const deleteTimeout = 30 * time.Second

// runDelete is the delete action: containerd runs it whenever a shim's
// connection closes, after a clean task delete as much as after a shim
// died, and a task delete waits for it. It force-deletes the runc container
// if the runtime still has state for it, unmounts the rootfs and reports
// the init as killed.
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
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	// After a clean delete the runtime has no state directory left for
	// the container (<root>/<id>, as runc, crun and youki keep it), and
	// `runc delete --force` would only cost its start-up, about 4 ms, on
	// the path of every task delete.
	if _, err := os.Stat(filepath.Join(cfg.Root, f.id)); !errors.Is(err, fs.ErrNotExist) {
		if err := cfg.Runtime(bundle).Delete(ctx, f.id, &gorunc.DeleteOpts{Force: true}); err != nil {
			fmt.Fprintf(os.Stderr, "warning: %v\n", runc.WrapError("delete", bundle, err))
		}
	}
	// A create that did not finish (the shim was killed in it) leaves a
	// cgroup runc has no state for.
	if err := runc.RemoveLeftoverCgroup(bundle, f.id, cfg.SystemdCgroup); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	if err := runc.UnmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	removeDeadSocket(bundle)
	pid, err := gorunc.ReadPidFile(filepath.Join(bundle, runc.InitPidFile))
	if err != nil {
		pid = 0
	}
	data, err := proto.Marshal(&taskapi.DeleteResponse{
		Pid:        uint32(pid),
		ExitStatus: 128 + uint32(unix.SIGKILL),
		ExitedAt:   timestamppb.Now(),
	})
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
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
