package oom

import (
	"os"
	"path/filepath"
	"testing"
)

// childCgroup lays out a fake v2 cgroup named name below parent.
func childCgroup(t *testing.T, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := mkdir(dir); err != nil {
		t.Fatal(err)
	}
	writeEvents(t, dir, 0, 0)
	write(t, filepath.Join(dir, "cgroup.events"), "populated 1\nfrozen 0\n")
	return dir
}

// markGone does to id's watch what a read of a removed cgroup does.
func markGone(w *Watcher, id string) {
	w.mu.Lock()
	wt := w.byID[id]
	w.mu.Unlock()
	wt.mu.Lock()
	wt.gone, wt.done = true, true
	wt.mu.Unlock()
}

// A container whose cgroup was removed before its final read (the systemd
// driver) and whose init died of SIGKILL gets the kill its parent's
// hierarchical counter shows; without SIGKILL, or with the kill accounted
// for by a sibling, it gets none.
func TestParentSeesKillOfRemovedCgroup(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sigkilled bool
		sibling   bool // the parent's rise is a sibling's reported kill
		want      bool
	}{
		{"SIGKILL, unexplained rise", true, false, true},
		{"no SIGKILL", false, false, false},
		{"rise is a sibling's", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, events := newWatcher(t)
			slice := t.TempDir()
			writeEvents(t, slice, 0, 5) // kills before the containers came
			c1 := childCgroup(t, slice, "c1.scope")
			c2 := childCgroup(t, slice, "c2.scope")
			for id, dir := range map[string]string{"c1": c1, "c2": c2} {
				if err := w.Add(id, dir, true); err != nil {
					t.Fatal(err)
				}
			}
			writeEvents(t, slice, 1, 6)
			if tc.sibling {
				writeEvents(t, c2, 1, 1)
				if err := w.Check("c2"); err != nil {
					t.Fatal(err)
				}
				expect(t, events, Event{ID: "c2", Cgroup: c2, OOMKill: 1, Kills: 1, Level: LevelContainer})
			}
			markGone(w, "c1")
			if _, err := w.Stop("c1", tc.sigkilled); err != nil {
				t.Fatal(err)
			}
			if tc.want {
				expect(t, events, Event{ID: "c1", Cgroup: c1, OOMKill: 1, Kills: 1, Level: LevelUnknown})
			}
			none(t, events)
			// The kill is counted once: once c1 or c2 has it, c2 dying of
			// SIGKILL with its cgroup gone finds nothing left; a c2 that
			// exits by itself takes nothing.
			markGone(w, "c2")
			if _, err := w.Stop("c2", tc.want || tc.sibling); err != nil {
				t.Fatal(err)
			}
			none(t, events)
		})
	}
}

// Each container gone before its final read takes one kill of the
// parent's unexplained rise, never one it already had reported itself, and
// the kill is the parent's limit's (LevelAncestor) when the parent's own
// oom counter (memory.events.local) rose.
func TestParentClaimsOneKillEach(t *testing.T) {
	w, events := newWatcher(t)
	slice := t.TempDir()
	writeEvents(t, slice, 0, 0)
	write(t, filepath.Join(slice, "memory.events.local"), "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
	dirs := map[string]string{}
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		dirs[id] = childCgroup(t, slice, id+".scope")
		if err := w.Add(id, dirs[id], true); err != nil {
			t.Fatal(err)
		}
	}
	// c1 had its own kill reported before its cgroup went: its exit is
	// explained, it takes nothing more.
	writeEvents(t, dirs["c1"], 1, 1)
	if err := w.Check("c1"); err != nil {
		t.Fatal(err)
	}
	expect(t, events, Event{ID: "c1", Cgroup: dirs["c1"], OOMKill: 1, Kills: 1, Level: LevelContainer})
	// Three kills in all, the pod's limit firing: c2 and c3 take one each,
	// c4 finds none left.
	writeEvents(t, slice, 1, 3)
	write(t, filepath.Join(slice, "memory.events.local"), "low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n")
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		markGone(w, id)
		if _, err := w.Stop(id, true); err != nil {
			t.Fatal(err)
		}
		if id == "c2" || id == "c3" {
			expect(t, events, Event{ID: id, Cgroup: dirs[id], OOMKill: 1, Kills: 1, Level: LevelAncestor})
		}
		none(t, events)
	}
}

// A cgroup whose parent has no memory.events (the root) has no parent
// watch and Stop works as before.
func TestNoParentCounter(t *testing.T) {
	w, events := newWatcher(t)
	dir := childCgroup(t, t.TempDir(), "c1.scope") // the temp dir has no memory.events
	if err := w.Add("c1", dir, true); err != nil {
		t.Fatal(err)
	}
	markGone(w, "c1")
	if _, err := w.Stop("c1", true); err != nil {
		t.Fatal(err)
	}
	none(t, events)
	if len(w.parents) != 0 {
		t.Fatalf("parents %v, want none", w.parents)
	}
}

func TestUnaccountedKills(t *testing.T) {
	for _, tc := range []struct{ now, base, seen, want uint64 }{
		{5, 5, 0, 0},
		{6, 5, 0, 1},
		{6, 5, 1, 0},
		{9, 5, 1, 3},
		{4, 5, 0, 0}, // a counter never falls; a smaller read is no rise
		{6, 5, 3, 0}, // more reported than the parent shows
	} {
		if got := unaccountedKills(tc.now, tc.base, tc.seen); got != tc.want {
			t.Errorf("unaccountedKills(%d, %d, %d) = %d, want %d", tc.now, tc.base, tc.seen, got, tc.want)
		}
	}
}

func mkdir(dir string) error { return os.MkdirAll(dir, 0o755) }

// A container whose init lived (it exits by itself) but whose
// memory.events told of a change after the cgroup was gone (a child
// process OOM-killed just before the init exited, the scope removed before
// the watcher could read it) gets the kill its parent's counter shows; a
// notification of its cgroup.events alone (every exit makes one) is not
// enough. Stop comes at once after the notification, as the reaper's can
// before the watcher's goroutine wakes: Stop follows it itself.
func TestParentSeesChildKillOfRemovedCgroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		want bool
	}{
		{"memory.events notified", "memory.events", true},
		{"cgroup.events notified", "cgroup.events", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, events := newWatcher(t)
			slice := t.TempDir()
			writeEvents(t, slice, 0, 5)
			c1 := childCgroup(t, slice, "c1.scope")
			if err := w.Add("c1", c1, true); err != nil {
				t.Fatal(err)
			}
			writeEvents(t, slice, 1, 6)
			markGone(w, "c1")
			// The notification the watcher can no longer follow with a read.
			f, err := os.OpenFile(filepath.Join(c1, tc.file), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("\n")
			f.Close()
			if _, err := w.Stop("c1", false); err != nil {
				t.Fatal(err)
			}
			if tc.want {
				expect(t, events, Event{ID: "c1", Cgroup: c1, OOMKill: 1, Kills: 1, Level: LevelUnknown})
			}
			none(t, events)
		})
	}
}
