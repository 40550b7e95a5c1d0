package integration

import (
	"oomshim/testkit"

	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// The suite runs under either cgroup driver (TEST_CGROUP_DRIVER):
//
//   - cgroupfs (the default): runc makes the container's cgroup itself at
//     containerd's default path /<namespace>/<id>;
//   - systemd: the runc option SystemdCgroup is set on every container of
//     the suite, as kubeadm's containerd does, and runc asks systemd over
//     D-Bus for a transient scope <namespace>-<id>.scope in this run's
//     slice oomshim-<token>.slice (a child of oomshim.slice). systemd
//     removes a scope as soon as its last process is gone. CRI runs with
//     SystemdCgroup = true and pods get a *.slice parent.
//
// The helpers below are how tests create containers so that both drivers
// see the same tests.

const (
	driverCgroupfs = "cgroupfs"
	driverSystemd  = "systemd"
)

// systemd reports whether the suite runs under the systemd cgroup driver.
func (h *harness) systemd() bool { return h.s.cgroupDriver == driverSystemd }

// slice is this run's systemd slice; every scope and slice of the run is
// under it.
func (h *harness) slice() string { return "oomshim-" + h.token + ".slice" }

// subSlice names a slice under this run's, e.g. a pod's.
func (h *harness) subSlice(name string) string {
	return strings.TrimSuffix(h.slice(), ".slice") + "-" + name + ".slice"
}

// sliceDir is the cgroup directory of a slice: systemd nests a-b.slice in
// a.slice.
func sliceDir(slice string) string {
	name := strings.TrimSuffix(slice, ".slice")
	dir := "/sys/fs/cgroup"
	parts := strings.Split(name, "-")
	for i := range parts {
		dir = filepath.Join(dir, strings.Join(parts[:i+1], "-")+".slice")
	}
	return dir
}

// cgroupsPath is the spec's cgroupsPath for container id of namespace ns:
// containerd's default for cgroupfs, slice:prefix:name for systemd.
func (h *harness) cgroupsPath(ns, id string) string {
	if h.systemd() {
		return h.slice() + ":" + ns + ":" + id
	}
	return "/" + ns + "/" + id
}

// scopeDir is the cgroup directory systemd gives container id of ns.
func (h *harness) scopeDir(ns, id string) string {
	return filepath.Join(sliceDir(h.slice()), ns+"-"+id+".scope")
}

// runtime is the runc runtime with options o (nil for none), SystemdCgroup
// set under the systemd driver. Tests that name their own runtime options
// use it, so that their containers get the run's driver too.
func (te *testEnv) runtime(o *options.Options) client.NewContainerOpts {
	if o == nil {
		o = &options.Options{}
	}
	o.SystemdCgroup = te.h.systemd()
	return client.WithRuntime("io.containerd.runc.v2", o)
}

// cgroupOpts are the container and spec options that put container id in
// the run's cgroup driver; containerWith applies them first.
func (te *testEnv) cgroupOpts(id string) ([]client.NewContainerOpts, []oci.SpecOpts) {
	if !te.h.systemd() {
		return nil, nil
	}
	return []client.NewContainerOpts{te.runtime(nil)}, []oci.SpecOpts{oci.WithCgroup(te.h.cgroupsPath(te.ns, id))}
}

// ctrRunFlags are ctr run's flags for the same.
func (te *testEnv) ctrRunFlags(id string) []string {
	if !te.h.systemd() {
		return nil
	}
	return []string{"--runc-systemd-cgroup", "--cgroup", te.h.cgroupsPath(te.ns, id)}
}

// ctrRun runs `ctr run --rm` of the test image's args as container id,
// in the run's cgroup driver.
func (te *testEnv) ctrRun(ctx context.Context, image, id string, args ...string) ([]byte, error) {
	full := append([]string{"run", "--rm", "--fifo-dir", te.h.FifoDir}, te.ctrRunFlags(id)...)
	return te.ctrContext(ctx, append(append(full, image, id), args...)...)
}

// criCgroupParent is the CgroupParent of the pods of a CRI test: a path
// under the root for cgroupfs, a slice (as kubelet's
// kubepods-burstable-pod<uid>.slice) for systemd.
func (h *harness) criCgroupParent(name string) string {
	if h.systemd() {
		return h.subSlice(name)
	}
	return "/oomshim-" + name + "-" + h.token
}

// systemdLeftovers lists the scopes and slices systemd still knows whose
// names contain substr, and their cgroup directories under the run's slice.
func (h *harness) systemdLeftovers(substr string) []string {
	if !h.systemd() {
		return nil
	}
	var out []string
	units, err := testkit.SystemdUnits(substr)
	if err != nil {
		out = append(out, err.Error())
	}
	for _, u := range units {
		out = append(out, "leaked systemd unit "+u)
	}
	_ = filepath.WalkDir(sliceDir(h.slice()), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.Contains(filepath.Base(p), substr) && strings.HasSuffix(p, ".scope") {
			out = append(out, "leaked scope cgroup "+p)
		}
		return nil
	})
	return out
}

// systemdFinal is the systemd driver's part of the teardown: any scope
// still under the run's slice is a leak (CRI's cri-containerd-<id>.scope
// included); then the run's slice and oomshim.slice are stopped, as
// kubelet removes a pod's slice, and no unit of the run may be left.
func (h *harness) systemdFinal() []string {
	if !h.systemd() {
		return nil
	}
	var out []string
	_ = filepath.WalkDir(sliceDir(h.slice()), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasSuffix(p, ".scope") {
			out = append(out, "leaked scope cgroup "+p)
		}
		return nil
	})
	if err := testkit.StopSystemdUnits(h.slice(), "oomshim.slice"); err != nil {
		out = append(out, err.Error())
	}
	return append(out, h.systemdLeftovers(h.token)...)
}

// waitGone waits until dir no longer exists (systemd removes an empty
// scope's cgroup by itself), bounded by ctx.
func waitGone(ctx context.Context, dir string) error {
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still exists: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
