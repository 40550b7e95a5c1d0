package integration

import (
	"syscall"

	"oomshim/testkit"

	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
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
// protocol (stdin holds the runtime options as a protobuf Any), as each
// containerd generation calls it, and the reply that generation reads:
// containerd 2.0-2.2 (MAX_SHIM_VERSION=2, -publish-binary a containerd 2
// binary) JSON version 3; 1.7 (MAX_SHIM_VERSION=2, another binary) JSON
// version 2; 1.6 (no MAX_SHIM_VERSION) the address alone. The server
// answers the task API the reply names.
func TestStartProtocolLegacyByHand(t *testing.T) {
	for _, tc := range []struct {
		name       string
		publish    string // -publish-binary
		maxVersion string // "" for none
		version    int    // 0 for a plain address
	}{
		{"containerd-2.2", "", "2", 3},
		{"containerd-1.7", "/bin/true", "2", 2},
		{"containerd-1.6", "/bin/true", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			te := newTestEnv(t)
			id := "legacy-" + strings.ReplaceAll(tc.name, ".", "-")
			dir, logBuf := te.handBundle(id, minimalSpec("true"))
			s := &handShim{te: te, id: id, bundle: dir, log: logBuf}
			t.Cleanup(s.cleanup)
			stdin, err := legacyOptions()
			if err != nil {
				t.Fatal(err)
			}
			args := te.startFlags(id)
			if tc.publish != "" {
				for i := range args {
					if args[i] == "-publish-binary" {
						args[i+1] = tc.publish
					}
				}
			}
			cmd := te.shimCommand(dir, stdin, args...)
			var env []string
			for _, e := range cmd.Env {
				if !strings.HasPrefix(e, "MAX_SHIM_VERSION=") {
					env = append(env, e)
				}
			}
			if tc.maxVersion != "" {
				env = append(env, "MAX_SHIM_VERSION="+tc.maxVersion)
			}
			cmd.Env = env
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("legacy start: %v; stderr: %s", err, stderr.String())
			}
			if tc.version == 0 {
				if !strings.HasPrefix(string(out), "unix://") || strings.ContainsAny(string(out), "{ \n") {
					t.Fatalf("start printed %q, want the address alone", out)
				}
				s.address = string(out)
			} else {
				var res struct {
					Version  int    `json:"version"`
					Address  string `json:"address"`
					Protocol string `json:"protocol"`
				}
				if err := json.Unmarshal(out, &res); err != nil {
					t.Fatalf("start printed %q, want JSON: %v", out, err)
				}
				if res.Version != tc.version || res.Protocol != "ttrpc" || !strings.HasPrefix(res.Address, "unix://") {
					t.Fatalf("start printed %s: want version %d, protocol ttrpc, a unix:// address", out, tc.version)
				}
				s.address = res.Address
			}
			// containerd 1.x finds the shim again by this file.
			if data, err := os.ReadFile(filepath.Join(dir, "address")); err != nil || string(data) != s.address {
				t.Fatalf("address file: %q, %v; want %q", data, err, s.address)
			}
			s.dial()
			if tc.version != 3 {
				// The task API v2 is served too: Connect through it.
				resp, err := taskv2.NewTTRPCTaskClient(s.client).Connect(te.ctx, &taskv2.ConnectRequest{ID: id})
				if err != nil || resp.ShimPid == 0 {
					t.Fatalf("Connect over the task API v2: %+v, %v", resp, err)
				}
			}
			checkConnectAndShutdown(t, s)
		})
	}
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

// runcWrapper writes a runc that records each call (its environment and
// arguments) in dir and runs the real one.
func runcWrapper(t *testing.T, te *testEnv, dir string) string {
	t.Helper()
	wrapper := filepath.Join(dir, "runc-wrapper")
	script := fmt.Sprintf("#!/bin/sh\n{ env; echo \"ARGS=$*\"; } > %s/env.$$\nexec %s \"$@\"\n", dir, te.h.s.runc())
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}

// wrappedContainer is a sleeping container whose runc is runcWrapper's.
func wrappedContainer(t *testing.T, te *testEnv, dir, id string) client.Container {
	t.Helper()
	return te.containerWith(id, []client.NewContainerOpts{
		te.runtime(&options.Options{BinaryName: runcWrapper(t, te, dir)}),
	}, oci.WithProcessArgs("sleep", "1000"))
}

// runcCalls returns what runcWrapper recorded: one dump per call.
func runcCalls(t *testing.T, dir string) [][]byte {
	t.Helper()
	dumps, _ := filepath.Glob(filepath.Join(dir, "env.*"))
	var out [][]byte
	for _, d := range dumps {
		raw, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, raw)
	}
	return out
}

// checkRuncEnvironment fails t for a call that inherited GOMAXPROCS (given
// by containerd to every shim command, and by the shim to its server; runc
// is 10-15% slower with fewer Ps than CPUs) or the ready-pipe variable.
func checkRuncEnvironment(t *testing.T, calls [][]byte) {
	t.Helper()
	for _, raw := range calls {
		for _, kv := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(kv, "GOMAXPROCS=") || strings.HasPrefix(kv, "SHIM_READY_FD=") {
				t.Errorf("runc ran with %s (%s)", kv, runcArgs(raw))
			}
		}
	}
}

