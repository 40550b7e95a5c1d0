package oom

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

// TestEveryKillLogged: the watcher's goroutine writes a kill's log
// line after the reports of its wakeup; every kill still gets its line,
// with the counters, once.
func TestEveryKillLogged(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))
	events := make(chan Event, 16)
	w, err := NewWatcher(ctx, func(e Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ids := []string{"c1", "c2", "c3"}
	for _, id := range ids {
		dir := fakeCgroup(t, false)
		if err := w.Add(id, dir, false); err != nil {
			t.Fatal(err)
		}
		writeOOMControl(t, dir, 1) // counted before the notification
	}
	one := [8]byte{1}
	for _, id := range ids {
		w.mu.Lock()
		efd := w.byID[id].efd
		w.mu.Unlock()
		if _, err := unix.Write(efd, one[:]); err != nil {
			t.Fatal(err)
		}
	}
	for range ids {
		select {
		case <-events:
		case <-time.After(10 * time.Second):
			t.Fatal("a kill was not reported")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var logged []string
		for _, e := range hook.AllEntries() {
			if e.Message == "container OOM-killed" && e.Data["oom_kill"] == uint64(1) && e.Data["kills"] == uint64(1) {
				logged = append(logged, e.Data["container_id"].(string))
			}
		}
		sort.Strings(logged)
		if len(logged) == len(ids) {
			for i := range ids {
				if logged[i] != ids[i] {
					t.Fatalf("logged kills of %v, want %v", logged, ids)
				}
			}
			return
		}
		if len(logged) > len(ids) || time.Now().After(deadline) {
			t.Fatalf("logged kills of %v, want one line each for %v", logged, ids)
		}
		time.Sleep(time.Millisecond)
	}
}
