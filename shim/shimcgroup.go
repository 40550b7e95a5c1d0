package shim

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// scopeTimeout bounds asking systemd for the shim's scope.
const scopeTimeout = 10 * time.Second

// joinCgroup moves the shim server pid into the cgroup containerd named in
// the runc option ShimCgroup. Two forms:
//
//   - a cgroupfs path ("/shims"), which must exist, as the stock shim
//     takes it;
//   - a systemd slice unit ("shims.slice", "kubepods-shims.slice"): the
//     form a node on the systemd cgroup driver names cgroups in. The shim
//     then asks systemd (D-Bus) for a transient scope of its own in that
//     slice, containerd-shim-<id>-<pid>.scope, as runc does for a
//     container. systemd creates the slice when it has to, keeps the
//     scope's cgroup its own (a process written into a slice's cgroup
//     behind systemd's back is where systemd does not expect one, and v2
//     refuses it once the slice has children with controllers), and
//     removes the scope when the shim has exited.
func joinCgroup(path string, pid int, ns, id string) error {
	if isSliceUnit(path) {
		return joinSlice(path, pid, ns, id)
	}
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load shim cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", path, err)
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return fmt.Errorf("load shim cgroup %s: %w", path, err)
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("join shim cgroup %s: %w", path, err)
	}
	return nil
}

// isSliceUnit reports whether s names a systemd slice unit rather than a
// cgroupfs path.
func isSliceUnit(s string) bool {
	return !strings.Contains(s, "/") && len(s) > len(".slice") && strings.HasSuffix(s, ".slice")
}

// shimScope names the shim's scope. Container IDs are made of characters
// unit names allow; the pid keeps a new shim for a re-used ID clear of
// the scope of one that is still exiting.
func shimScope(id string, pid int) string {
	return fmt.Sprintf("containerd-shim-%s-%d.scope", id, pid)
}

// joinSlice starts the transient scope shimScope(id, pid) in slice with
// pid in it and waits for systemd to report the job done.
func joinSlice(slice string, pid int, ns, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), scopeTimeout)
	defer cancel()
	// systemd's private socket needs no D-Bus daemon (root only); the
	// system bus is the fallback.
	conn, err := sdbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		var berr error
		if conn, berr = sdbus.NewWithContext(ctx); berr != nil {
			return fmt.Errorf("shim cgroup %s is a systemd slice, but systemd is not reachable: %w", slice, err)
		}
	}
	defer conn.Close()
	unit := shimScope(id, pid)
	props := []sdbus.Property{
		sdbus.PropDescription(fmt.Sprintf("containerd shim %s/%s", ns, id)),
		sdbus.PropSlice(slice),
		sdbus.PropPids(uint32(pid)),
		// Like runc's container scopes: no ordering against shutdown.target
		// and the like; containerd stops the shim, not the shutdown.
		{Name: "DefaultDependencies", Value: dbus.MakeVariant(false)},
	}
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, done); err != nil {
		return fmt.Errorf("start scope %s in slice %s: %w", unit, slice, err)
	}
	select {
	case result := <-done:
		if result != "done" {
			return fmt.Errorf("start scope %s in slice %s: job %s", unit, slice, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("start scope %s in slice %s: %w", unit, slice, ctx.Err())
	}
}
