package integration

import (
	"oomshim/testkit"

	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
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