// TestRuncEnvironment: runc, as the server runs it, inherits nothing the
// shim machinery added to the environment.
func TestRuncEnvironment(t *testing.T) {
	te := newTestEnv(t)
	dir := t.TempDir()
	c := wrappedContainer(t, te, dir, "wrapped")
	task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	te.destroyTask(task)
	calls := runcCalls(t, dir)
	if len(calls) < 3 { // create, start, delete at least
		t.Fatalf("runc wrapper ran %d times, want create, start and delete", len(calls))
	}
	checkRuncEnvironment(t, calls)
}

// TestShimKilled: when a shim dies with its container, containerd runs the
// delete action, which force-deletes the container (runc still has its
// state) and reports its init killed; nothing is left behind, and that runc
// call too inherits no GOMAXPROCS.
func TestShimKilled(t *testing.T) {
	te := newTestEnv(t)
	dir := t.TempDir()
	c := wrappedContainer(t, te, dir, "orphan")
	rec := te.recordEvents()
	task, _ := te.startTask(c, te.io(nil, io.Discard, io.Discard))
	var server *shimProc
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && p.Action == "" {
			server = &p
		}
	}
	if server == nil {
		t.Fatal("no shim server for the task")
	}
	if err := syscall.Kill(server.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd publishes the exit from the delete action's answer.
	if _, err := rec.waitFor(te.ctx, "TaskExit of orphan", func(e recordedEvent) bool {
		ev, ok := e.Event.(*eventstypes.TaskExit)
		return ok && ev.ContainerID == "orphan"
	}); err != nil {
		t.Fatal(err)
	}
	for _, e := range rec.snapshot() {
		if ev, ok := e.Event.(*eventstypes.TaskExit); ok && ev.ContainerID == "orphan" && ev.ExitStatus != 137 {
			t.Errorf("TaskExit status %d after the shim was killed, want 137", ev.ExitStatus)
		}
	}
	// containerd dropped the task with its shim; the client's fifos are
	// the client's to remove.
	if _, err := task.Delete(te.ctx); err == nil || !errdefs.IsNotFound(err) {
		t.Errorf("delete of the task after its shim died: %v, want NotFound", err)
	}
	task.IO().Cancel()
	task.IO().Close()
	calls := runcCalls(t, dir)
	forced := false
	for _, raw := range calls {
		forced = forced || strings.Contains(runcArgs(raw), "delete --force orphan")
	}
	if !forced {
		t.Errorf("no runc delete --force orphan among %d runc calls", len(calls))
	}
	checkRuncEnvironment(t, calls)
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("a killed shim left behind: %s", strings.Join(problems, "; "))
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

// TestIdleServerExits: a server that containerd never talks to (started,
// its reply never used: no connection, no request) exits after the idle
// time with its socket removed; here SHIM_IDLE_EXIT=2s stands for the
// default 2 minutes. One that got a request waits the idle time again
// from it. The stock shim's server lives on (the reason for this exit:
// 40 minutes and counting, tried with a containerd that could not use
// the reply).
func TestIdleServerExits(t *testing.T) {
	te := newTestEnv(t)
	const idle = 2 * time.Second
	for _, asked := range []bool{false, true} {
		id := map[bool]string{false: "idle", true: "asked"}[asked]
		dir, logBuf := te.handBundle(id, minimalSpec("true"))
		s := &handShim{te: te, id: id, bundle: dir, log: logBuf}
		t.Cleanup(s.cleanup)
		cmd := te.shimCommand(dir, te.bootstrapParams(id), te.startFlags(id)...)
		cmd.Env = append(cmd.Env, "SHIM_IDLE_EXIT="+idle.String())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		var res bootapi.BootstrapResult
		if err := proto.Unmarshal(out, &res); err != nil {
			t.Fatalf("start %s printed %q: %v", id, out, err)
		}
		s.address = res.Address
		var pid int
		for _, p := range te.h.shimProcesses() {
			if p.NS == te.ns && p.ID == id && p.Action == "" {
				pid = p.PID
			}
		}
		if pid == 0 {
			t.Fatalf("no server for %s", id)
		}
		if asked {
			s.dial()
			s.connect() // a request: the idle time starts again from it
		}
		// Bounded well above the idle time; a hang guard, not a timing.
		if err := testkit.WaitPidExit(pid, idle+30*time.Second); err != nil {
			t.Fatalf("server %s (pid %d) holding no container still runs after %v idle: %v", id, pid, idle, err)
		}
		if !socketGone(res.Address) {
			t.Errorf("server %s exited but left its socket %s", id, res.Address)
		}
		if !strings.Contains(logBuf.String(), "shim exiting") {
			t.Errorf("server %s did not log why it exited:\n%s", id, logBuf.String())
		}
	}
}
