package shim

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// runDelete is the delete action: containerd runs it when a shim died with
// its container. It force-deletes the runc container, unmounts the rootfs
// and reports the init as killed.
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
	if err := cfg.Runtime(bundle).Delete(ctx, f.id, &gorunc.DeleteOpts{Force: true}); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", runc.WrapError("delete", bundle, err))
	}
	if err := runc.UnmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
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
