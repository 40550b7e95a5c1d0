package runc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"
)

// ErrInvalidMount is returned for a rootfs mount the shim cannot perform.
var ErrInvalidMount = errors.New("runc: invalid rootfs mount")

// mountFlag is one mount(8)-style option that maps to a mount flag.
type mountFlag struct {
	clear bool
	flag  uintptr
}

var mountFlags = map[string]mountFlag{
	"async":         {true, unix.MS_SYNCHRONOUS},
	"atime":         {true, unix.MS_NOATIME},
	"bind":          {false, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {true, unix.MS_NODEV},
	"diratime":      {true, unix.MS_NODIRATIME},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"exec":          {true, unix.MS_NOEXEC},
	"mand":          {false, unix.MS_MANDLOCK},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"nomand":        {true, unix.MS_MANDLOCK},
	"norelatime":    {true, unix.MS_RELATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"nosuid":        {false, unix.MS_NOSUID},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
	"relatime":      {false, unix.MS_RELATIME},
	"remount":       {false, unix.MS_REMOUNT},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"suid":          {true, unix.MS_NOSUID},
	"sync":          {false, unix.MS_SYNCHRONOUS},
}

var propagationFlags = map[string]uintptr{
	"private":     unix.MS_PRIVATE,
	"rprivate":    unix.MS_PRIVATE | unix.MS_REC,
	"shared":      unix.MS_SHARED,
	"rshared":     unix.MS_SHARED | unix.MS_REC,
	"slave":       unix.MS_SLAVE,
	"rslave":      unix.MS_SLAVE | unix.MS_REC,
	"unbindable":  unix.MS_UNBINDABLE,
	"runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// parseOptions splits mount(8) options into flags, propagation flags and
// the filesystem's data string.
func parseOptions(opts []string) (flags, propagation uintptr, data string) {
	var rest []string
	for _, o := range opts {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		if p, ok := propagationFlags[o]; ok {
			propagation |= p
			continue
		}
		rest = append(rest, o)
	}
	return flags, propagation, strings.Join(rest, ",")
}

// MountAll mounts the rootfs mounts, in order, below target. On failure
// everything it mounted is unmounted again.
func MountAll(mounts []*types.Mount, target string) (err error) {
	defer func() {
		if err != nil {
			if uerr := UnmountAll(target); uerr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, uerr)
			}
		}
	}()
	for _, m := range mounts {
		dst := target
		if m.Target != "" {
			dst = filepath.Join(target, filepath.Clean("/"+m.Target))
		}
		if err := mount(m, dst); err != nil {
			return err
		}
	}
	return nil
}

func mount(m *types.Mount, target string) error {
	if m.Type == "" {
		return fmt.Errorf("%w: mount of %q has no type", ErrInvalidMount, m.Source)
	}
	flags, propagation, data := parseOptions(m.Options)
	// The kernel takes at most a page of mount data; refuse clearly rather
	// than let it truncate an overlay lowerdir list.
	if len(data) >= os.Getpagesize() {
		return fmt.Errorf("%w: %s options are %d bytes, over the kernel's page limit", ErrInvalidMount, m.Type, len(data))
	}
	typ := m.Type
	if flags&unix.MS_BIND != 0 {
		typ = ""
	}
	// A bind mount ignores every flag but MS_BIND|MS_REC on the first call;
	// the others need a remount.
	first := flags
	if flags&unix.MS_BIND != 0 {
		first = flags & (unix.MS_BIND | unix.MS_REC)
	}
	if err := unix.Mount(m.Source, target, typ, first, data); err != nil {
		return fmt.Errorf("mount %s %s at %s: %w", m.Type, m.Source, target, err)
	}
	if flags&unix.MS_BIND != 0 && flags != first {
		if err := unix.Mount("", target, "", flags|unix.MS_REMOUNT, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("remount %s with options %v: %w", target, m.Options, err)
		}
	}
	if propagation != 0 {
		if err := unix.Mount("", target, "", propagation, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("set propagation of %s: %w", target, err)
		}
	}
	return nil
}

// UnmountAll removes every mount stacked at target. A target that is not a
// mount point, or does not exist, is not an error.
func UnmountAll(target string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && i < 50:
			time.Sleep(10 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("detach %s: %w", target, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}
