package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"oomshim/testkit"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// layers is how many layers the many-layer image has: with the overlay
// snapshotter's paths its lowerdir option is far over a page, which
// containerd's mount package shortens and a hand-written mount refused.
const layers = 128

// deriveLayered stores ref: img with layers-1 more layers, layer i adding
// the empty file /layers/<i>, and unpacks it.
func deriveLayered(ctx context.Context, cl *client.Client, img client.Image, ref string) (client.Image, error) {
	ctx, done, err := cl.WithLease(ctx)
	if err != nil {
		return nil, err
	}
	defer done(context.WithoutCancel(ctx))
	cs := cl.ContentStore()
	var m ocispec.Manifest
	if err := readJSON(ctx, cs, img.Target(), &m); err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if err := readJSON(ctx, cs, m.Config, &cfg); err != nil {
		return nil, err
	}
	for i := len(m.Layers); i < layers; i++ {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range []*tar.Header{
			{Name: "layers/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "layers/" + strconv.Itoa(i), Typeflag: tar.TypeReg, Mode: 0o644},
		} {
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		// Uncompressed: the layer's digest is its diff ID.
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(buf.Bytes()), Size: int64(buf.Len())}
		if err := content.WriteBlob(ctx, cs, desc.Digest.String(), bytes.NewReader(buf.Bytes()), desc); err != nil {
			return nil, err
		}
		m.Layers = append(m.Layers, desc)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, desc.Digest)
	}
	return storeImage(ctx, cl, ref, img.Target().MediaType, m, cfg)
}

// countLayers is a command that prints how many /layers files it sees.
var countLayers = []string{"sh", "-c", "ls /layers | wc -l"}

