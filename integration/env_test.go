package integration

import (
	"oomshim/testkit"

	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// testTimeout bounds every ordinary test; the stress test sets its own.
const testTimeout = 2 * time.Minute

// testEnv is one test's view of the harness: its own containerd namespace,
// a context bounded in time, and helpers that register their cleanup.
type testEnv struct {
	t     *testing.T
	h     *harness
	c     *client.Client
	ns    string
	ctx   context.Context
	image client.Image
	// logStart is containerd's log size when the test began: what the
	// test's own containers and shims logged comes after it.
	logStart int64
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	return newTestEnvTimeout(t, testTimeout)
}

func newTestEnvTimeout(t *testing.T, timeout time.Duration) *testEnv {
	t.Helper()
	h := requireHarness(t)
	ns := h.newNamespace(t.Name())
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), timeout)
	offset := h.LogOffset()
	// Registered first, so it runs last: after every other cleanup.
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("namespace %s; containerd log since the test started (last 150 lines):\n%s", ns, h.LogSince(offset, 150))
		}
	})
	return &testEnv{t: t, h: h, c: h.Client, ns: ns, ctx: ctx, logStart: offset}
}

// privateContainerd starts a containerd of the test's own beside the
// harness's (with CRI on when cri is set), our shim as runc's. At cleanup,
// after the test's later cleanups, it is stopped and removed with the
// cgroups named cgroups; its log is shown if the test failed.
func (te *testEnv) privateContainerd(prefix, title string, cri *testkit.CRIOptions, cgroups string) *testkit.Containerd {
	te.t.Helper()
	d, err := testkit.Start(te.ctx, testkit.Options{
		Prefix:   prefix,
		Title:    title,
		Shim:     te.h.s.shimBinary,
		ToolsBin: te.h.s.toolsBin,
		LogLevel: "debug",
		CRI:      cri,
	})
	if d != nil {
		te.t.Cleanup(func() {
			if te.t.Failed() {
				te.t.Logf("%s's containerd log:\n%s", title, d.LogSince(0, 100))
			}
			d.Stop(10 * time.Second)
			if err := d.Remove(); err != nil {
				te.t.Errorf("cleanup: %v", err)
			}
			if err := testkit.RemoveNamespaceCgroups(cgroups); err != nil {
				te.t.Errorf("cleanup: %v", err)
			}
		})
	}
	if err != nil {
		te.t.Fatalf("start %s's containerd: %v", title, err)
	}
	return d
}

// cleanupCtx is a fresh context for t.Cleanup work, which runs after the
// test's own context may have expired.
func (te *testEnv) cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), te.ns), 30*time.Second)
}

// Image imports the test image into the test's namespace (once).
func (te *testEnv) Image() client.Image {
	te.t.Helper()
	if te.image == nil {
		img, err := te.h.importInto(te.ctx)
		if err != nil {
			te.t.Fatalf("import test image: %v", err)
		}
		te.image = img
	}
	return te.image
}

// container creates a container running args in the busybox image.
func (te *testEnv) container(id string, args ...string) client.Container {
	te.t.Helper()
	return te.containerWith(id, nil, oci.WithProcessArgs(args...))
}

// containerWith creates a container with extra container and spec options;
// it is deleted, with its snapshot, at cleanup.
func (te *testEnv) containerWith(id string, copts []client.NewContainerOpts, sopts ...oci.SpecOpts) client.Container {
	te.t.Helper()
	img := te.Image()
	// The driver's options first: a test's own options override them.
	driverCopts, driverSopts := te.cgroupOpts(id)
	opts := append(driverCopts,
		client.WithNewSnapshot(id+"-rootfs", img),
		client.WithNewSpec(append(append([]oci.SpecOpts{oci.WithImageConfig(img)}, driverSopts...), sopts...)...),
	)
	c, err := te.c.NewContainer(te.ctx, id, append(opts, copts...)...)
	if err != nil {
		te.t.Fatalf("create container %s: %v", id, err)
	}
	te.t.Cleanup(func() {
		ctx, cancel := te.cleanupCtx()
		defer cancel()
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			te.t.Errorf("cleanup: delete container %s: %v", id, err)
		}
	})
	return c
}

// newTask creates the container's task; at cleanup it is killed and deleted
// unless the test already deleted it.
func (te *testEnv) newTask(c client.Container, creator cio.Creator, opts ...client.NewTaskOpts) client.Task {
	te.t.Helper()
	task, err := c.NewTask(te.ctx, creator, opts...)
	if err != nil {
		te.t.Fatalf("create task %s: %v", c.ID(), err)
	}
	te.t.Cleanup(func() { te.destroyTask(task) })
	return task
}

