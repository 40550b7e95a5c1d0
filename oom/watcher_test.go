package oom

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeCgroup lays out the files a watcher reads in a temp dir.
func fakeCgroup(t *testing.T, v2 bool) string {
	t.Helper()
	dir := t.TempDir()
	if v2 {
		writeEvents(t, dir, 0, 0)
		write(t, filepath.Join(dir, "cgroup.events"), "populated 1\nfrozen 0\n")
	} else {
		writeOOMControl(t, dir, 0)
		write(t, filepath.Join(dir, "memory.limit_in_bytes"), "20971520\n")
		write(t, filepath.Join(dir, "memory.max_usage_in_bytes"), "4096\n")
		write(t, filepath.Join(dir, "cgroup.event_control"), "")
	}
	return dir
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeEvents(t *testing.T, dir string, max, oomKill int) {
	write(t, filepath.Join(dir, "memory.events"),
		"low 0\nhigh 0\nmax "+itoa(max)+"\noom "+itoa(oomKill)+"\noom_kill "+itoa(oomKill)+"\noom_group_kill 0\n")
}

func writeOOMControl(t *testing.T, dir string, oomKill int) {
	write(t, filepath.Join(dir, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill "+itoa(oomKill)+"\n")
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func newWatcher(t *testing.T) (*Watcher, chan Event) {
	t.Helper()
	events := make(chan Event, 16)
	w, err := NewWatcher(context.Background(), func(e Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, events
}

func expect(t *testing.T, events chan Event, want Event) {
	t.Helper()
	select {
	case got := <-events:
		if got != want {
			t.Fatalf("event %+v, want %+v", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no event; want %+v", want)
	}
}

func none(t *testing.T, events chan Event) {
	t.Helper()
	select {
	case got := <-events:
		t.Fatalf("unexpected event %+v", got)
	default:
	}
}

func TestV2NotifiedRise(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   int
		level Level
	}{
		{"own limit", 5, LevelContainer},
		{"ancestor limit", 1, LevelAncestor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, events := newWatcher(t)
			dir := fakeCgroup(t, true)
			writeEvents(t, dir, 1, 2) // history before Add is the baseline
			if err := w.Add("c1", dir, true); err != nil {
				t.Fatal(err)
			}
			writeEvents(t, dir, tc.max, 3)
			expect(t, events, Event{ID: "c1", Cgroup: dir, OOMKill: 3, Kills: 1, Level: tc.level})
			if c, err := w.Stop("c1", false); err != nil || c.OOMKill != 3 {
				t.Fatalf("stop: %+v %v", c, err)
			}
			none(t, events)
		})
	}
}

// A change of memory.events that is not an OOM kill (low/high/max only)
// reports nothing.
func TestV2OtherCountersAreQuiet(t *testing.T) {
	w, events := newWatcher(t)
	dir := fakeCgroup(t, true)
	if err := w.Add("c1", dir, true); err != nil {
		t.Fatal(err)
	}
	writeEvents(t, dir, 4, 0)
	if err := w.Check("c1"); err != nil { // serialises with the goroutine's read
		t.Fatal(err)
	}
	none(t, events)
	w.Stop("c1", false)
	none(t, events)
}

// With no notification at all (the v1 fake has no eventfd source), Stop's
// final read still reports the OOM, and before Stop returns.
func TestStopFinalRead(t *testing.T) {
	w, events := newWatcher(t)
	dir := fakeCgroup(t, false)
	if err := w.Add("c1", dir, false); err != nil {
		t.Fatal(err)
	}
	writeOOMControl(t, dir, 1)
	write(t, filepath.Join(dir, "memory.max_usage_in_bytes"), "20967424\n") // reached its own limit
	if _, err := w.Stop("c1", false); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-events:
		if got.OOMKill != 1 || got.Kills != 1 || got.Level != LevelContainer {
			t.Fatalf("event %+v", got)
		}
	default:
		t.Fatal("Stop returned before reporting the OOM its final read found")
	}
	if _, err := w.Stop("c1", false); !errors.Is(err, ErrNotWatched) {
		t.Fatalf("second stop: %v", err)
	}
}

func TestCheckReportsOnce(t *testing.T) {
	w, events := newWatcher(t)
	dir := fakeCgroup(t, false)
	if err := w.Add("c1", dir, false); err != nil {
		t.Fatal(err)
	}
	writeOOMControl(t, dir, 2)
	w.Check("c1")
	w.Check("c1")
	w.Stop("c1", false)
	expect(t, events, Event{ID: "c1", Cgroup: dir, OOMKill: 2, Kills: 2, Level: LevelAncestor})
	none(t, events)
}

// A re-used container ID must be watched again (containerd #13853).
func TestReusedID(t *testing.T) {
	w, events := newWatcher(t)
	dir := fakeCgroup(t, true)
	if err := w.Add("c1", dir, true); err != nil {
		t.Fatal(err)
	}
	if err := w.Add("c1", dir, true); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate add: %v", err)
	}
	w.Stop("c1", false)
	dir2 := fakeCgroup(t, true)
	if err := w.Add("c1", dir2, true); err != nil {
		t.Fatalf("re-add after stop: %v", err)
	}
	writeEvents(t, dir2, 1, 1)
	expect(t, events, Event{ID: "c1", Cgroup: dir2, OOMKill: 1, Kills: 1, Level: LevelContainer})
}

// A cgroup that disappears ends its watch with the last known count.
func TestGoneCgroup(t *testing.T) {
	w, events := newWatcher(t)
	dir := fakeCgroup(t, true)
	writeEvents(t, dir, 0, 4)
	if err := w.Add("c1", dir, true); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	c, err := w.Stop("c1", false)
	if err != nil || c.OOMKill != 4 {
		t.Fatalf("stop of a gone cgroup: %+v %v", c, err)
	}
	none(t, events)
}

func TestAddErrors(t *testing.T) {
	w, _ := newWatcher(t)
	if err := w.Add("", fakeCgroup(t, true), true); err == nil {
		t.Fatal("empty id accepted")
	}
	if err := w.Add("c1", filepath.Join(t.TempDir(), "missing"), true); err == nil {
		t.Fatal("missing cgroup accepted")
	}
	bad := fakeCgroup(t, true)
	write(t, filepath.Join(bad, "memory.events"), "oom_kill zz\n")
	if err := w.Add("c2", bad, true); !errors.Is(err, ErrMalformed) {
		t.Fatalf("malformed baseline: %v", err)
	}
	w.Close()
	if err := w.Add("c3", fakeCgroup(t, true), true); !errors.Is(err, ErrClosed) {
		t.Fatalf("add after close: %v", err)
	}
}

// A v1-only shim holds no inotify instance: they are limited per user.
func TestNoInotifyForV1(t *testing.T) {
	w, _ := newWatcher(t)
	if err := w.Add("c1", fakeCgroup(t, false), false); err != nil {
		t.Fatal(err)
	}
	if ino := w.ino.Load(); ino >= 0 {
		t.Fatalf("inotify instance %d made for a v1 cgroup", ino)
	}
	if err := w.Add("c2", fakeCgroup(t, true), true); err != nil {
		t.Fatal(err)
	}
	if w.ino.Load() < 0 {
		t.Fatal("no inotify instance for a v2 cgroup")
	}
}

func TestCloseStopsGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	for i := 0; i < 10; i++ {
		w, err := NewWatcher(context.Background(), func(Event) {})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Add("c", fakeCgroup(t, true), true); err != nil {
			t.Fatal(err)
		}
		w.Close()
		<-w.stopped
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("goroutines: %d before, %d after", before, after)
	}
}

// watchV1 watches container c1 in a fake cgroup v1 directory; notify
// signals its eventfd as the kernel does when the memory cgroup enters OOM.
func watchV1(t *testing.T) (w *Watcher, events chan Event, dir string, notify func()) {
	t.Helper()
	w, events = newWatcher(t)
	dir = fakeCgroup(t, false)
	if err := w.Add("c1", dir, false); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	efd := w.byID["c1"].efd
	w.mu.Unlock()
	return w, events, dir, func() {
		one := [8]byte{1}
		if _, err := unix.Write(efd, one[:]); err != nil {
			t.Fatal(err)
		}
	}
}

// cgroup v1 signals the eventfd when the memcg enters OOM, before oom_kill
// counts the kill: the watcher looks again shortly and reports the kill
// once it is counted, once, even if the kernel signals more than once.
func TestV1NotificationBeforeCount(t *testing.T) {
	w, events, dir, notify := watchV1(t)
	notify() // what the kernel does, here twice for one OOM
	notify()
	writeOOMControl(t, dir, 1) // the kill is counted after the signal
	expect(t, events, Event{ID: "c1", Cgroup: dir, OOMKill: 1, Kills: 1, Level: LevelAncestor})
	if _, err := w.Stop("c1", false); err != nil {
		t.Fatal(err)
	}
	none(t, events)
}

// TestV1CountAfterFastRereads: a kill counted only after the fast re-reads
// (the watcher already re-reads at a longer interval) is still reported by
// the slower ones, once; then the timer is left disarmed.
func TestV1CountAfterFastRereads(t *testing.T) {
	w, events, dir, notify := watchV1(t)
	notify()
	// The one-shot timer is armed for at most recheckFast while the fast
	// re-reads last, for longer after.
	waitTimer(t, w, "armed for a slow re-read", func(v time.Duration) bool { return v > recheckFast })
	none(t, events)
	writeOOMControl(t, dir, 1)
	expect(t, events, Event{ID: "c1", Cgroup: dir, OOMKill: 1, Kills: 1, Level: LevelAncestor})
	waitTimer(t, w, "disarmed", func(v time.Duration) bool { return v == 0 })
	none(t, events)
}

// waitTimer waits until the re-read timer's time to expiry satisfies ok,
// for at most 5 s.
func waitTimer(t *testing.T, w *Watcher, what string, ok func(time.Duration) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var cur unix.ItimerSpec
		if err := unix.TimerfdGettime(int(w.timer.Load()), &cur); err != nil {
			t.Fatal(err)
		}
		if v := time.Duration(cur.Value.Nano()); ok(v) {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("re-read timer never %s (now %v)", what, v)
		}
		runtime.Gosched()
	}
}
