package integration

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestBadContainerIDsViaContainerd: containerd rejects such IDs itself; no
// shim may have been started for them.
func TestBadContainerIDsViaContainerd(t *testing.T) {
	te := newTestEnv(t)
	spec := &oci.Spec{
		Version: "1.2.0",
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs"},
	}
	for _, id := range []string{"a/b", "../x", "..", "x/../../y"} {
		c, err := te.c.NewContainer(te.ctx, id, client.WithSpec(spec))
		if err == nil {
			_ = c.Delete(te.ctx, client.WithSnapshotCleanup)
			t.Errorf("container id %q was accepted", id)
			continue
		}
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("container id %q: %v, want InvalidArgument", id, err)
		}
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
}

// TestBadInputDirect feeds bad requests to a hand-started shim over ttrpc:
// each must fail with the right error code, and the shim must survive them.
func TestBadInputDirect(t *testing.T) {
	te := newTestEnv(t)
	s, _ := te.startBootstrapShim("victim")
	s.connect()

	native := func(err error) error { return errgrpc.ToNative(err) }
	alive := func(t *testing.T, after string) {
		t.Helper()
		if _, err := s.task.Connect(te.ctx, &taskv3.ConnectRequest{ID: s.id}); err != nil {
			t.Fatalf("shim no longer answers Connect after %s: %v", after, err)
		}
	}
	wantCode := func(t *testing.T, what string, err error, codes ...func(error) bool) {
		t.Helper()
		if err == nil {
			t.Errorf("%s succeeded", what)
			return
		}
		if !errorIs(native(err), codes...) {
			t.Errorf("%s: %v (code %v)", what, err, codeOf(native(err)))
		}
	}

	t.Run("unknown id", func(t *testing.T) {
		_, err := s.task.State(te.ctx, &taskv3.StateRequest{ID: "nope"})
		wantCode(t, "State of an unknown id, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.Kill(te.ctx, &taskv3.KillRequest{ID: "nope", Signal: 9})
		wantCode(t, "Kill of an unknown id, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.Delete(te.ctx, &taskv3.DeleteRequest{ID: "nope"})
		wantCode(t, "Delete of an unknown id, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.State(te.ctx, &taskv3.StateRequest{ID: "victim", ExecID: "nope"})
		wantCode(t, "State of an unknown exec of an unknown task, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.Pause(te.ctx, &taskv3.PauseRequest{ID: "nope"})
		wantCode(t, "Pause of an unknown id, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.Resume(te.ctx, &taskv3.ResumeRequest{ID: "nope"})
		wantCode(t, "Resume of an unknown id, want NotFound", err, errdefs.IsNotFound)
		_, err = s.task.Update(te.ctx, &taskv3.UpdateTaskRequest{ID: "nope"})
		wantCode(t, "Update of an unknown id, want NotFound", err, errdefs.IsNotFound)
		alive(t, "requests for unknown ids")
	})

	t.Run("traversal id", func(t *testing.T) {
		for _, id := range []string{"../x", "a/b", ".."} {
			_, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{ID: id, Bundle: s.bundle})
			wantCode(t, "Create with id "+id+", want InvalidArgument or FailedPrecondition", err,
				errdefs.IsInvalidArgument, errdefs.IsFailedPrecondition)
			alive(t, "Create with id "+id)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(s.bundle), "..", "x")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Create with id ../x made something outside the bundle dir: %v", err)
		}
	})

	t.Run("missing bundle", func(t *testing.T) {
		_, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{ID: "nobundle", Bundle: filepath.Join(te.h.handDir, "does-not-exist")})
		wantCode(t, "Create with a missing bundle, want InvalidArgument or FailedPrecondition", err,
			errdefs.IsInvalidArgument, errdefs.IsFailedPrecondition)
		alive(t, "Create with a missing bundle")
	})

	t.Run("malformed config.json", func(t *testing.T) {
		dir, _ := te.handBundle("malformed", []byte(`{"ociVersion": "1.2.0", "process": {`))
		_, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{ID: "malformed", Bundle: dir})
		wantCode(t, "Create with a malformed config.json, want InvalidArgument or FailedPrecondition", err,
			errdefs.IsInvalidArgument, errdefs.IsFailedPrecondition)
		alive(t, "Create with a malformed config.json")
		if ids, _ := te.h.runcContainers(te.ns); len(ids) > 0 {
			t.Errorf("failed Create left runc containers %v", ids)
		}
	})

	t.Run("config.json runc rejects", func(t *testing.T) {
		// Valid JSON with a process: the shim's own check passes and runc's
		// spec decoding refuses it.
		dir, _ := te.handBundle("badtype", []byte(`{"ociVersion": "1.2.0", "process": {"args": ["true"], "cwd": "/"}, "root": {"path": "rootfs"}, "mounts": 5}`))
		_, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{ID: "badtype", Bundle: dir})
		if err == nil {
			t.Fatal("Create with mounts: 5 succeeded")
		}
		if !strings.Contains(err.Error(), "runc") {
			t.Errorf("Create with mounts: 5: %v, want runc's error", err)
		}
		alive(t, "Create with a config.json runc rejects")
		if ids, _ := te.h.runcContainers(te.ns); len(ids) > 0 {
			t.Errorf("failed Create left runc containers %v", ids)
		}
	})

	checkConnectAndShutdown(t, s)
}

