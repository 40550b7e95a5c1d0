package runc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"
)

// needRoot skips a test that mounts; under REQUIRE_INTEGRATION=1 (make
// test) it fails instead, so a lane that should mount cannot pass silently.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("REQUIRE_INTEGRATION") == "1" {
		t.Fatal("mount tests need root")
	}
	t.Skip("mount tests need root")
}

// mountsBelow lists the mount points at or below dir, from mountinfo.
func mountsBelow(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// rootfsDir makes a rootfs directory whose mounts are undone at cleanup.
func rootfsDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		if left := mountsBelow(t, dir); len(left) > 0 {
			t.Errorf("mounts left below %s: %v", dir, left)
			for _, m := range left {
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	})
	return dir
}

func TestUnmountAllOfPlainDir(t *testing.T) {
	if err := UnmountAll(t.TempDir()); err != nil {
		t.Fatalf("unmount of an unmounted dir: %v", err)
	}
	if err := UnmountAll("/nonexistent/rootfs"); err != nil {
		t.Fatalf("unmount of a missing dir: %v", err)
	}
}

func TestMountAllRefusesMountWithoutType(t *testing.T) {
	err := MountAll([]*types.Mount{{Source: "/x"}}, t.TempDir())
	if !errors.Is(err, ErrInvalidMount) {
		t.Fatalf("got %v, want ErrInvalidMount", err)
	}
}

// A mount below the rootfs and another below that one come off together.
func TestUnmountAllIsRecursive(t *testing.T) {
	needRoot(t)
	rootfs := rootfsDir(t)
	err := MountAll([]*types.Mount{
		{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}},
	}, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"a", "a/b"} {
		dir := filepath.Join(rootfs, sub)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(mountsBelow(t, rootfs)); got != 3 {
		t.Fatalf("%d mounts below the rootfs, want 3", got)
	}
	if err := UnmountAll(rootfs); err != nil {
		t.Fatal(err)
	}
	if left := mountsBelow(t, rootfs); len(left) > 0 {
		t.Fatalf("left mounted: %v", left)
	}
}

// A mount's Target resolves inside the rootfs: a symlink planted in the
// image that points outside it sends the mount to the same path inside.
func TestMountTargetStaysInsideRootfs(t *testing.T) {
	needRoot(t)
	rootfs := rootfsDir(t)
	outside := t.TempDir()
	if err := MountAll([]*types.Mount{{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}}}, rootfs); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, outside), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(rootfs, "escape")); err != nil {
		t.Fatal(err)
	}
	err := MountAll([]*types.Mount{{Type: "tmpfs", Source: "evil", Target: "escape", Options: []string{"size=1m"}}}, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if m := mountsBelow(t, outside); len(m) > 0 {
		_ = unix.Unmount(outside, unix.MNT_DETACH)
		t.Fatalf("the mount went outside the rootfs: %v", m)
	}
	if m := mountsBelow(t, filepath.Join(rootfs, outside)); len(m) != 1 {
		t.Fatalf("mounts at the symlink's target inside the rootfs: %v, want 1", m)
	}
	if err := UnmountAll(rootfs); err != nil {
		t.Fatal(err)
	}
}

// A failing mount undoes those before it, and an X-containerd.* option
// (containerd's mount manager consumes them before a task reaches a shim)
// is refused by name.
func TestMountAllUndoesOnFailure(t *testing.T) {
	needRoot(t)
	rootfs := rootfsDir(t)
	err := MountAll([]*types.Mount{
		{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}},
		{Type: "tmpfs", Source: "tmpfs", Target: "sub", Options: []string{"X-containerd.mkdir.path=/x"}},
	}, rootfs)
	if err == nil || !strings.Contains(err.Error(), "X-containerd.mkdir.path") {
		t.Fatalf("got %v, want a refusal naming the option", err)
	}
	if left := mountsBelow(t, rootfs); len(left) > 0 {
		t.Fatalf("left mounted after a failed MountAll: %v", left)
	}
}

// An overlay whose lowerdir list is longer than a page mounts: containerd's
// mount package shortens it (relative paths from a common parent).
func TestOverlayOptionsLongerThanAPage(t *testing.T) {
	needRoot(t)
	rootfs := rootfsDir(t)
	base := filepath.Join(t.TempDir(), strings.Repeat("long-snapshotter-path-", 4))
	var lowers []string
	for i := 0; i < 128; i++ {
		dir := filepath.Join(base, "snapshots", strconv.Itoa(i+1), "fs")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "layer"+strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		lowers = append([]string{dir}, lowers...) // topmost first
	}
	opt := "lowerdir=" + strings.Join(lowers, ":")
	if len(opt) <= os.Getpagesize() {
		t.Fatalf("lowerdir option is %d bytes, want over a page", len(opt))
	}
	if err := MountAll([]*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{opt}}}, rootfs); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"layer0", "layer127"} {
		if _, err := os.Stat(filepath.Join(rootfs, name)); err != nil {
			t.Errorf("layer file: %v", err)
		}
	}
	if err := UnmountAll(rootfs); err != nil {
		t.Fatal(err)
	}
}

// An overlay with uidmap=/gidmap= (a Kubernetes user-namespace pod's
// rootfs) mounts with its lower layers idmapped: root's files in the image
// belong to the mapped host IDs in the rootfs.
func TestIDMappedOverlay(t *testing.T) {
	needRoot(t)
	rootfs := rootfsDir(t)
	dir := t.TempDir()
	lower, upper, work := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{lower, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const hostID = 100000
	m := &types.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work,
		"uidmap=0:" + strconv.Itoa(hostID) + ":65536", "gidmap=0:" + strconv.Itoa(hostID) + ":65536",
	}}
	if err := MountAll([]*types.Mount{m}, rootfs); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(rootfs, "file"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != hostID || st.Gid != hostID {
		t.Errorf("file in the idmapped rootfs is %d:%d, want %d:%d", st.Uid, st.Gid, hostID, hostID)
	}
	if err := UnmountAll(rootfs); err != nil {
		t.Fatal(err)
	}
}

// A loop mount: containerd's `loop` option attaches the image file to a
// loop device (autoclear), which goes away with the unmount.
func TestLoopMount(t *testing.T) {
	needRoot(t)
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("no mkfs.ext4")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices here")
	}
	rootfs := rootfsDir(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "rootfs.img")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", src, img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if err := MountAll([]*types.Mount{{Type: "ext4", Source: img, Options: []string{"loop", "ro"}}}, rootfs); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(rootfs, "hello"))
	if err != nil || string(data) != "from the image\n" {
		t.Errorf("read through the loop mount: %q, %v", data, err)
	}
	if err := UnmountAll(rootfs); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("losetup", "-j", img).Output()
	if len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("loop device still attached after unmount: %s", out)
	}
}
