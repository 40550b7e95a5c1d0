package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// shimProc is a running process of SHIM_BINARY that talks to our containerd.
type shimProc struct {
	pid     int
	ns, id  string
	cmdline []string
}

func (p shimProc) String() string {
	return fmt.Sprintf("shim pid %d (namespace %q, id %q): %s", p.pid, p.ns, p.id, strings.Join(p.cmdline, " "))
}

// shimProcesses lists live processes whose executable is SHIM_BINARY and
// whose command line names this run's containerd address.
func (h *harness) shimProcesses() []shimProc {
	entries, _ := os.ReadDir("/proc")
	var out []shimProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != h.shimPath {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		p := shimProc{pid: pid, cmdline: args}
		ours := false
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-namespace":
				p.ns = args[i+1]
			case "-id":
				p.id = args[i+1]
			case "-address":
				ours = ours || args[i+1] == h.address
			}
		}
		if ours {
			out = append(out, p)
		}
	}
	return out
}

// shimExitGrace bounds how long a shim that was told to shut down may take
// to exit before it counts as leaked. containerd's Delete returns once the
// shim closed its connection, which can be a moment before the process ends.
const shimExitGraceMs = 10_000

// lingeringShims returns our shim processes still alive after the grace
// period (waited for on a pidfd, not by sleeping).
func (h *harness) lingeringShims() []shimProc {
	var out []shimProc
	for _, p := range h.shimProcesses() {
		if waitPidExit(p.pid, shimExitGraceMs) != nil {
			out = append(out, p)
		}
	}
	return out
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, ...).
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

// cgroupMounts lists the mount points of every cgroup (v1) and cgroup2 hierarchy.
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		sep := strings.Index(line, " - ")
		fields := strings.Fields(line)
		if sep < 0 || len(fields) < 5 {
			continue
		}
		if fs := strings.Fields(line[sep+3:]); len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") {
			out = append(out, unescapeMountPath(fields[4]))
		}
	}
	return out
}

// namespaceCgroups finds the cgroup directories named after ns (containerd's
// default cgroupsPath is /<namespace>/<id>) in every hierarchy, including
// runc's v1 memory cgroup nested under the caller's own cgroup.
func namespaceCgroups(ns string) []string {
	var out []string
	for _, mnt := range cgroupMounts() {
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

func subdirs(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

func dirEntries(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Join(dir, e.Name()))
	}
	return out
}

// runcContainers lists containers runc still knows in ns's runc root.
func (h *harness) runcContainers(ns string) ([]string, error) {
	root := filepath.Join(runcRoot, ns)
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := exec.Command(h.s.runc(), "--root", root, "list", "-q").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("runc --root %s list: %v: %s", root, err, out)
	}
	return strings.Fields(string(out)), nil
}

// leaksIn reports what a namespace left behind: shim processes, mounts,
// bundles, runc containers, container cgroups.
func (h *harness) leaksIn(ns string) []string {
	var problems []string
	for _, p := range h.lingeringShims() {
		if p.ns == ns {
			problems = append(problems, "leaked "+p.String())
		}
	}
	for _, dir := range []string{
		filepath.Join(h.state, "io.containerd.runtime.v2.task", ns),
		filepath.Join(h.root, "io.containerd.runtime.v2.task", ns),
	} {
		for _, m := range mountsUnder(dir) {
			problems = append(problems, "leaked mount "+m)
		}
		for _, b := range dirEntries(dir) {
			problems = append(problems, "leaked bundle "+b)
		}
	}
	ids, err := h.runcContainers(ns)
	if err != nil {
		problems = append(problems, err.Error())
	}
	for _, id := range ids {
		problems = append(problems, fmt.Sprintf("leaked runc container %q in %s", id, filepath.Join(runcRoot, ns)))
	}
	for _, cg := range namespaceCgroups(ns) {
		for _, c := range subdirs(cg) {
			problems = append(problems, "leaked container cgroup "+c)
		}
	}
	return problems
}

