package main

import (
	"oomshim/testkit"

	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
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
	if e.Client != nil {
		ctx, cancel := context.WithTimeout(e.nsCtx(context.Background()), 2*time.Minute)
		if cs, err := e.Client.Containers(ctx); err == nil {
			if err := destroyAll(ctx, cs); err != nil {
				progress("cleanup: %v", err)
			}
		}
		if e.image != nil {
			_ = e.Client.ImageService().Delete(ctx, e.image.Name())
		}
		_ = e.Client.NamespaceService().Delete(ctx, e.ns)
		cancel()
		// Deleted tasks' shims exit once they have flushed their events to
		// containerd: give them the chance before containerd goes.
		e.waitShimsGone(context.Background(), 10*time.Second)
	}
	if e.Stop(30 * time.Second) {
		progress("cleanup: containerd ignored SIGTERM for 30s, killed it")
	}
	// Shims of this run that outlived containerd (only after a failure).
	for _, p := range e.shimProcesses() {
		progress("cleanup: killing leftover shim pid %d (%s)", p.PID, p.ID)
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	// runc containers and cgroups left behind (only after a failure:
	// shims delete their containers).
	for _, id := range testkit.DeleteRuncContainers(filepath.Join(e.cfg.toolsBin, "runc"), filepath.Join(runcRoot, e.ns)) {
		progress("cleanup: runc delete --force %s", id)
	}
	_ = os.Remove(filepath.Join(runcRoot, e.ns))
	if err := testkit.RemoveNamespaceCgroups(e.ns); err != nil {
		progress("cleanup: %v", err)
	}
	if e.cfg.keepLog {
		e.keepLog()
	}
	if err := e.Remove(); err != nil {
		progress("cleanup: %v", err)
	}
}
