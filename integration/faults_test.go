package integration

import (
	"oomshim/testkit"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestHangingRunc: runc hanging in create, start, exec, kill or delete of
// one container. The call fails by the caller's deadline (containerd's,
// passed on to the shim) with that deadline's error, the hanging runc is
// killed, and the other container of the same shim (one group) is served
// meanwhile: an exec in it runs to its end while the stuck call waits.
// Afterwards the stuck container can still be deleted and the namespace
// is left clean.
func TestHangingRunc(t *testing.T) {
	for i, op := range []string{"create", "start", "exec", "kill", "delete"} {
		t.Run(op, func(t *testing.T) {
			te := newTestEnv(t)
			dir := t.TempDir()
			// A unique sleep names the hanging runc among the processes.
			marker := fmt.Sprint(3600 + i)
			wrapper := filepath.Join(dir, "runc-hang")
			script := fmt.Sprintf(`#!/bin/sh
seen=0; hit=0
for a in "$@"; do [ "$a" = %q ] && seen=1; [ "$a" = stuck ] && hit=1; done
if [ $seen = 1 ] && [ $hit = 1 ] && mkdir %q 2>/dev/null; then exec sleep %s; fi
exec %s "$@"
`, op, filepath.Join(dir, "hung"), marker, te.h.s.runc())
			if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			group := oci.WithAnnotations(map[string]string{"io.containerd.runc.v2.group": "hang"})
			rt := te.runtime(&options.Options{BinaryName: wrapper})
			ok := te.containerWith("ok", []client.NewContainerOpts{rt}, group, oci.WithProcessArgs("sleep", "1000"))
			okTask, _ := te.startTask(ok, cio.NullIO)
			stuck := te.containerWith("stuck", []client.NewContainerOpts{rt}, group, oci.WithProcessArgs("sleep", "1000"))

			var task client.Task
			if op != "create" {
				task, _ = te.startTaskOrCreate(stuck, op != "start")
			}
			// The stuck call, bounded by a deadline of its own.
			const deadline = 5 * time.Second
			ctx, cancel := context.WithTimeout(te.ctx, deadline)
			defer cancel()
			stuckDone := make(chan error, 1)
			go func() {
				var err error
				switch op {
				case "create":
					task, err = stuck.NewTask(ctx, cio.NullIO)
				case "start":
					err = task.Start(ctx)
				case "exec":
					var p client.Process
					if p, err = task.Exec(ctx, "x", te.processSpec(stuck, "true"), cio.NullIO); err == nil {
						err = p.Start(ctx)
					}
				case "kill":
					err = task.Kill(ctx, unix.SIGTERM)
				case "delete":
					if err = task.Kill(te.ctx, unix.SIGKILL); err == nil {
						if ch, werr := task.Wait(te.ctx); werr == nil {
							<-ch
						}
						_, err = task.Delete(ctx)
					}
				}
				stuckDone <- err
			}()
			// Meanwhile the shim serves the group's other container.
			waitFor(t, filepath.Join(dir, "hung"))
			out := newSyncBuffer()
			_, exitCh := te.startSpec(okTask, "meanwhile", te.processSpec(ok, "echo", "served"), te.io(nil, out, io.Discard))
			select {
			case st := <-exitCh:
				if st.ExitCode() != 0 {
					t.Errorf("exec in the other container exited %d", st.ExitCode())
				}
			case err := <-stuckDone:
				t.Fatalf("the stuck %s returned (%v) before the other container's exec ended", op, err)
			}
			err := <-stuckDone
			if err == nil {
				t.Fatalf("%s with runc hanging succeeded", op)
			}
			if !errdefs.IsDeadlineExceeded(err) && !strings.Contains(err.Error(), "deadline exceeded") {
				t.Errorf("%s: %v; want the deadline's error", op, err)
			}
			if err := waitNoProcess(te.ctx, "sleep\x00"+marker); err != nil {
				t.Errorf("the hanging runc of %s was not killed: %v", op, err)
			}
			t.Logf("%s: %v", op, err)
		})
	}
}

// startTaskOrCreate creates the container's task, started unless created
// only is asked.
func (te *testEnv) startTaskOrCreate(c client.Container, start bool) (client.Task, <-chan client.ExitStatus) {
	te.t.Helper()
	if start {
		return te.startTask(c, cio.NullIO)
	}
	return te.newTask(c, cio.NullIO), nil
}

// waitFor waits until path exists, for at most a minute.
func waitFor(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitNoProcess waits until no process's command line contains cmdline.
func waitNoProcess(ctx context.Context, cmdline string) error {
	for {
		found := ""
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && strings.Contains(string(data), cmdline) {
				found = e.Name()
			}
		}
		if found == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pid %s still runs: %w", found, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestFullRuncRoot: runc's state root (the runtime option Root) on a full
// filesystem. Create fails with runc's "no space left on device", and
// nothing is left: no runc state, mount, shim or bundle.
func TestFullRuncRoot(t *testing.T) {
	te := newTestEnv(t)
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	fill, err := os.Create(filepath.Join(root, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := fill.Write(make([]byte, 4096)); err != nil {
			break // ENOSPC
		}
	}
	fill.Close()
	c := te.containerWith("full", []client.NewContainerOpts{te.runtime(&options.Options{Root: root})}, oci.WithProcessArgs("true"))
	task, err := c.NewTask(te.ctx, cio.NullIO)
	if err == nil {
		te.destroyTask(task)
		t.Fatal("a task was created with runc's state root full")
	}
	if !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("create with a full runc root: %v; want runc's no space left on device", err)
	}
	t.Logf("create: %v", err)
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
	if ids, err := testkit.RuncContainers(te.h.s.runc(), filepath.Join(root, te.ns)); err != nil || len(ids) > 0 {
		t.Errorf("runc still knows %v in the full root (%v)", ids, err)
	}
}

// heldCreate starts creating the task of a new container id whose
// createRuntime hook holds `runc create` (the init exists, its cgroup and
// runc's state too, nothing is started) until release is called. It
// returns once runc is in the hook; created gets NewTask's result.
func (te *testEnv) heldCreate(id string, sopts ...oci.SpecOpts) (c client.Container, created <-chan error, release func()) {
	te.t.Helper()
	dir := te.t.TempDir()
	inHook, releaseFile := filepath.Join(dir, "in-hook"), filepath.Join(dir, "release")
	hook := oci.SpecOpts(func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		s.Hooks.CreateRuntime = append(s.Hooks.CreateRuntime, specs.Hook{
			Path: "/bin/sh",
			Args: []string{"sh", "-c", fmt.Sprintf("touch %q; while [ ! -e %q ]; do sleep 0.02; done", inHook, releaseFile)},
		})
		return nil
	})
	c = te.containerWith(id, nil, append([]oci.SpecOpts{oci.WithProcessArgs("sleep", "1000"), hook}, sopts...)...)
	release = func() {
		if err := os.WriteFile(releaseFile, nil, 0o644); err != nil {
			te.t.Errorf("release the hook: %v", err)
		}
	}
	te.t.Cleanup(release) // the hook exits even if the test failed early
	done := make(chan error, 1)
	go func() {
		task, err := c.NewTask(te.ctx, cio.NullIO)
		if err == nil {
			te.destroyTask(task)
			err = fmt.Errorf("the task was created")
		}
		done <- err
	}()
	select {
	case err := <-done:
		te.t.Fatalf("create %s returned before its hook ran: %v", id, err)
	default:
	}
	waitFor(te.t, inHook)
	return c, done, release
}

// runcCreateOf finds the `runc create` process of container id.
func runcCreateOf(id string) (int, error) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if len(args) > 2 && filepath.Base(args[0]) == "runc" && slices.Contains(args, "create") && args[len(args)-1] == id {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no runc create of %s", id)
}

// TestRuncKilledMidCreate: `runc create` SIGKILLed while it runs the
// container's createRuntime hook (the init process, its cgroup and runc's
// state exist, the container is not yet created). Create fails with a
// clear error and nothing is left: no runc state, cgroup, mount, bundle
// or shim; the runc init it left behind is gone too.
func TestRuncKilledMidCreate(t *testing.T) {
	te := newTestEnv(t)
	_, created, release := te.heldCreate("victim")
	pid, err := runcCreateOf("victim")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	release()
	err = <-created
	t.Logf("create: %v", err)
	if !strings.Contains(err.Error(), "signal: killed") && !strings.Contains(err.Error(), "runc") {
		t.Errorf("create with runc killed: %v; want runc's failure named", err)
	}
	if err := waitNoProcess(te.ctx, "runc\x00init"); err != nil {
		t.Errorf("runc init left behind: %v", err)
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
}

// TestShimKilledDuringCreate: the shim SIGKILLed while `runc create` of its
// container is running (in the createRuntime hook). Create fails;
// containerd's cleanup (the shim binary's `delete` action) leaves no runc
// state, cgroup, mount, bundle, socket or process of the container.
func TestShimKilledDuringCreate(t *testing.T) {
	te := newTestEnv(t)
	_, created, release := te.heldCreate("orphan")
	var shim testkit.ShimProcess
	for _, p := range testkit.ShimProcesses(te.h.Address, te.h.shimPath) {
		if p.NS == te.ns && p.Action == "" {
			shim = p
		}
	}
	if shim.PID == 0 {
		t.Fatal("no shim server for the container")
	}
	socket := shimSocket(t, te.h.State, te.ns, "orphan")
	if err := unix.Kill(shim.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-created
	release()
	t.Logf("create: %v", err)
	if err := testkit.WaitPidExit(shim.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := waitNoProcess(te.ctx, "runc\x00init"); err != nil {
		t.Errorf("runc init left behind: %v", err)
	}
	if err := waitNoProcess(te.ctx, "\x00create\x00"); err != nil {
		t.Errorf("runc create left behind: %v", err)
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the shim's socket %s is left (%v)", socket, err)
	}
}

// shimSocket reads the socket path of container id's shim from the
// bundle's bootstrap.json.
func shimSocket(t *testing.T, state, ns, id string) string {
	t.Helper()
	path := filepath.Join(state, "io.containerd.runtime.v2.task", ns, id, "bootstrap.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var boot struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(data, &boot); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return strings.TrimPrefix(boot.Address, "unix://")
}

// TestFullBundle: the bundle's filesystem fills up while `runc create`
// runs (a runc wrapper fills it first; the bundles of the test's namespace
// are on a small tmpfs of their own). Create fails with an error that
// names the full filesystem, and nothing is left: no runc state, cgroup,
// rootfs mount, bundle or shim.
func TestFullBundle(t *testing.T) {
	te := newTestEnv(t)
	nsDir := filepath.Join(te.h.State, "io.containerd.runtime.v2.task", te.ns)
	if err := os.MkdirAll(nsDir, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", nsDir, "tmpfs", 0, "size=1m,mode=0711"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(nsDir, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	wrapper := filepath.Join(t.TempDir(), "runc-fill")
	script := fmt.Sprintf(`#!/bin/sh
b=; prev=; create=0
for a in "$@"; do [ "$prev" = --bundle ] && b=$a; [ "$a" = create ] && create=1; prev=$a; done
if [ $create = 1 ] && [ -n "$b" ]; then dd if=/dev/zero of="$b/fill" bs=4k 2>/dev/null; fi
exec %s "$@"
`, te.h.s.runc())
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := te.containerWith("full", []client.NewContainerOpts{te.runtime(&options.Options{BinaryName: wrapper})}, oci.WithProcessArgs("true"))
	task, err := c.NewTask(te.ctx, cio.NullIO)
	if err == nil {
		te.destroyTask(task)
		t.Fatal("a task was created with its bundle's filesystem full")
	}
	t.Logf("create: %v", err)
	if !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("create with a full bundle: %v; want no space left on device named", err)
	}
	var problems []string
	for _, p := range te.h.leaksIn(te.ns) {
		if p != "leaked mount "+nsDir { // the test's own tmpfs
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
}
