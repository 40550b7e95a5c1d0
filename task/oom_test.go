package task

import (
	"context"
	"sync"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"

	"oomshim/oom"
	"oomshim/process"
)

// fakeWatcher reports an OOM from its final read (Stop) or from a Check,
// as the real watcher does when the kernel's notification lags the exit.
type fakeWatcher struct {
	mu      sync.Mutex
	report  oom.Reporter
	onStop  bool
	onCheck bool
	stopped []string
}

func (f *fakeWatcher) Add(id, dir string, v2 bool) error { return nil }
func (f *fakeWatcher) Check(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onCheck {
		f.onCheck = false
		f.report(oom.Event{ID: id, OOMKill: 1, Kills: 1})
	}
	return nil
}
func (f *fakeWatcher) Stop(id string, sigkilled bool) (oom.Counts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.stopped {
		if s == id {
			return oom.Counts{}, oom.ErrNotWatched
		}
	}
	f.stopped = append(f.stopped, id)
	if f.onStop {
		f.onStop = false
		f.report(oom.Event{ID: id, OOMKill: 1, Kills: 1})
		return oom.Counts{OOMKill: 1}, nil
	}
	return oom.Counts{}, nil
}

func withWatcher(h *harness) *fakeWatcher {
	w := &fakeWatcher{report: OOMReporter(context.Background(), h.events)}
	h.svc.oom = w
	return w
}

func TestOOMQueuedBeforeInitExit(t *testing.T) {
	h := newHarness(t, nil)
	w := withWatcher(h)
	init := h.create("c1")
	h.start("c1", "")
	w.onStop = true
	h.svc.HandleExits([]process.Reaped{exit(init.Pid(), 137)})
	h.want("/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit")
	if _, err := h.svc.Delete(context.Background(), &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if len(w.stopped) != 1 {
		t.Fatalf("watch stopped %d times", len(w.stopped))
	}
}

func TestOOMQueuedBeforeExecExit(t *testing.T) {
	h := newHarness(t, nil)
	w := withWatcher(h)
	h.create("c1")
	h.start("c1", "")
	e := h.exec("c1", "e1")
	h.start("c1", "e1")
	w.onCheck = true
	h.svc.HandleExits([]process.Reaped{exit(e.Pid(), 137)})
	h.want("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/oom", "/tasks/exit")
}

// An init that never started and is deleted still has its watch removed,
// so the ID can be re-used.
func TestDeleteStopsWatch(t *testing.T) {
	h := newHarness(t, nil)
	w := withWatcher(h)
	h.create("c1")
	if _, err := h.svc.Delete(context.Background(), &taskapi.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if len(w.stopped) != 1 || w.stopped[0] != "c1" {
		t.Fatalf("stopped %v", w.stopped)
	}
}
