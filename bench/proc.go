package main

import (
	"oomshim/testkit"

	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// shim is one of the two binaries under test.
type shim struct {
	name    string // "ours" or "reference"
	path    string // absolute, symlinks resolved: what /proc/<pid>/exe shows
	version string // first lines of `-v`
}

func newShim(name, path string) (shim, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return shim{}, err
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return shim{}, fmt.Errorf("%s shim: %w", name, err)
	}
	s := shim{name: name, path: resolved}
	if out, err := exec.Command(resolved, "-v").Output(); err == nil {
		var parts []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n")[1:] {
			if f := strings.Fields(l); len(f) >= 2 && f[0] != "Revision:" {
				parts = append(parts, strings.Join(f, " "))
			}
		}
		s.version = strings.Join(parts, ", ")
	}
	return s, nil
}

// shimServers maps container ID to the pid of the long-running shim server
// of binary s that serves this run's containerd (its -address). The short
// `start` processes are left out.
func (e *env) shimServers(s shim) map[string]int {
	out := map[string]int{}
	for _, p := range e.shimProcesses() {
		if p.Exe == s.path && p.Action == "" {
			out[p.ID] = p.PID
		}
	}
	return out
}

// shimProcesses lists processes of either binary whose command line names
// this run's containerd address.
func (e *env) shimProcesses() []testkit.ShimProcess {
	return testkit.ShimProcesses(e.Address, e.cfg.ours.path, e.cfg.ref.path)
}

// smapsRollup returns a process's Rss and Pss in kB.
func smapsRollup(pid int) (rss, pss uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	rss, err1 := statusField(data, "Rss:")
	pss, err2 := statusField(data, "Pss:")
	if err1 != nil {
		return 0, 0, err1
	}
	return rss, pss, err2
}

// ctxSwitches sums voluntary and nonvoluntary context switches over every
// thread of pid, and counts the threads.
func ctxSwitches(pid int) (switches uint64, threads int, err error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread is gone
		}
		v, err1 := statusField(data, "voluntary_ctxt_switches:")
		n, err2 := statusField(data, "nonvoluntary_ctxt_switches:")
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("pid %d task %s: no ctxt_switches in status", pid, t.Name())
		}
		switches += v + n
		threads++
	}
	return switches, threads, nil
}

// statusField reads the first number after key at the start of a line.
func statusField(data []byte, key string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, key) {
			continue
		}
		f := strings.Fields(line[len(key):])
		if len(f) == 0 {
			break
		}
		return strconv.ParseUint(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %q", key)
}

// machine describes the host for the results.
func machine() string {
	cores := 0
	model := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "processor") {
				cores++
			}
			if model == "" && strings.HasPrefix(l, "model name") {
				if i := strings.Index(l, ":"); i >= 0 {
					model = strings.TrimSpace(l[i+1:])
				}
			}
		}
	}
	var memKB uint64
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		memKB, _ = statusField(data, "MemTotal:")
	}
	kernel := ""
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(data))
	}
	cg := "cgroup v1"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cg = "cgroup v2"
	}
	s := fmt.Sprintf("%d cores", cores)
	if model != "" {
		s += " (" + model + ")"
	}
	return fmt.Sprintf("%s, %.1f GiB RAM, Linux %s, %s", s, float64(memKB)/(1<<20), kernel, cg)
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// clockTick is USER_HZ, the unit of the times in /proc/<pid>/stat.
const clockTick = 10 * time.Millisecond

// cpuTime returns the CPU time process pid used itself (its threads'
// schedstat run times, in ns) and that of its reaped children (cutime +
// cstime, in clock ticks): for a shim, the children are its runc commands.
func cpuTime(pid int) (self, children time.Duration, err error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("schedstat of %d/%s: %w", pid, t.Name(), err)
		}
		self += time.Duration(ns)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	for _, idx := range []int{13, 14} { // cutime, cstime
		v, err := strconv.ParseInt(f[idx], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		children += time.Duration(v) * clockTick
	}
	return self, children, nil
}
