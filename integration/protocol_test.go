package integration

import (
	"oomshim/testkit"

	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"google.golang.org/protobuf/proto"
)

// TestStartProtocolViaContainerd: containerd v2.4.2 starts the shim with the
// bootstrap protocol, accepts its answer and the shim removes its socket when
// its task is deleted.
func TestStartProtocolViaContainerd(t *testing.T) {
	te := newTestEnv(t)
	task, _ := te.startTask(te.container("boot", "sleep", "1000"), te.io(nil, io.Discard, io.Discard))

	bundle := filepath.Join(te.h.State, "io.containerd.runtime.v2.task", te.ns, "boot")
	data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json"))
	if err != nil {
		t.Fatalf("containerd kept no bootstrap.json for the shim: %v", err)
	}
	var res bootapi.BootstrapResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("bootstrap.json %s: %v", data, err)
	}
	if res.Version != 3 || res.Protocol != "ttrpc" || !strings.HasPrefix(res.Address, "unix://"+te.h.SocketDir+"/") {
		t.Fatalf("bootstrap result %s: want version 3, protocol ttrpc, a unix:// address in %s", data, te.h.SocketDir)
	}
	var shims []shimProc
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && p.ID == "boot" {
			shims = append(shims, p)
		}
	}
	if len(shims) != 1 {
		t.Fatalf("want one shim process for the task, found %v", shims)
	}

	if _, err := task.Delete(te.ctx, client.WithProcessKill); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := testkit.WaitPidExit(shims[0].PID, shimExitGrace); err != nil {
		t.Fatalf("shim did not exit after its only task was deleted: %v", err)
	}
	if !socketGone(res.Address) {
		t.Fatalf("shim left its socket %s behind", res.Address)
	}
}

// TestStartProtocolBootstrapByHand: the bootstrap start action answers with a
// BootstrapResult protobuf, serves task v3 on it, and exits on Shutdown,
// removing its socket.
func TestStartProtocolBootstrapByHand(t *testing.T) {
	te := newTestEnv(t)
	s, res := te.startBootstrapShim("boot")
	if res.Version != 3 || res.Protocol != "ttrpc" {
		t.Fatalf("BootstrapResult version %d protocol %q: want 3 and ttrpc", res.Version, res.Protocol)
	}
	if !strings.HasPrefix(res.Address, "unix://"+te.h.SocketDir+"/") {
		t.Fatalf("address %q is not in the requested socket dir %s", res.Address, te.h.SocketDir)
	}
	checkConnectAndShutdown(t, s)
}

// TestStartProtocolLegacyByHand: the start action before the bootstrap
// protocol: stdin holds the runtime options as a protobuf Any, stdout is JSON.
func TestStartProtocolLegacyByHand(t *testing.T) {
	te := newTestEnv(t)
	dir, logBuf := te.handBundle("legacy", minimalSpec("true"))
	s := &handShim{te: te, id: "legacy", bundle: dir, log: logBuf}
	t.Cleanup(s.cleanup)
	stdin, err := legacyOptions()
	if err != nil {
		t.Fatal(err)
	}
	out, err := te.runShim(dir, stdin, te.startFlags("legacy")...)
	if err != nil {
		t.Fatalf("legacy start: %v", err)
	}
	var res struct {
		Version  int    `json:"version"`
		Address  string `json:"address"`
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("legacy start printed %q, want JSON {\"version\":3,\"address\":\"unix://...\",\"protocol\":\"ttrpc\"}: %v", out, err)
	}
	if res.Version != 3 || res.Protocol != "ttrpc" || !strings.HasPrefix(res.Address, "unix://") {
		t.Fatalf("legacy start printed %s: want version 3, protocol ttrpc, a unix:// address", out)
	}
	s.address = res.Address
	s.dial()
	checkConnectAndShutdown(t, s)
}

