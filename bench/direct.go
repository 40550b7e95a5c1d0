package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
)

// namespaceHeader is the ttrpc metadata key a shim reads the namespace from.
const namespaceHeader = "containerd-namespace-ttrpc"

// shimClient is a ttrpc connection of our own to a running container's shim,
// beside containerd's: it times the shim's API without ctr and containerd.
type shimClient struct {
	conn *ttrpc.Client
	task taskv3.TTRPCTaskService
}

// dialShim connects to the shim of container id, at the address containerd
// recorded in the bundle's bootstrap.json.
func (e *env) dialShim(id string) (*shimClient, error) {
	path := filepath.Join(e.State, "io.containerd.runtime.v2.task", e.ns, id, "bootstrap.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var boot struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(data, &boot); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	conn, err := net.DialTimeout("unix", strings.TrimPrefix(boot.Address, "unix://"), 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := ttrpc.NewClient(conn)
	return &shimClient{conn: c, task: taskv3.NewTTRPCTaskClient(c)}, nil
}

func (s *shimClient) Close() { s.conn.Close() }

// directExec runs `true` as an exec of container c through the shim's task
// API (Exec, Start, Wait, Delete, no stdio) and returns the wall time.
func (e *env) directExec(ctx context.Context, s *shimClient, c client.Container, execID string) (time.Duration, error) {
	spec, err := c.Spec(ctx)
	if err != nil {
		return 0, err
	}
	p := *spec.Process
	p.Args = []string{"true"}
	p.Terminal = false
	anySpec, err := typeurl.MarshalAnyToProto(&p)
	if err != nil {
		return 0, err
	}
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{namespaceHeader: []string{e.ns}})
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := s.task.Exec(ctx, &taskv3.ExecProcessRequest{ID: c.ID(), ExecID: execID, Spec: anySpec}); err != nil {
		return 0, fmt.Errorf("exec %s in %s: %w", execID, c.ID(), err)
	}
	if _, err := s.task.Start(ctx, &taskv3.StartRequest{ID: c.ID(), ExecID: execID}); err != nil {
		return 0, fmt.Errorf("start exec %s in %s: %w", execID, c.ID(), err)
	}
	w, err := s.task.Wait(ctx, &taskv3.WaitRequest{ID: c.ID(), ExecID: execID})
	if err != nil {
		return 0, fmt.Errorf("wait exec %s in %s: %w", execID, c.ID(), err)
	}
	if _, err := s.task.Delete(ctx, &taskv3.DeleteRequest{ID: c.ID(), ExecID: execID}); err != nil {
		return 0, fmt.Errorf("delete exec %s in %s: %w", execID, c.ID(), err)
	}
	d := time.Since(t0)
	if w.ExitStatus != 0 {
		return 0, fmt.Errorf("exec %s in %s: exit status %d", execID, c.ID(), w.ExitStatus)
	}
	return d, nil
}