// codeOf names the errdefs class of err, for failure messages.
func codeOf(err error) string {
	for name, is := range map[string]func(error) bool{
		"NotFound": errdefs.IsNotFound, "InvalidArgument": errdefs.IsInvalidArgument,
		"FailedPrecondition": errdefs.IsFailedPrecondition, "AlreadyExists": errdefs.IsAlreadyExists,
		"NotImplemented": errdefs.IsNotImplemented, "Unavailable": errdefs.IsUnavailable,
		"Canceled": errdefs.IsCanceled, "DeadlineExceeded": errdefs.IsDeadlineExceeded,
		"Internal": errdefs.IsInternal, "Unknown": errdefs.IsUnknown,
	} {
		if is(err) {
			return name
		}
	}
	return "unclassified"
}

// TestMissingRunc: runtime options naming a runc that does not exist make the
// task's creation fail clearly and leave nothing behind.
func TestMissingRunc(t *testing.T) {
	te := newTestEnv(t)
	c := te.containerWith("norunc", []client.NewContainerOpts{
		te.runtime(&options.Options{BinaryName: "/nonexistent/runc"}),
	}, oci.WithProcessArgs("true"))
	task, err := c.NewTask(te.ctx, te.io(nil, io.Discard, io.Discard))
	if err == nil {
		te.destroyTask(task)
		t.Fatalf("task created with runc binary /nonexistent/runc")
	}
	if !strings.Contains(err.Error(), "/nonexistent/runc") {
		t.Errorf("error %q does not name the missing runc binary", err)
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("failed task creation left behind: %s", strings.Join(problems, "; "))
	}
}

// TestFailingRunc: runc refuses a process whose binary does not exist; the
// error carries runc's text and nothing is left behind.
func TestFailingRunc(t *testing.T) {
	te := newTestEnv(t)
	c := te.container("noexec", "/nonexistent-binary")
	task, err := c.NewTask(te.ctx, te.io(nil, io.Discard, io.Discard))
	if err == nil {
		err = task.Start(te.ctx)
		te.destroyTask(task)
	}
	if err == nil {
		t.Fatalf("a container running /nonexistent-binary was created and started")
	}
	if !strings.Contains(err.Error(), "nonexistent-binary") || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("error %q does not carry runc's message about /nonexistent-binary", err)
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("failed task left behind: %s", strings.Join(problems, "; "))
	}
}
