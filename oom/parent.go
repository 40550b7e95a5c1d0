package oom

import (
	"os"
	"path/filepath"
	"sync"
)

// parent is the parent cgroup of watched v2 cgroups: a Kubernetes pod's
// slice, or the slice a container was put in. Its memory.events is
// hierarchical (its oom_kill counts every kill in its subtree) and it
// outlives the containers' cgroups. That matters with the systemd cgroup
// driver: systemd removes a container's scope as soon as the scope's last
// process is gone, which for an OOM-killed container can be before the
// watcher has read the scope's own memory.events (seen in the systemd lane
// in 5 of 10 runs, by 6.5 ms). The parent's counter then still tells of
// the kill.
//
// A kill is attributed to a container whose cgroup was gone before its
// final read only when the container's init died of SIGKILL, no OOM kill
// of it was reported before (one TaskOOM explains the exit), and the
// parent's counter rose beyond what the reports for its watched children
// account for; it then takes one kill of that rise, so that every sibling
// it cannot tell apart from keeps one. Kills in children the shim does
// not watch are counted too: in a pod's slice every container is the pod
// shim's; containers of several shims put in one slice could take each
// other's kill when they die at once.
//
// Whose limit fired is read from the parent's memory.events.local, whose
// counters are the parent's own: a rise of its "oom" means the parent's
// limit (a pod's) fired, so the kill is LevelAncestor; otherwise it stays
// LevelUnknown (the container's own limit, most likely, but its counters
// are gone).
type parent struct {
	dir string

	mu        sync.Mutex
	base      uint64            // the parent's oom_kill when the first child was added
	baseLocal uint64            // the parent's own (memory.events.local) oom count then
	seen      uint64            // kills reported for children since then
	children  map[*watch]uint64 // each child's oom_kill when it was added
}

// readParentKills reads the oom_kill count of the cgroup at dir.
func readParentKills(dir string) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(dir, "memory.events"))
	if err != nil {
		return 0, err
	}
	return parseKeyed(data, "oom_kill")
}

// readLocalOOMs reads the count of OOMs of the cgroup at dir's own limit
// (memory.events.local, Linux 5.2 and later); 0 where it is missing.
func readLocalOOMs(dir string) uint64 {
	data, err := os.ReadFile(filepath.Join(dir, "memory.events.local"))
	if err != nil {
		return 0
	}
	n, _ := parseKeyed(data, "oom")
	return n
}

// parentOf returns the parent of v2 cgroup dir, starting it when wt is its
// first child, or nil when the parent has no memory.events (the root).
// w.mu is held.
func (w *Watcher) parentOf(wt *watch) *parent {
	dir := filepath.Dir(wt.dir)
	p := w.parents[dir]
	if p == nil {
		base, err := readParentKills(dir)
		if err != nil {
			return nil
		}
		p = &parent{dir: dir, base: base, baseLocal: readLocalOOMs(dir), children: map[*watch]uint64{}}
		w.parents[dir] = p
	}
	p.mu.Lock()
	p.children[wt] = wt.last.OOMKill
	p.mu.Unlock()
	return p
}

// leave takes wt off p; the last child ends p. w.mu is held.
func (w *Watcher) leave(p *parent, wt *watch) {
	p.mu.Lock()
	delete(p.children, wt)
	empty := len(p.children) == 0
	p.mu.Unlock()
	if empty {
		delete(w.parents, p.dir)
	}
}

// counted records kills reported for a child of p.
func (p *parent) counted(kills uint64) {
	p.mu.Lock()
	p.seen += kills
	p.mu.Unlock()
}

// claim takes one of the kills in p's subtree since its first child was
// added that no report has accounted for, if there is one, and says whose
// limit fired: LevelAncestor when p's own limit did since then.
func (p *parent) claim() (bool, Level) {
	now, err := readParentKills(p.dir)
	if err != nil {
		return false, 0
	}
	local := readLocalOOMs(p.dir)
	p.mu.Lock()
	defer p.mu.Unlock()
	if unaccountedKills(now, p.base, p.seen) == 0 {
		return false, 0
	}
	p.seen++
	if local > p.baseLocal {
		return true, LevelAncestor
	}
	return true, LevelUnknown
}

// unaccountedKills is the rise of a parent's counter (now over base) that
// the reports so far (seen) do not explain; never negative.
func unaccountedKills(now, base, seen uint64) uint64 {
	if now <= base || now-base <= seen {
		return 0
	}
	return now - base - seen
}
