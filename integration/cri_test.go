package integration

import (
	"oomshim/testkit"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	criNamespace = "k8s.io" // where CRI keeps its images and containers
	pauseImage   = "oomshim.test/pause:1"
)

// criEnv is a private containerd serving CRI, our shim as runc's.
type criEnv struct {
	*testkit.Containerd
	rt     runtimeapi.RuntimeServiceClient
	parent string // the pods' CgroupParent: a path, or a slice under systemd
}

// startCRI starts a containerd with CRI on (the harness's has it off),
// imports the test image and a pause image derived from it.
func startCRI(t *testing.T, te *testEnv) *criEnv {
	t.Helper()
	parent := te.h.criCgroupParent("cri")
	c := te.privateContainerd("oomshim-cri-", "the CRI test",
		&testkit.CRIOptions{SandboxImage: pauseImage, SystemdCgroup: te.h.systemd()}, strings.TrimPrefix(parent, "/"))
	e := &criEnv{Containerd: c, parent: parent}
	ctx := namespaces.WithNamespace(te.ctx, criNamespace)
	img, err := c.Import(ctx, te.h.s.imageTar)
	if err != nil {
		t.Fatal(err)
	}
	if err := derivePause(ctx, c.Client, img); err != nil {
		t.Fatalf("pause image: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	return e
}

// derivePause stores pauseImage: img whose command sleeps forever, so a
// pod sandbox stays up.
func derivePause(ctx context.Context, cl *client.Client, img client.Image) error {
	// A lease keeps the new blobs from the garbage collector until the
	// image record refers to them.
	ctx, done, err := cl.WithLease(ctx)
	if err != nil {
		return err
	}
	defer done(context.WithoutCancel(ctx))
	cs := cl.ContentStore()
	var m ocispec.Manifest
	if err := readJSON(ctx, cs, img.Target(), &m); err != nil {
		return err
	}
	var cfg ocispec.Image
	if err := readJSON(ctx, cs, m.Config, &cfg); err != nil {
		return err
	}
	cfg.Config.Cmd = []string{"sleep", "2147483647"}
	_, err = storeImage(ctx, cl, pauseImage, img.Target().MediaType, m, cfg)
	return err
}

// storeImage writes cfg and the manifest m (with m.Config set to cfg) to
// the content store, names the image name and unpacks it. The caller holds
// a lease until the image record exists.
func storeImage(ctx context.Context, cl *client.Client, name, mediaType string, m ocispec.Manifest, cfg ocispec.Image) (client.Image, error) {
	cs := cl.ContentStore()
	cfgDesc, err := writeJSON(ctx, cs, m.Config.MediaType, cfg, nil)
	if err != nil {
		return nil, err
	}
	m.Config = cfgDesc
	refs := map[string]string{"containerd.io/gc.ref.content.config": cfgDesc.Digest.String()}
	for i, l := range m.Layers {
		refs[fmt.Sprintf("containerd.io/gc.ref.content.l.%d", i)] = l.Digest.String()
	}
	manDesc, err := writeJSON(ctx, cs, mediaType, m, refs)
	if err != nil {
		return nil, err
	}
	created, err := cl.ImageService().Create(ctx, images.Image{Name: name, Target: manDesc})
	if err != nil {
		return nil, err
	}
	stored := client.NewImage(cl, created)
	return stored, stored.Unpack(ctx, "")
}

func readJSON(ctx context.Context, cs content.Store, desc ocispec.Descriptor, v any) error {
	b, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func writeJSON(ctx context.Context, cs content.Store, mediaType string, v any, labels map[string]string) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	err = content.WriteBlob(ctx, cs, desc.Digest.String(), bytes.NewReader(b), desc, content.WithLabels(labels))
	return desc, err
}

// waitExited polls the container's CRI status (as kubelet's PLEG does)
// until it has exited.
func (e *criEnv) waitExited(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	for {
		st, err := e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return nil, err
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st.Status, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("container %s still %s: %w", id, st.Status.State, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitInitialized waits until CRI answers again after a containerd
// restart: containerd serves before CRI has recovered its pods and
// containers, and until then every CRI call fails with Unavailable
// ("server is not initialized yet"); kubelet retries them.
func (e *criEnv) waitInitialized(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := e.rt.Status(ctx, &runtimeapi.StatusRequest{})
		if status.Code(err) != codes.Unavailable {
			return time.Since(start), err
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("CRI not initialized after a minute: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitReason waits until the container has exited with reason, or for a
// minute (a hang guard: the shims' events reach a restarted containerd
// within seconds), and returns its last status.
func (e *criEnv) waitReason(ctx context.Context, id, reason string) (*runtimeapi.ContainerStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := e.waitExited(ctx, id)
	for err == nil && st.Reason != reason {
		select {
		case <-ctx.Done():
			return st, nil
		case <-time.After(50 * time.Millisecond):
		}
		var r *runtimeapi.ContainerStatusResponse
		if r, err = e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id}); err == nil {
			st = r.Status
		}
	}
	return st, err
}

// criPod is a host-network pod sandbox.
type criPod struct {
	e       *criEnv
	id      string
	cfg     *runtimeapi.PodSandboxConfig
	removed bool
	started []string // IDs of the containers started in it
}

// runPod starts a host-network pod sandbox; it is removed at cleanup unless
// the test removed it.
func (e *criEnv) runPod(t *testing.T, te *testEnv, name string) *criPod {
	t.Helper()
	return e.runPodWith(t, te, name, nil)
}

// runPodWith is runPod with the sandbox's config changed by edit first.
func (e *criEnv) runPodWith(t *testing.T, te *testEnv, name string, edit func(*runtimeapi.PodSandboxConfig)) *criPod {
	t.Helper()
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: name + "-" + te.h.token, Namespace: "default"},
		LogDirectory: t.TempDir(),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: e.parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	if edit != nil {
		edit(cfg)
	}
	r, err := e.rt.RunPodSandbox(te.ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	p := &criPod{e: e, id: r.PodSandboxId, cfg: cfg}
	t.Cleanup(func() {
		if p.removed {
			return
		}
		ctx, cancel := te.cleanupCtx()
		defer cancel()
		e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
		e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
	})
	return p
}

// remove stops and removes the pod, then checks that its shim ended.
func (p *criPod) remove(t *testing.T, te *testEnv) {
	t.Helper()
	if _, err := p.e.rt.StopPodSandbox(te.ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if _, err := p.e.rt.RemovePodSandbox(te.ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	p.removed = true
	p.checkRemoved(t, te)
}

// removeRetrying is remove as kubelet does it after the pod's shim died:
// containerd cleans up after a dead shim in the background, and until it
// has, deleting the sandbox's task fails (ttrpc: closed); kubelet retries.
func (p *criPod) removeRetrying(t *testing.T, te *testEnv, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for try := 1; ; try++ {
		if try > 1 {
			t.Logf("remove pod: try %d", try)
		}
		_, err := p.e.rt.StopPodSandbox(te.ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
		if err == nil {
			_, err = p.e.rt.RemovePodSandbox(te.ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("remove pod, retried for %s: %v", timeout, err)
		}
		select {
		case <-te.ctx.Done():
			t.Fatalf("remove pod: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	p.removed = true
	p.checkRemoved(t, te)
}

// checkRemoved checks that a removed pod's scopes and shim are gone.
func (p *criPod) checkRemoved(t *testing.T, te *testEnv) {
	t.Helper()
	if te.h.systemd() {
		// systemd removes a scope once its processes are gone.
		for _, id := range append([]string{p.id}, p.started...) {
			if err := waitGone(te.ctx, p.scopeDir(id)); err != nil {
				t.Errorf("scope of %s left after the pod was removed: %v", id, err)
			}
		}
	}
	for _, sp := range testkit.ShimProcesses(p.e.Address, te.h.shimPath) {
		if sp.ID != p.id { // another pod's
			continue
		}
		if err := testkit.WaitPidExit(sp.PID, 10*time.Second); err != nil {
			t.Errorf("pod shim still running after the pod was removed: %s", sp)
		}
	}
}

// startContainer creates and starts a container in the pod.
func (p *criPod) startContainer(t *testing.T, te *testEnv, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	cr, err := p.e.rt.CreateContainer(te.ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		t.Fatalf("create container %s: %v", cfg.Metadata.Name, err)
	}
	p.started = append(p.started, cr.ContainerId)
	if _, err := p.e.rt.StartContainer(te.ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatalf("start container %s: %v", cfg.Metadata.Name, err)
	}
	return cr.ContainerId
}

// scopeDir is the cgroup directory of the systemd scope CRI asks runc for
// a container (or the sandbox) of the pod: cri-containerd-<id>.scope in
// the pod's slice.
func (p *criPod) scopeDir(id string) string {
	return filepath.Join(sliceDir(p.cfg.Linux.CgroupParent), "cri-containerd-"+id+".scope")
}

// expectCgroup fails the test unless the pod's container id (or its
// sandbox) runs in the cgroup CRI was asked for: under the pod's
// CgroupParent, in a scope of its own under systemd.
func (p *criPod) expectCgroup(t *testing.T, te *testEnv, id string) {
	t.Helper()
	ctx := namespaces.WithNamespace(te.ctx, criNamespace)
	c, err := p.e.Client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("load container %s: %v", id, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of %s: %v", id, err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	var want string
	if te.h.systemd() {
		want = strings.TrimPrefix(p.scopeDir(id), "/sys/fs/cgroup")
	} else {
		want = p.cfg.Linux.CgroupParent + "/" + id
	}
	// cgroup v2: 0::<path>; v1: one line a hierarchy (runc nests v1
	// cgroups under its caller's where that is not the root): the suffix.
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (parts[2] == want || !te.h.systemd() && strings.HasSuffix(parts[2], want)) {
			return
		}
	}
	t.Errorf("%s runs in cgroups %q, want %s", id, data, want)
}

// TestCRIOOMKilled: what the project is for, seen the way kubelet sees it.
// Through containerd's CRI, pods run side by side (one shim each), and in
// each, containers that exceed their memory limit one after another end
// EXITED with reason OOMKilled and exit code 137, never a bare Error; a
// pod's shim is gone once the pod is removed.
func TestCRIOOMKilled(t *testing.T) {
	const pods, rounds = 2, 4
	mem := requireOOM(t)
	te := newTestEnv(t)
	e := startCRI(t, te)
	resources := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: oomLimit}
	if mem.swapLimit {
		resources.MemorySwapLimitInBytes = oomLimit
	}
	for i := range pods {
		t.Run(fmt.Sprintf("pod%d", i), func(t *testing.T) {
			t.Parallel()
			pod := e.runPod(t, te, fmt.Sprintf("oom-pod%d", i))
			for round := range rounds {
				name := fmt.Sprintf("hog%d", round)
				id := pod.startContainer(t, te, &runtimeapi.ContainerConfig{
					Metadata: &runtimeapi.ContainerMetadata{Name: name},
					Image:    &runtimeapi.ImageSpec{Image: te.h.imageRef},
					Command:  oomHog,
					Linux:    &runtimeapi.LinuxContainerConfig{Resources: resources},
					LogPath:  name + ".log",
				})
				st, err := e.waitExited(te.ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("container %s: %s, reason %s, exit code %d", name, st.State, st.Reason, st.ExitCode)
				if st.Reason != "OOMKilled" || st.ExitCode != 137 {
					t.Errorf("container %s: reason %q, exit code %d; want OOMKilled, 137 (%s)", name, st.Reason, st.ExitCode, st.Message)
				}
				if _, err := e.rt.RemoveContainer(te.ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
					t.Fatalf("remove container %s: %v", name, err)
				}
			}
			pod.remove(t, te)
			if _, err := os.Stat(filepath.Join(pod.cfg.LogDirectory, "hog0.log")); err != nil {
				t.Errorf("no container log from CRI: %v", err)
			}
		})
	}
}

// TestCRIExecSyncUpdateStats: the other calls kubelet makes of a running
// container, through containerd's CRI: ExecSync (exec probes) returns the
// output and exit code, UpdateContainerResources (CPU manager, in-place
// resize) reaches the container's cgroup, ContainerStats reads it.
func TestCRIExecSyncUpdateStats(t *testing.T) {
	te := newTestEnv(t)
	e := startCRI(t, te)
	pod := e.runPod(t, te, "exec-pod")
	id := pod.startContainer(t, te, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
		Image:    &runtimeapi.ImageSpec{Image: te.h.imageRef},
		Command:  []string{"sleep", "1000"},
		Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}},
	})
	pod.expectCgroup(t, te, pod.id)
	pod.expectCgroup(t, te, id)
	execSync := func(cmd ...string) *runtimeapi.ExecSyncResponse {
		t.Helper()
		r, err := e.rt.ExecSync(te.ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
		if err != nil {
			t.Fatalf("exec sync %v: %v", cmd, err)
		}
		return r
	}
	r := execSync("sh", "-c", "echo out; echo err >&2; exit 3")
	if string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" || r.ExitCode != 3 {
		t.Errorf("exec sync: stdout %q, stderr %q, exit code %d; want out, err, 3", r.Stdout, r.Stderr, r.ExitCode)
	}

	const limit = 48 << 20
	if _, err := e.rt.UpdateContainerResources(te.ctx, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: id,
		Linux:       &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: limit},
	}); err != nil {
		t.Fatalf("update container resources: %v", err)
	}
	// The container's own cgroup, as it sees it: v1 or v2 (cgroup namespace).
	r = execSync("sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
	if got := strings.TrimSpace(string(r.Stdout)); got != fmt.Sprint(limit) {
		t.Errorf("memory limit inside the container after the update: %q (%q), want %d", got, r.Stderr, limit)
	}

	stats, err := e.rt.ContainerStats(te.ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("container stats: %v", err)
	}
	if m := stats.GetStats().GetMemory(); m.GetWorkingSetBytes().GetValue() == 0 {
		t.Errorf("container stats without memory working set: %v", stats.GetStats())
	}

	if _, err := e.rt.StopContainer(te.ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatalf("stop container: %v", err)
	}
	pod.remove(t, te)
}

// hogPod runs a pod of n containers that each wait for a trigger file and
// then exceed their memory limit. It returns the containers' IDs and
// their inits' pids, and fire, which makes the trigger file.
func (e *criEnv) hogPod(t *testing.T, te *testEnv, name string, n int) (pod *criPod, ids []string, pids []int, fire func()) {
	t.Helper()
	mem := requireOOM(t)
	trigger := t.TempDir()
	resources := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: oomLimit}
	if mem.swapLimit {
		resources.MemorySwapLimitInBytes = oomLimit
	}
	pod = e.runPod(t, te, name)
	for i := range n {
		name := fmt.Sprintf("hog%d", i)
		ids = append(ids, pod.startContainer(t, te, &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: te.h.imageRef},
			Command:  []string{"sh", "-c", "while [ ! -e /trigger/go ]; do sleep 0.05; done; " + oomHogShell},
			Mounts:   []*runtimeapi.Mount{{HostPath: trigger, ContainerPath: "/trigger"}},
			Linux:    &runtimeapi.LinuxContainerConfig{Resources: resources},
			LogPath:  name + ".log",
		}))
	}
	ctx := namespaces.WithNamespace(te.ctx, criNamespace)
	for _, id := range ids {
		c, err := e.Client.LoadContainer(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, int(task.Pid()))
	}
	fire = func() {
		t.Helper()
		if err := os.WriteFile(filepath.Join(trigger, "go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return pod, ids, pids, fire
}

// TestCRIOOMAcrossContainerdCrash: containerd SIGKILLed while 10
// containers are being OOM-killed (they wait for a trigger file, made
// once containerd is dead), then restarted: the shims' TaskOOM and
// TaskExit reach the new containerd, and CRI reports every container
// EXITED with reason OOMKilled.
func TestCRIOOMAcrossContainerdCrash(t *testing.T) {
	requireOOM(t)
	te := newTestEnv(t)
	e := startCRI(t, te)
	pod, ids, pids, fire := e.hogPod(t, te, "crash-pod", 10)
	e.Stop(0) // SIGKILL
	fire()
	for i, pid := range pids {
		if err := testkit.WaitPidExit(pid, time.Minute); err != nil {
			t.Fatalf("container %s (pid %d) was not OOM-killed while containerd was down: %v", ids[i], pid, err)
		}
	}
	if err := e.Restart(te.ctx, 0); err != nil {
		t.Fatalf("restart containerd: %v", err)
	}
	waited, err := e.waitInitialized(te.ctx)
	if err != nil {
		t.Fatalf("CRI after the restart: %v", err)
	}
	t.Logf("CRI answered %v after containerd served", waited.Round(time.Millisecond))
	exitCodes := map[int32]int{}
	for i, id := range ids {
		st, err := e.waitReason(te.ctx, id, "OOMKilled")
		if err != nil {
			t.Fatalf("container %d: %v", i, err)
		}
		// The exit code is CRI's: its recovery after the crash marks a
		// container whose task it finds stopped 255 (unknown), with
		// either shim (containerd v2.4.2); the reason is the TaskOOM's.
		if st.Reason != "OOMKilled" {
			t.Errorf("container %d: reason %q, exit code %d; want OOMKilled", i, st.Reason, st.ExitCode)
		}
		exitCodes[st.ExitCode]++
	}
	t.Logf("exit codes CRI reports after the crash: %v", exitCodes)
	pod.remove(t, te)
}

// TestCRIShimKilledDuringOOMStorm: a pod's shim SIGKILLed while its 10
// containers are being OOM-killed. CRI shows every container as exited,
// containerd's cleanup after the dead shim (its `delete` action) leaves no
// runc state, mount, socket or process of them, and the pod can be removed.
// Under the systemd driver in the VM, `runc delete --force` of eleven
// containers at once takes longer than the 5 s containerd gives a delete
// action; containerd's own shim then leaves the runc state of most of them.
func TestCRIShimKilledDuringOOMStorm(t *testing.T) {
	requireOOM(t)
	te := newTestEnv(t)
	e := startCRI(t, te)
	pod, ids, pids, fire := e.hogPod(t, te, "storm-pod", 10)
	var shim testkit.ShimProcess
	for _, p := range testkit.ShimProcesses(e.Address, te.h.shimPath) {
		if p.ID == pod.id && p.Action == "" {
			shim = p
		}
	}
	if shim.PID == 0 {
		t.Fatal("no shim server for the pod")
	}
	socket := shimSocket(t, e.State, criNamespace, pod.id)
	fire()
	// The storm has begun once the first container died.
	if err := testkit.WaitPidExit(pids[0], time.Minute); err != nil {
		t.Fatalf("container %s was not OOM-killed: %v", ids[0], err)
	}
	if err := unix.Kill(shim.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for i, id := range ids {
		wctx, cancel := context.WithTimeout(te.ctx, time.Minute)
		st, err := e.waitExited(wctx, id)
		cancel()
		if err != nil {
			t.Fatalf("container %d after the shim was killed: %v", i, err)
		}
		reasons[fmt.Sprintf("%s/%d", st.Reason, st.ExitCode)]++
	}
	t.Logf("CRI after the shim was killed (reason/exit code: containers): %v", reasons)
	for i, pid := range pids {
		if err := testkit.WaitPidExit(pid, time.Minute); err != nil {
			t.Errorf("container %s (pid %d) still runs: %v", ids[i], pid, err)
		}
	}
	pod.removeRetrying(t, te, time.Minute)
	// containerd kills a delete action after 5 s; this shim's cleanup goes
	// on in a process of its own (shim/delete.go), so it may still be
	// finishing here on a loaded machine: what is left after a minute is
	// leaked.
	var left []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		runcIDs, err := testkit.RuncContainers(te.h.s.runc(), filepath.Join(testkit.RuncRoot, criNamespace))
		if err != nil {
			t.Fatal(err)
		}
		left = nil
		for _, id := range append([]string{pod.id}, ids...) {
			if slices.Contains(runcIDs, id) {
				left = append(left, "runc still knows "+id)
			}
		}
		for _, m := range testkit.MountsUnder(filepath.Join(e.State, "io.containerd.runtime.v2.task", criNamespace)) {
			left = append(left, "leaked mount "+m)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, l := range left {
		t.Error(l)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed shim's socket %s is left (%v)", socket, err)
	}
}
