package integration

import (
	"time"

	"oomshim/testkit"

	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// shimProc is a running process of SHIM_BINARY that talks to our containerd.
type shimProc = testkit.ShimProcess

// shimProcesses lists them.
func (h *harness) shimProcesses() []shimProc {
	return testkit.ShimProcesses(h.Address, h.shimPath)
}

// shimExitGrace bounds how long a shim that was told to shut down may take
// to exit before it counts as leaked. containerd's Delete returns once the
// shim closed its connection, which can be a moment before the process ends.
const shimExitGrace = 10 * time.Second

// lingeringShims returns our shim processes still alive after the grace
// period (waited for on a pidfd, not by sleeping).
func (h *harness) lingeringShims() []shimProc {
	var out []shimProc
	for _, p := range h.shimProcesses() {
		if testkit.WaitPidExit(p.PID, shimExitGrace) != nil {
			out = append(out, p)
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
	return testkit.RuncContainers(h.s.runc(), filepath.Join(runcRoot, ns))
}

// leaksIn reports what a namespace left behind: shim processes, mounts,
// bundles, runc containers, container cgroups.
func (h *harness) leaksIn(ns string) []string {
	var problems []string
	for _, p := range h.lingeringShims() {
		if p.NS == ns {
			problems = append(problems, "leaked "+p.String())
		}
	}
	for _, dir := range []string{
		filepath.Join(h.State, "io.containerd.runtime.v2.task", ns),
		filepath.Join(h.Root, "io.containerd.runtime.v2.task", ns),
	} {
		for _, m := range testkit.MountsUnder(dir) {
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
	for _, cg := range testkit.NamespaceCgroups(ns) {
		for _, c := range testkit.Subdirs(cg) {
			problems = append(problems, "leaked container cgroup "+c)
		}
	}
	return append(problems, h.systemdLeftovers(ns)...)
}

// leaksGlobal reports what the whole run left behind besides namespaces.
func (h *harness) leaksGlobal() []string {
	var problems []string
	for _, p := range h.lingeringShims() {
		problems = append(problems, "leaked "+p.String())
	}
	for _, m := range testkit.MountsUnder(h.Base) {
		problems = append(problems, "leaked mount "+m)
	}
	_ = filepath.WalkDir(h.FifoDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != h.FifoDir {
			problems = append(problems, "leaked fifo or fifo dir "+p)
		}
		return nil
	})
	for _, b := range dirEntries(h.handDir) {
		problems = append(problems, "leaked hand-made bundle "+b)
	}
	for _, s := range dirEntries(h.SocketDir) {
		problems = append(problems, "leaked shim socket "+s)
	}
	return problems
}

// teardown stops containerd, reports every leak, then removes what it can
// so the machine is left as it was.
func (h *harness) teardown() []string {
	h.stopContainerd()
	if h.CopyLog(h.keptLog) == nil {
		h.LogPath = h.keptLog
	}
	problems := h.leaksGlobal()
	if n := h.countInLog("WARNING: DATA RACE"); n > 0 {
		// A shim built with -race (make integration-race) writes its
		// reports to stderr, which is its log, which containerd copies.
		problems = append(problems, fmt.Sprintf("the shim reported %d data race(s): see the containerd log", n))
	}
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
	problems = append(problems, h.systemdFinal()...)
	h.cleanup()
	return problems
}

// cleanup removes everything this run made, leaked or not.
func (h *harness) cleanup() {
	for _, p := range h.shimProcesses() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
		_ = testkit.WaitPidExit(p.PID, 30*time.Second)
	}
	for _, ns := range h.allNamespaces() {
		testkit.DeleteRuncContainers(h.s.runc(), filepath.Join(runcRoot, ns))
		_ = os.Remove(filepath.Join(runcRoot, ns))
		_ = testkit.RemoveNamespaceCgroups(ns)
	}
	if err := h.Remove(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: cleanup: %v\n", err)
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
		if out, err := te.ctrRun(te.ctx, te.h.imageRef, fmt.Sprintf("ctr-%d", i), "true"); err != nil {
			t.Fatalf("ctr run %d: %v\n%s", i, err, out)
		}
	}
	if problems := te.h.leaksIn(te.ns); len(problems) > 0 {
		t.Errorf("namespace %s left %d thing(s) behind:\n  %s", te.ns, len(problems), strings.Join(problems, "\n  "))
	}
	if left := dirEntries(te.h.FifoDir); len(left) > 0 {
		t.Errorf("fifo dir not empty after all tasks were deleted: %v", left)
	}
}

// countInLog counts the lines of containerd's log that contain s.
func (h *harness) countInLog(s string) int {
	data, err := os.ReadFile(h.LogPath)
	if err != nil {
		return 0
	}
	return bytes.Count(data, []byte(s))
}
