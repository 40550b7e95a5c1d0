package integration

import (
	"oomshim/testkit"

	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
)

// TestOOMPodLimit: the limit that fires is the container's parent's, as
// kubelet limits a pod's cgroup (kubepods-burstable-pod<uid>.slice under
// systemd) while the container has no limit of its own. The kill is the
// container's all the same: exactly one TaskOOM before its TaskExit (137),
// and the shim logs it as the limit of an ancestor (this project's shim:
// the reference logs no such line).
func TestOOMPodLimit(t *testing.T) {
	mem := requireOOM(t)
	te := newTestEnv(t)
	rec := te.recordEvents()

	// The container's cgroup is <pod>/<id>: runc makes the pod cgroup, the
	// test limits it between Create and Start, as kubelet has sized the
	// pod's before any container of it starts.
	var path, slice string
	if te.h.systemd() {
		slice = te.h.subSlice("podlimit")
		path = slice + ":" + te.ns + ":hog"
	} else {
		path = "/" + te.ns + "/pod/hog"
		// Registered before the container, so it runs after the task and
		// the container are deleted: the pod cgroup is the test's.
		t.Cleanup(func() {
			for _, nsDir := range testkit.NamespaceCgroups(te.ns) {
				if err := syscall.Rmdir(filepath.Join(nsDir, "pod")); err != nil && !errors.Is(err, syscall.ENOENT) {
					t.Errorf("cleanup: remove the pod cgroup: %v", err)
				}
			}
		})
	}
	c := te.containerWith("hog", nil, oci.WithCgroup(path), oci.WithProcessArgs(oomHog...))
	task := te.newTask(c, te.io(nil, io.Discard, io.Discard))
	exitCh, err := task.Wait(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	pod, err := limitParent(mem, int(task.Pid()), slice)
	if err != nil {
		t.Fatalf("limit the pod cgroup: %v", err)
	}
	t.Logf("pod cgroup %s limited to %d MiB, the container's own unlimited", pod, oomLimit>>20)
	if err := task.Start(te.ctx); err != nil {
		t.Fatal(err)
	}
	if code := te.waitExit("hog", exitCh).ExitCode(); code != 137 {
		t.Errorf("exit status %d, want 137 (OOM-killed by the pod's limit)", code)
	}
	te.expectOneOOMBefore(rec, te.finishTask(rec, task), "hog", "hog", 137)

	lines, err := te.logLinesNaming("hog", 200)
	if err != nil {
		t.Fatal(err)
	}
	var limits []string
	for _, l := range lines {
		if strings.Contains(l, `msg="container OOM-killed`) {
			_, v, _ := strings.Cut(l, " limit=")
			limits = append(limits, strings.Fields(v + " ")[0])
		}
	}
	switch {
	case !te.h.ours():
		t.Logf("%s is not this project's shim: no OOM classification in its log to check", te.h.s.shimBinary)
	case len(limits) != 1 || limits[0] != "ancestor":
		t.Errorf("the shim logged the OOM kill with limit %q, want one line with limit=ancestor\n%s", limits, te.logExcerpt("hog", 30))
	}
}

// limitParent sets the memory (and, where it can, memory+swap) limit of
// the parent of pid's memory cgroup to oomLimit and returns that cgroup.
// Under systemd the parent is slice, and the limit goes through systemd
// (MemoryMax=, MemorySwapMax=), as kubelet sizes a pod's slice.
func limitParent(mem memoryCgroups, pid int, slice string) (string, error) {
	if slice != "" {
		props := []string{fmt.Sprintf("MemoryMax=%d", oomLimit)}
		if mem.swapLimit {
			props = append(props, "MemorySwapMax=0")
		}
		return sliceDir(slice), testkit.SetSystemdProperties(slice, props...)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		limit := strconv.Itoa(oomLimit)
		switch {
		case mem.unified && parts[0] == "0":
			dir := filepath.Join("/sys/fs/cgroup", filepath.Dir(parts[2]))
			if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(limit), 0); err != nil {
				return dir, err
			}
			if mem.swapLimit {
				if err := os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
					return dir, err
				}
			}
			return dir, nil
		case !mem.unified && contains(strings.Split(parts[1], ","), "memory"):
			dir := filepath.Join(v1ControllerMount("memory"), filepath.Dir(parts[2]))
			if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(limit), 0); err != nil {
				return dir, err
			}
			if mem.swapLimit {
				if err := os.WriteFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), []byte(limit), 0); err != nil {
					return dir, err
				}
			}
			return dir, nil
		}
	}
	return "", fmt.Errorf("pid %d has no memory cgroup in %q", pid, data)
}