// TestManyLayerImage: an image of 128 layers (an overlay lowerdir list
// several pages long) starts through ctr and through CRI, and the
// container sees every layer.
//
// Writing and unpacking the image twice is most of its time: 64 s in the
// cgroup v2 VM and over the ordinary two minutes in the systemd lane on a
// slow day under TCG, hence a budget of its own.
func TestManyLayerImage(t *testing.T) {
	te := newTestEnvTimeout(t, 6*time.Minute)
	const ref = "oomshim.test/layers:128"
	if _, err := deriveLayered(te.ctx, te.c, te.Image(), ref); err != nil {
		t.Fatalf("derive the %d-layer image: %v", layers, err)
	}
	want := strconv.Itoa(layers - 1)
	out, err := te.ctrRun(te.ctx, ref, "layers-ctr", countLayers...)
	if err != nil {
		t.Fatalf("ctr run: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n") // containerd's warnings first
	if got := lines[len(lines)-1]; got != want {
		t.Errorf("ctr run saw %q layer files, want %s", got, want)
	}

	e := startCRI(t, te)
	ctx := namespaces.WithNamespace(te.ctx, criNamespace)
	img, err := e.Client.GetImage(ctx, te.h.imageRef)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deriveLayered(ctx, e.Client, img, ref); err != nil {
		t.Fatalf("derive the %d-layer image for CRI: %v", layers, err)
	}
	pod := e.runPod(t, te, "layers-pod")
	id := pod.startContainer(t, te, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "layers"},
		Image:    &runtimeapi.ImageSpec{Image: ref},
		Command:  countLayers,
		LogPath:  "layers.log",
	})
	st, err := e.waitExited(te.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 {
		t.Errorf("CRI container: exit code %d (%s), want 0", st.ExitCode, st.Message)
	}
	log, err := os.ReadFile(filepath.Join(pod.cfg.LogDirectory, "layers.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), " F "+want+"\n") {
		t.Errorf("CRI container log %q, want the line %s", log, want)
	}
	pod.remove(t, te)
}

// idmapSupported says whether the kernel can idmap a mount of the
// filesystem that holds dir (tmpfs only from Linux 6.3).
func idmapSupported(dir string) error {
	src, err := os.MkdirTemp(dir, "idmap-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	dst := filepath.Join(src, "target")
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	ns, err := mount.GetUsernsFD("0:100000:65536", "0:100000:65536")
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := mount.IDMapMount(src, dst, int(ns.Fd())); err != nil {
		return err
	}
	return mount.UnmountAll(dst, 0)
}

// TestCRIUserNamespacePod: a Kubernetes user-namespace pod (hostUsers:
// false) runs through CRI: the overlay snapshotter hands the shim an
// overlay with uidmap=/gidmap= options, which must be mounted idmapped.
func TestCRIUserNamespacePod(t *testing.T) {
	te := newTestEnv(t)
	e := startCRI(t, te)
	if err := idmapSupported(e.Root); err != nil {
		t.Skipf("this kernel cannot idmap the filesystem under containerd's root (%s): %v", e.Root, err)
	}
	const hostID, size = 1 << 20, 65536
	userns := &runtimeapi.UserNamespace{
		Mode: runtimeapi.NamespaceMode_POD,
		Uids: []*runtimeapi.IDMapping{{HostId: hostID, ContainerId: 0, Length: size}},
		Gids: []*runtimeapi.IDMapping{{HostId: hostID, ContainerId: 0, Length: size}},
	}
	pod := e.runPodWith(t, te, "userns-pod", func(cfg *runtimeapi.PodSandboxConfig) {
		cfg.Linux.SecurityContext.NamespaceOptions.UsernsOptions = userns
	})
	id := pod.startContainer(t, te, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "userns"},
		Image:    &runtimeapi.ImageSpec{Image: te.h.imageRef},
		Command:  []string{"sh", "-c", "cat /proc/self/uid_map; stat -c %u:%g /bin/busybox"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, UsernsOptions: userns},
		}},
		LogPath: "userns.log",
	})
	st, err := e.waitExited(te.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 {
		t.Errorf("user-namespace container: exit code %d (%s), want 0", st.ExitCode, st.Message)
	}
	log, err := os.ReadFile(filepath.Join(pod.cfg.LogDirectory, "userns.log"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if f := strings.SplitN(l, " ", 4); len(f) == 4 { // time stream tag text
			lines = append(lines, strings.Join(strings.Fields(f[3]), " "))
		}
	}
	want := []string{fmt.Sprintf("0 %d %d", hostID, size), "0:0"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Errorf("inside the pod: %q, want %q (uid_map, then the image's root-owned files owned by root)", lines, want)
	}
	pod.remove(t, te)
}

// TestRootfsMountsDirect: rootfs mounts as containerd hands them to a
// shim, sent to a hand-started shim over ttrpc: a loop-mounted ext4 image
// as the rootfs, a second mount whose target is a symlink in the image
// pointing outside it (the mount stays inside the rootfs), a mount made
// below the rootfs meanwhile (Delete unmounts recursively, and the loop
// device goes away), and an X-containerd.* option (refused by name, with
// nothing left behind: containerd's mount manager consumes those).
func TestRootfsMountsDirect(t *testing.T) {
	te := newTestEnv(t)
	s, _ := te.startBootstrapShim("mounts")

	outside := t.TempDir() // a host directory the image's symlink names
	img := ext4Rootfs(t, map[string]string{"hello": "hello from a loop mount\n"}, [][2]string{{outside, "escape"}}, strings.TrimPrefix(outside, "/"))

	bundle, _ := te.handBundle("loop", minimalSpec("sh", "-c", "cat /hello"))
	out := filepath.Join(t.TempDir(), "stdout")
	rootfs := filepath.Join(bundle, "rootfs")
	_, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{
		ID: "loop", Bundle: bundle, Stdout: "file://" + out, Stderr: "file://" + out,
		Rootfs: []*types.Mount{
			{Type: "ext4", Source: img, Options: []string{"loop"}},
			{Type: "tmpfs", Source: "tmpfs", Target: "escape", Options: []string{"size=1m"}},
		},
	})
	if err != nil {
		t.Fatalf("Create with a loop-mounted rootfs: %v", err)
	}
	if m := testkit.MountsUnder(outside); len(m) > 0 {
		t.Errorf("a rootfs mount went outside the rootfs, to %v", m)
	}
	if m := testkit.MountsUnder(filepath.Join(rootfs, outside)); len(m) != 1 {
		t.Errorf("mounts at the symlink's target inside the rootfs: %v, want 1", m)
	}
	if _, err := s.task.Start(te.ctx, &taskv3.StartRequest{ID: "loop"}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	w, err := s.task.Wait(te.ctx, &taskv3.WaitRequest{ID: "loop"})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("Wait: %v, %v", w, err)
	}
	if data, err := os.ReadFile(out); err != nil || string(data) != "hello from a loop mount\n" {
		t.Errorf("container output %q, %v", data, err)
	}
	// Something mounted below the rootfs meanwhile: Delete takes it too.
	nested := filepath.Join(rootfs, outside, "nested")
	if err := os.Mkdir(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", nested, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.task.Delete(te.ctx, &taskv3.DeleteRequest{ID: "loop"}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if m := testkit.MountsUnder(bundle); len(m) > 0 {
		t.Errorf("mounts left under the bundle after Delete: %v", m)
	}
	if lo, _ := exec.Command("losetup", "-j", img).Output(); len(strings.TrimSpace(string(lo))) > 0 {
		t.Errorf("loop device still attached after Delete: %s", lo)
	}

	xBundle, _ := te.handBundle("xopt", minimalSpec("true"))
	_, err = s.task.Create(te.ctx, &taskv3.CreateTaskRequest{
		ID: "xopt", Bundle: xBundle,
		Rootfs: []*types.Mount{
			{Type: "ext4", Source: img, Options: []string{"loop"}},
			{Type: "tmpfs", Source: "tmpfs", Target: "tmp", Options: []string{"X-containerd.mkdir.path=/tmp/x:0755"}},
		},
	})
	if err == nil || !strings.Contains(err.Error(), "X-containerd.mkdir.path") {
		t.Errorf("Create with an X-containerd.* option: %v, want a refusal naming it", err)
	}
	if m := testkit.MountsUnder(xBundle); len(m) > 0 {
		t.Errorf("mounts left by the failed Create: %v", m)
	}
	if ids, _ := te.h.runcContainers(te.ns); len(ids) > 0 {
		t.Errorf("runc containers left: %v", ids)
	}
	checkConnectAndShutdown(t, s)
}

