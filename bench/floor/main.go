// Command bench-floor is the least a shim serving containerd's task API
// over ttrpc holds in memory: a ttrpc server with the task API (v3)
// registered, answering Connect and State (State also marshals a TaskExit
// event, as a shim publishing its events does), and nothing else: no
// container, no runc, no logging, no cgroup. The benchmark's floor step
// runs it as the shim's server runs (GOMAXPROCS=1), calls it, and reads its
// anonymous memory; SIGUSR1 makes it collect and hand free heap pages back
// to the kernel, as the shim's server does after a burst of requests.
//
// Usage: bench-floor <socket>
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
)

// service answers Connect and State; every other method of the embedded
// (nil) interface is never called by the benchmark.
type service struct{ taskv3.TTRPCTaskService }

func (service) Connect(ctx context.Context, r *taskv3.ConnectRequest) (*taskv3.ConnectResponse, error) {
	return &taskv3.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: 1}, nil
}

func (service) State(ctx context.Context, r *taskv3.StateRequest) (*taskv3.StateResponse, error) {
	if r.ID == "" {
		return nil, fmt.Errorf("no id: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := typeurl.MarshalAny(&eventstypes.TaskExit{ContainerID: r.ID, ID: r.ID, Pid: 1, ExitStatus: 137}); err != nil {
		return nil, err
	}
	return &taskv3.StateResponse{ID: r.ID, Pid: 1, Status: task.Status_RUNNING}, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bench-floor <socket>")
		os.Exit(2)
	}
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	taskv3.RegisterTTRPCTaskService(srv, service{})
	release := make(chan os.Signal, 1)
	signal.Notify(release, syscall.SIGUSR1)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for range release {
			debug.FreeOSMemory()
		}
	}()
	go func() {
		<-stop
		l.Close()
		os.Exit(0)
	}()
	if err := srv.Serve(context.Background(), l); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