func checkConnectAndShutdown(t *testing.T, s *handShim) {
	t.Helper()
	pid := int(s.connect().ShimPid)
	if err := s.shutdown(s.te.ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := testkit.WaitPidExit(pid, shimExitGrace); err != nil {
		t.Fatalf("shim did not exit after Shutdown: %v", err)
	}
	if !socketGone(s.address) {
		t.Fatalf("shim left its socket %s behind after Shutdown", s.address)
	}
}

// TestShimDeleteAction: `delete` in a bundle whose shim is gone reports the
// container as killed (137) in a task DeleteResponse protobuf.
func TestShimDeleteAction(t *testing.T) {
	te := newTestEnv(t)
	dir, _ := te.handBundle("gone", minimalSpec("true"))
	out, err := te.runShim(dir, nil, "-namespace", te.ns, "-id", "gone", "-address", te.h.Address,
		"-publish-binary", te.h.s.containerd(), "-bundle", dir, "-debug", "delete")
	if err != nil {
		t.Fatalf("delete action: %v", err)
	}
	var resp taskv3.DeleteResponse
	if err := proto.Unmarshal(out, &resp); err != nil {
		t.Fatalf("delete action printed %q, not a DeleteResponse protobuf: %v", out, err)
	}
	if resp.ExitStatus != 137 {
		t.Fatalf("DeleteResponse exit status %d, want 137", resp.ExitStatus)
	}
	if resp.ExitedAt == nil {
		t.Errorf("DeleteResponse has no exited_at")
	}
}

func TestShimVersionFlag(t *testing.T) {
	te := newTestEnv(t)
	out, err := te.runShim(t.TempDir(), nil, "-v")
	if err != nil {
		t.Fatalf("-v: %v", err)
	}
	if !regexp.MustCompile(`(?i)version`).Match(out) || !regexp.MustCompile(`\d+\.\d+`).Match(out) {
		t.Fatalf("-v printed %q, want a version line", out)
	}
}

func TestShimInfoFlag(t *testing.T) {
	te := newTestEnv(t)
	out, err := te.runShim(t.TempDir(), nil, "-info")
	if err != nil {
		t.Fatalf("-info: %v", err)
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		t.Fatalf("-info printed %q, not a RuntimeInfo protobuf: %v", out, err)
	}
	if info.Name != "io.containerd.runc.v2" {
		t.Fatalf("RuntimeInfo name %q, want io.containerd.runc.v2", info.Name)
	}
}

// TestRuncEnvironment: runc inherits nothing the shim machinery added to
// the shim's environment: no GOMAXPROCS (containerd gives every shim
// command one, the shim gives its server another, and runc is 10-15% slower
// with fewer Ps than CPUs), no ready-pipe descriptor; whether the server or
// the delete action runs it. A wrapper records runc's environment.
func TestRuncEnvironment(t *testing.T) {
	te := newTestEnv(t)
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "runc-wrapper")
	script := fmt.Sprintf("#!/bin/sh\n{ env; echo \"ARGS=$*\"; } > %s/env.$$\nexec %s \"$@\"\n", dir, te.h.s.runc())
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := te.containerWith("wrapped", []client.NewContainerOpts{
		client.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: wrapper}),
	}, oci.WithProcessArgs("sleep", "1000"))
	task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	te.destroyTask(task)
	dumps, _ := filepath.Glob(filepath.Join(dir, "env.*"))
	if len(dumps) < 3 { // create, start, delete at least
		t.Fatalf("runc wrapper ran %d times, want create, start and delete", len(dumps))
	}
	for _, d := range dumps {
		raw, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(kv, "GOMAXPROCS=") || strings.HasPrefix(kv, "SHIM_READY_FD=") {
				t.Errorf("runc ran with %s (%s)", kv, runcArgs(raw))
			}
		}
	}
}

// runcArgs is the ARGS= line of a wrapper's dump.
func runcArgs(dump []byte) string {
	for _, l := range strings.Split(string(dump), "\n") {
		if a, ok := strings.CutPrefix(l, "ARGS="); ok {
			return a
		}
	}
	return "?"
}