// ext4Rootfs makes an ext4 image holding the static busybox as /bin/sh and
// /bin/cat, the given files and symlinks (target, name), and directories;
// it skips the test where mkfs.ext4 is missing (the cgroup v2 VM).
func ext4Rootfs(t *testing.T, files map[string]string, links [][2]string, dirs ...string) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("no mkfs.ext4 here")
	}
	src := t.TempDir()
	for _, d := range append([]string{"bin"}, dirs...) {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The static busybox the test image is built from (busybox-static).
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"bin/busybox": string(bb)}
	for name, data := range files {
		all[name] = data
	}
	for name, data := range all {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range append([][2]string{{"busybox", "bin/sh"}, {"busybox", "bin/cat"}}, links...) {
		if err := os.Symlink(l[0], filepath.Join(src, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

// TestFileStdoutWithoutStderr: a task whose stdout is a file:// log and
// which has no stderr runs, its output in the file. (containerd v2.4.2's
// own shim panics on this Create: a nil stderr in its process/io.go.)
func TestFileStdoutWithoutStderr(t *testing.T) {
	te := newTestEnv(t)
	s, _ := te.startBootstrapShim("filelog")
	img := ext4Rootfs(t, map[string]string{"hello": "to the log\n"}, nil)
	bundle, _ := te.handBundle("onlyout", minimalSpec("sh", "-c", "cat /hello; echo lost >&2"))
	out := filepath.Join(t.TempDir(), "stdout.log")
	if _, err := s.task.Create(te.ctx, &taskv3.CreateTaskRequest{
		ID: "onlyout", Bundle: bundle, Stdout: "file://" + out,
		Rootfs: []*types.Mount{{Type: "ext4", Source: img, Options: []string{"loop"}}},
	}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.task.Start(te.ctx, &taskv3.StartRequest{ID: "onlyout"}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if w, err := s.task.Wait(te.ctx, &taskv3.WaitRequest{ID: "onlyout"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("Wait: %v, %v", w, err)
	}
	if data, err := os.ReadFile(out); err != nil || string(data) != "to the log\n" {
		t.Errorf("log file holds %q, %v", data, err)
	}
	if _, err := s.task.Delete(te.ctx, &taskv3.DeleteRequest{ID: "onlyout"}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkConnectAndShutdown(t, s)
}
