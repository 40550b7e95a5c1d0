package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// destroy kills and deletes a container's task (if any) and the container
// with its snapshot. Errors other than NotFound are returned.
func destroy(ctx context.Context, c client.Container) error {
	if t, err := c.Task(ctx, nil); err == nil {
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task %s: %w", c.ID(), err)
		}
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("task of %s: %w", c.ID(), err)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", c.ID(), err)
	}
	return nil
}

// destroyAll destroys containers, a few at a time.
func destroyAll(ctx context.Context, cs []client.Container) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 8)
	)
	for _, c := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := destroy(ctx, c); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// teardown removes everything the run made: containers and their shims,
// containerd, leftover shims and runc containers, mounts, cgroups and dirs.
// It reports what it could not remove and never fails the run by itself.
func (e *env) teardown() {
	progress("cleaning up")
	if e.client != nil {
		ctx, cancel := context.WithTimeout(e.nsCtx(context.Background()), 2*time.Minute)
		if cs, err := e.client.Containers(ctx); err == nil {
			if err := destroyAll(ctx, cs); err != nil {
				progress("cleanup: %v", err)
			}
		}
		if e.image != nil {
			_ = e.client.ImageService().Delete(ctx, e.image.Name())
		}
		_ = e.client.NamespaceService().Delete(ctx, e.ns)
		cancel()
		e.client.Close()
		// Deleted tasks' shims exit once they have flushed their events to
		// containerd: give them the chance before containerd goes.
		e.waitShimsGone(context.Background(), 10*time.Second)
	}
	if e.cmd != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(30 * time.Second):
			progress("cleanup: containerd ignored SIGTERM for 30s, killing it")
			_ = e.cmd.Process.Kill()
			<-e.exited
		}
	}
	// Shims of this run that outlived containerd (only after a failure).
	for _, p := range e.shimProcesses() {
		progress("cleanup: killing leftover shim pid %d (%s)", p.pid, p.id)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	e.deleteRuncContainers()
	e.removeCgroups()
	if e.base != "" {
		for _, m := range mountsUnder(e.base) {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				progress("cleanup: unmount %s: %v", m, err)
			}
		}
		if e.cfg.keepLog {
			e.keepLog()
		}
		if err := os.RemoveAll(e.base); err != nil {
			progress("cleanup: %v", err)
		}
	}
	_ = os.Remove(filepath.Join(runcRoot, e.ns))
	for i := len(e.createdDirs) - 1; i >= 0; i-- {
		_ = os.Remove(e.createdDirs[i]) // only if empty
	}
}

// deleteRuncContainers force-deletes what runc still knows in the run's
// namespace (only after a failure: shims delete their containers).
func (e *env) deleteRuncContainers() {
	root := filepath.Join(runcRoot, e.ns)
	if _, err := os.Stat(root); err != nil {
		return
	}
	runc := filepath.Join(e.cfg.toolsBin, "runc")
	out, err := exec.Command(runc, "--root", root, "list", "-q").Output()
	if err != nil {
		return
	}
	for _, id := range strings.Fields(string(out)) {
		progress("cleanup: runc delete --force %s", id)
		_ = exec.Command(runc, "--root", root, "delete", "--force", id).Run()
	}
}

// removeCgroups removes the run's namespace cgroups (containerd's default
// cgroupsPath is /<namespace>/<id>) in every hierarchy, if they are empty.
func (e *env) removeCgroups() {
	for _, mnt := range cgroupMounts() {
		_ = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, mnt), "/") > 4 {
				return filepath.SkipDir
			}
			if d.Name() == e.ns && p != mnt {
				if subs, err := os.ReadDir(p); err == nil {
					for _, s := range subs {
						if s.IsDir() {
							_ = os.Remove(filepath.Join(p, s.Name()))
						}
					}
				}
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					progress("cleanup: remove cgroup %s: %v", p, err)
				}
				return filepath.SkipDir
			}
			return nil
		})
	}
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	var out []string
	for _, m := range mountinfo() {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// cgroupMounts lists the mount points of the cgroup hierarchies.
func cgroupMounts() []string {
	var out []string
	for _, m := range mountinfo() {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, m.point)
		}
	}
	return out
}

type mount struct{ point, fstype string }

func mountinfo() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		sep := strings.Index(line, " - ")
		if len(fields) < 5 || sep < 0 {
			continue
		}
		m := mount{point: unescapeMountPath(fields[4])}
		if rest := strings.Fields(line[sep+3:]); len(rest) > 0 {
			m.fstype = rest[0]
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