// leaksGlobal reports what the whole run left behind besides namespaces.
func (h *harness) leaksGlobal() []string {
	var problems []string
	for _, p := range h.lingeringShims() {
		problems = append(problems, "leaked "+p.String())
	}
	for _, m := range mountsUnder(h.base) {
		problems = append(problems, "leaked mount "+m)
	}
	_ = filepath.WalkDir(h.fifoDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != h.fifoDir {
			problems = append(problems, "leaked fifo or fifo dir "+p)
		}
		return nil
	})
	for _, b := range dirEntries(h.handDir) {
		problems = append(problems, "leaked hand-made bundle "+b)
	}
	for _, s := range dirEntries(h.socketDir) {
		problems = append(problems, "leaked shim socket "+s)
	}
	return problems
}

// teardown stops containerd, reports every leak, then removes what it can
// so the machine is left as it was.
func (h *harness) teardown() []string {
	h.stopContainerd()
	if h.logFile != nil {
		h.logFile.Close()
		if data, err := os.ReadFile(h.logPath); err == nil && os.WriteFile(h.keptLog, data, 0o644) == nil {
			h.logPath = h.keptLog
		}
	}
	if h.base == "" {
		return nil
	}
	problems := h.leaksGlobal()
	seen := map[string]bool{}
	for _, p := range problems {
		seen[p] = true
	}
	for _, ns := range h.allNamespaces() {
		for _, p := range h.leaksIn(ns) {
			if !seen[p] {
				seen[p] = true
				problems = append(problems, p)
			}
		}
	}
	h.cleanup()
	return problems
}

// cleanup removes everything this run made, leaked or not.
func (h *harness) cleanup() {
	for _, p := range h.shimProcesses() {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		_ = waitPidGone(p.pid)
	}
	for _, ns := range h.allNamespaces() {
		ids, _ := h.runcContainers(ns)
		for _, id := range ids {
			_ = exec.Command(h.s.runc(), "--root", filepath.Join(runcRoot, ns), "delete", "--force", id).Run()
		}
		_ = os.Remove(filepath.Join(runcRoot, ns))
		for _, cg := range namespaceCgroups(ns) {
			for _, c := range subdirs(cg) {
				_ = os.Remove(c)
			}
			_ = os.Remove(cg)
		}
	}
	for _, m := range mountsUnder(h.base) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	if len(mountsUnder(h.base)) == 0 {
		_ = os.RemoveAll(h.base)
	} else {
		fmt.Fprintf(os.Stderr, "integration: mounts remain under %s, not removing it\n", h.base)
	}
	for i := len(h.createdDirs) - 1; i >= 0; i-- {
		_ = os.Remove(h.createdDirs[i]) // only when empty
	}
}

// waitPidGone waits, without sleeping, until pid has exited: a pidfd becomes
// readable when its process ends.
func waitPidGone(pid int) error {
	return waitPidExit(pid, 30_000)
}

func waitPidExit(pid int, timeoutMs int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, timeoutMs)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd %d: %w", pid, err)
		}
		if n == 0 {
			return fmt.Errorf("pid %d still running after %d ms", pid, timeoutMs)
		}
		return nil
	}
}

// TestNoLeaks runs a few containers through the client and through ctr, then
// checks that the namespace left nothing behind while containerd still runs.
func TestNoLeaks(t *testing.T) {
	te := newTestEnv(t)
	for i := range 3 {
		var out bytes.Buffer
		code := te.runToExit(fmt.Sprintf("client-%d", i), te.io(nil, &out, io.Discard), "sh", "-c", "echo ok")
		if code != 0 || out.String() != "ok\n" {
			t.Fatalf("run %d: exit %d, output %q", i, code, out.String())
		}
	}
	for i := range 2 {
		if out, err := te.ctr("run", "--rm", "--fifo-dir", te.h.fifoDir, te.h.imageRef, fmt.Sprintf("ctr-%d", i), "true"); err != nil {
			t.Fatalf("ctr run %d: %v\n%s", i, err, out)
		}
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("namespace %s left %d thing(s) behind:\n  %s", te.ns, len(problems), strings.Join(problems, "\n  "))
	}
	if left := dirEntries(te.h.fifoDir); len(left) > 0 {
		t.Errorf("fifo dir not empty after all tasks were deleted: %v", left)
	}
}
