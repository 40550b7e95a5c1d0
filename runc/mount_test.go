package runc

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		opts        []string
		flags, prop uintptr
		data        string
	}{
		{"empty", nil, 0, 0, ""},
		{"ro bind", []string{"rbind", "ro"}, unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, 0, ""},
		{"rw clears ro", []string{"ro", "rw"}, 0, 0, ""},
		{"overlay data", []string{"workdir=/w", "upperdir=/u", "lowerdir=/l", "index=off"}, 0, 0, "workdir=/w,upperdir=/u,lowerdir=/l,index=off"},
		{"propagation", []string{"bind", "rprivate", "nosuid"}, unix.MS_BIND | unix.MS_NOSUID, unix.MS_PRIVATE | unix.MS_REC, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, p, d := parseOptions(tc.opts)
			if f != tc.flags || p != tc.prop || d != tc.data {
				t.Fatalf("got %#x %#x %q, want %#x %#x %q", f, p, d, tc.flags, tc.prop, tc.data)
			}
		})
	}
}

func TestUnmountAllOfPlainDir(t *testing.T) {
	if err := UnmountAll(t.TempDir()); err != nil {
		t.Fatalf("unmount of an unmounted dir: %v", err)
	}
	if err := UnmountAll("/nonexistent/rootfs"); err != nil {
		t.Fatalf("unmount of a missing dir: %v", err)
	}
}