func (te *testEnv) destroyTask(task client.Task) {
	ctx, cancel := te.cleanupCtx()
	defer cancel()
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		te.t.Errorf("cleanup: delete task %s: %v", task.ID(), err)
	}
}

// io returns a creator whose fifos live in the harness's fifo dir.
func (te *testEnv) io(stdin io.Reader, stdout, stderr io.Writer) cio.Creator {
	return cio.NewCreator(cio.WithStreams(stdin, stdout, stderr), cio.WithFIFODir(te.h.FifoDir))
}

// startTask creates and starts a task and returns it with its exit channel
// (Wait is called before Start, as containerd requires).
func (te *testEnv) startTask(c client.Container, creator cio.Creator) (client.Task, <-chan client.ExitStatus) {
	te.t.Helper()
	task := te.newTask(c, creator)
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		te.t.Fatalf("wait task %s: %v", c.ID(), err)
	}
	if err := task.Start(te.ctx); err != nil {
		te.t.Fatalf("start task %s: %v", c.ID(), err)
	}
	return task, exitCh
}

// waitExit receives an exit status, bounded by the test's context.
func (te *testEnv) waitExit(what string, ch <-chan client.ExitStatus) client.ExitStatus {
	te.t.Helper()
	select {
	case st := <-ch:
		if err := st.Error(); err != nil {
			te.t.Fatalf("%s: exit status error: %v", what, err)
		}
		return st
	case <-te.ctx.Done():
		te.t.Fatalf("%s: no exit before the test's deadline: %v", what, te.ctx.Err())
	}
	return client.ExitStatus{}
}

// waitIO waits until the client has copied all of the process's output,
// i.e. the shim closed its end of the stdout/stderr fifos.
func (te *testEnv) waitIO(what string, p interface{ IO() cio.IO }) {
	te.t.Helper()
	done := make(chan struct{})
	go func() {
		p.IO().Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-te.ctx.Done():
		te.t.Fatalf("%s: output streams never reached EOF: %v", what, te.ctx.Err())
	}
}

// runToExit runs a container to completion and returns its exit code after
// all its output has arrived; the task is deleted.
func (te *testEnv) runToExit(id string, creator cio.Creator, args ...string) uint32 {
	te.t.Helper()
	task, exitCh := te.startTask(te.container(id, args...), creator)
	st := te.waitExit(id, exitCh)
	te.waitIO(id, task)
	if _, err := task.Delete(te.ctx); err != nil {
		te.t.Fatalf("delete task %s: %v", id, err)
	}
	return st.ExitCode()
}

// processSpec derives an exec's process from the container's spec.
func (te *testEnv) processSpec(c client.Container, args ...string) *specs.Process {
	te.t.Helper()
	spec, err := c.Spec(te.ctx)
	if err != nil {
		te.t.Fatalf("spec of %s: %v", c.ID(), err)
	}
	p := *spec.Process
	p.Args = args
	p.Terminal = false
	return &p
}

// ctr runs the ctr binary against the harness's containerd in te's namespace.
func (te *testEnv) ctr(args ...string) ([]byte, error) {
	return te.ctrContext(te.ctx, args...)
}

func (te *testEnv) ctrContext(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"--address", te.h.Address, "--namespace", te.ns}, args...)
	cmd := exec.CommandContext(ctx, te.h.s.ctr(), full...)
	cmd.Env = te.h.Environ()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	return cmd.CombinedOutput()
}

// syncBuffer is an io.Writer safe for the cio copy goroutines, which can
// signal when some content has arrived.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// waitLen waits until at least n bytes were written.
func (b *syncBuffer) waitLen(ctx context.Context, n int) error {
	return b.wait(ctx, func(buf []byte) error {
		if len(buf) >= n {
			return nil
		}
		return fmt.Errorf("have %d of %d bytes", len(buf), n)
	})
}

// waitFor waits until s was written.
func (b *syncBuffer) waitFor(ctx context.Context, s string) error {
	return b.wait(ctx, func(buf []byte) error {
		if bytes.Contains(buf, []byte(s)) {
			return nil
		}
		return fmt.Errorf("no %q in %d bytes", s, len(buf))
	})
}

// wait waits until done, given the content so far, returns nil.
func (b *syncBuffer) wait(ctx context.Context, done func([]byte) error) error {
	for {
		b.mu.Lock()
		err, ch := done(b.buf.Bytes()), b.changed
		b.mu.Unlock()
		if err == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", err, ctx.Err())
		}
	}
}

// errorIs reports whether err satisfies one of the errdefs predicates.
func errorIs(err error, preds ...func(error) bool) bool {
	if err == nil {
		return false
	}
	for _, p := range preds {
		if p(err) {
			return true
		}
	}
	return false
}
