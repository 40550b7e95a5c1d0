package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Point, FSType string
	Super         []string // the superblock options, such as a v1 hierarchy's controllers
}

// Mounts lists the mounts of this process's mount namespace.
func Mounts() []Mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		sep := strings.Index(line, " - ")
		if len(fields) < 5 || sep < 0 {
			continue
		}
		m := Mount{Point: unescapeMountPath(fields[4])}
		// After the separator: fstype, source, superblock options.
		rest := strings.Fields(line[sep+3:])
		if len(rest) > 0 {
			m.FSType = rest[0]
		}
		if len(rest) > 2 {
			m.Super = strings.Split(rest[2], ",")
		}
		out = append(out, m)
	}
	return out
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountsUnder lists mount points at or below dir, deepest first.
func MountsUnder(dir string) []string {
	var out []string
	for _, m := range Mounts() {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// CgroupMounts lists the mount points of every cgroup (v1) and cgroup2
// hierarchy.
func CgroupMounts() []string {
	var out []string
	for _, m := range Mounts() {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			out = append(out, m.Point)
		}
	}
	return out
}

// NamespaceCgroups finds the cgroup directories named after ns
// (containerd's default cgroupsPath is /<namespace>/<id>) in every
// hierarchy, including runc's v1 cgroups nested under the caller's own.
func NamespaceCgroups(ns string) []string {
	var out []string
	for _, mnt := range CgroupMounts() {
		_ = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, mnt), "/") > 4 {
				return filepath.SkipDir
			}
			if d.Name() == ns && p != mnt {
				out = append(out, p)
				return filepath.SkipDir
			}
			return nil
		})
	}
	return out
}

// Subdirs lists the directories in dir.
func Subdirs(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// RemoveNamespaceCgroups removes ns's cgroups and their container cgroups
// in every hierarchy; a cgroup with processes in it stays.
func RemoveNamespaceCgroups(ns string) error {
	var err error
	for _, cg := range NamespaceCgroups(ns) {
		for _, c := range Subdirs(cg) {
			_ = os.Remove(c)
		}
		if rerr := os.Remove(cg); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove cgroup %s: %w", cg, rerr))
		}
	}
	return err
}

// ShimProcess is a live shim process of one of the binaries ShimProcesses
// was asked about.
type ShimProcess struct {
	PID     int
	Exe     string // as /proc/<pid>/exe names it
	NS, ID  string
	Action  string // "start", "delete", or "" for the server
	Cmdline []string
}

func (p ShimProcess) String() string {
	return fmt.Sprintf("shim pid %d (namespace %q, id %q): %s", p.PID, p.NS, p.ID, strings.Join(p.Cmdline, " "))
}

// ShimProcesses lists live processes whose executable is one of exes
// (resolved paths) and whose command line names containerd address.
func ShimProcesses(address string, exes ...string) []ShimProcess {
	entries, _ := os.ReadDir("/proc")
	var out []ShimProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			continue
		}
		exe = strings.TrimSuffix(exe, " (deleted)")
		found := false
		for _, x := range exes {
			found = found || exe == x
		}
		if !found {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		p := ShimProcess{PID: pid, Exe: exe, Cmdline: args}
		ours := false
		for i, a := range args {
			switch {
			case a == "start" || a == "delete":
				p.Action = a
			case a == "-namespace" && i+1 < len(args):
				p.NS = args[i+1]
			case a == "-id" && i+1 < len(args):
				p.ID = args[i+1]
			case a == "-address" && i+1 < len(args):
				ours = args[i+1] == address
			}
		}
		if ours {
			out = append(out, p)
		}
	}
	return out
}

// RuncContainers lists the containers runc knows under root.
func RuncContainers(runc, root string) ([]string, error) {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := exec.Command(runc, "--root", root, "list", "-q").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("runc --root %s list: %v: %s", root, err, out)
	}
	return strings.Fields(string(out)), nil
}

// DeleteRuncContainers force-deletes every container runc knows under root
// and returns their IDs.
func DeleteRuncContainers(runc, root string) []string {
	ids, _ := RuncContainers(runc, root)
	for _, id := range ids {
		_ = exec.Command(runc, "--root", root, "delete", "--force", id).Run()
	}
	return ids
}

// WaitPidExit waits, without sleeping, until pid has exited: a pidfd
// becomes readable when its process ends.
func WaitPidExit(pid int, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(timeout.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd %d: %w", pid, err)
		}
		if n == 0 {
			return fmt.Errorf("pid %d still running after %v", pid, timeout)
		}
		return nil
	}
}
