package runc

import (
	"errors"
	"fmt"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
)

// ErrInvalidMount is returned for a rootfs mount the shim cannot perform
// because the request itself is malformed.
var ErrInvalidMount = errors.New("runc: invalid rootfs mount")

// MountAll mounts the rootfs mounts, in order, below target, exactly as
// containerd's own shim does: through containerd's mount package, which
// understands every option containerd's snapshotters hand out (idmapped
// overlays with uidmap=/gidmap=, lowerdir lists longer than a page, loop
// devices, X-containerd.* options) and resolves each mount's Target inside
// target, so a symlink in an image cannot send a mount outside the rootfs.
// On failure everything it mounted is unmounted again.
func MountAll(mounts []*types.Mount, target string) (err error) {
	for _, m := range mounts {
		if m.GetType() == "" {
			return fmt.Errorf("%w: mount of %q has no type", ErrInvalidMount, m.GetSource())
		}
	}
	ms := mount.FromProto(mounts)
	if err := mount.All(ms, target); err != nil {
		if uerr := mount.UnmountMounts(ms, target, 0); uerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, uerr)
		}
		return fmt.Errorf("mount rootfs: %w", err)
	}
	return nil
}

// UnmountAll removes every mount at or below target, deepest first. A
// target that is not a mount point, or does not exist, is not an error.
func UnmountAll(target string) error {
	if err := mount.UnmountRecursive(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
