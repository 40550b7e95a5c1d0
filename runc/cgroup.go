package runc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// ErrCgroupGone is returned by Stats once the container's cgroup is gone.
var ErrCgroupGone = errors.New("runc: container cgroup is gone")

// Cgroup is a container's cgroup, resolved from its init's pid right after
// `runc create`, so it stays addressable after that pid is gone. It serves
// the systemd driver too: the path comes from /proc/<pid>/cgroup, not from
// the spec's cgroupsPath.
type Cgroup struct {
	unified bool
	memory  string // the memory cgroup's directory
	v1      cgroup1.Cgroup
	v1path  cgroup1.Path
	v2      *cgroup2.Manager
}

// LoadCgroup resolves the cgroup of pid.
func LoadCgroup(pid int) (*Cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		return &Cgroup{unified: true, memory: filepath.Join(cgroupRoot, group), v2: m}, nil
	}
	path, err := pidPathV1(pid)
	if err != nil {
		return nil, fmt.Errorf("cgroups of pid %d: %w", pid, err)
	}
	mem, err := path(cgroup1.Memory)
	if err != nil {
		return nil, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	cg, err := cgroup1.Load(path)
	if err != nil {
		return nil, fmt.Errorf("load cgroups of pid %d: %w", pid, err)
	}
	return &Cgroup{memory: filepath.Join(cgroupRoot, string(cgroup1.Memory), mem), v1: cg, v1path: path}, nil
}

// pidPathV1 is cgroup1.PidPath(pid) without its cost: the library finds
// each controller's mount root by reading /proc/self/mountinfo once per
// controller, for every container (13 reads and about 70 kB of garbage per
// container on the benchmark's host, more on a node with many mounts, where
// the lines are long); here each root is looked up once per shim
// (v1Roots).
// The paths are the library's: each controller's cgroup from
// /proc/<pid>/cgroup, made relative to its mount's root, which is not "/"
// when the shim runs in a cgroup namespace (TestPidPathV1MatchesLibrary).
func pidPathV1(pid int) (cgroup1.Path, error) {
	file := fmt.Sprintf("/proc/%d/cgroup", pid)
	paths, _, err := cgroups.ParseCgroupFileUnified(file)
	if err != nil {
		return nil, fmt.Errorf("parse cgroup file %s: %w", file, err)
	}
	if err := relativeToRoots(paths, v1Roots.get); err != nil {
		return nil, err
	}
	return func(name cgroup1.Name) (string, error) {
		if p, ok := paths[string(name)]; ok {
			return p, nil
		}
		if p, ok := paths["name="+string(name)]; ok {
			return p, nil
		}
		return "", cgroup1.ErrControllerNotActive
	}, nil
}

// relativeToRoots rewrites each hierarchy's cgroup in paths relative to
// the root of that hierarchy's mount, as roots finds them.
func relativeToRoots(paths map[string]string, roots func(names []string) (map[string]string, error)) error {
	names := make([]string, 0, len(paths))
	for name := range paths {
		names = append(names, name)
	}
	found, err := roots(names)
	if err != nil {
		return err
	}
	for name, p := range paths {
		root, ok := found[name]
		if !ok {
			return fmt.Errorf("%s: %w", name, cgroup1.ErrNoCgroupMountDestination)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			rel = root // the library's choice, kept
		}
		paths[name] = filepath.Join("/", rel)
	}
	return nil
}

// v1Roots holds, for each cgroup v1 controller and named hierarchy
// ("name=systemd"), the root of the first cgroup mount whose superblock
// options name it, as the library's lookup takes it from mountinfo. The
// hierarchies are mounted when the machine boots and stay, so each is
// looked up once per shim; and a lookup reads mountinfo only up to the
// line where it has found all it needs. The cgroup mounts come early in
// mountinfo, before the containers' mounts, of which a node with many pods
// has hundreds, with long lines.
var v1Roots mountRoots

type mountRoots struct {
	mu    sync.Mutex
	roots map[string]string
}

// get returns the mount roots of the named hierarchies it finds; a name
// missing from the result has no cgroup v1 mount.
func (r *mountRoots) get(names []string) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	wanted := make(map[string]bool, len(names))
	for _, name := range names {
		if _, ok := r.roots[name]; !ok {
			wanted[name] = true
		}
	}
	if len(wanted) > 0 {
		if r.roots == nil {
			r.roots = make(map[string]string)
		}
		seen := make(map[string]bool)
		_, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
			if m.FSType != "cgroup" {
				return true, false
			}
			for _, opt := range strings.Split(m.VFSOptions, ",") {
				if seen[opt] {
					continue // the first mount of a hierarchy counts
				}
				seen[opt] = true
				r.roots[opt] = m.Root
				delete(wanted, opt)
			}
			return true, len(wanted) == 0
		})
		if err != nil {
			return nil, fmt.Errorf("read the cgroup mounts: %w", err)
		}
	}
	found := make(map[string]string, len(names))
	for _, name := range names {
		if root, ok := r.roots[name]; ok {
			found[name] = root
		}
	}
	return found, nil
}

// MemoryDir is the directory of the container's memory cgroup.
func (c *Cgroup) MemoryDir() string { return c.memory }

// Unified reports whether the cgroup is on the v2 hierarchy.
func (c *Cgroup) Unified() bool { return c.unified }

// Stats returns the cgroup's metrics as containerd's CRI expects them:
// io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics.
func (c *Cgroup) Stats() (*anypb.Any, error) {
	var (
		m   any
		err error
	)
	if c.unified {
		var s2 *stats2.Metrics
		s2, err = c.v2.Stat()
		m = s2
		// cgroup2's Stat skips missing files instead of failing, so a
		// removed cgroup reads as empty metrics: look at the directory.
		if err == nil && c.gone() {
			err = fs.ErrNotExist
		}
	} else {
		if c.gone() {
			err = fs.ErrNotExist
		} else {
			m, err = c.statV1()
		}
	}
	if err != nil {
		if errors.Is(err, cgroup1.ErrCgroupDeleted) || isNotExist(err) {
			return nil, fmt.Errorf("%w: %w", ErrCgroupGone, err)
		}
		return nil, fmt.Errorf("read cgroup stats: %w", err)
	}
	return typeurl.MarshalAnyToProto(m)
}

// v1Stater is what the library's cgroup v1 controllers that report
// metrics have in common.
type v1Stater interface {
	Stat(path string, stats *stats1.Metrics) error
}

// statV1 fills the metrics as cgroup1's Stat(IgnoreNotExist) does, from
// the same controllers' own Stat, one after another on the caller's
// goroutine. The library's Stat starts a goroutine per controller for
// every call; in a shim with one P that bought no parallelism, and the
// goroutines' stack growth and scheduling were a quarter of the samples
// of a Stats call (bench/PROFILE.md, section 9).
func (c *Cgroup) statV1() (*stats1.Metrics, error) {
	m := &stats1.Metrics{CPU: &stats1.CPUStat{Throttling: &stats1.Throttle{}, Usage: &stats1.CPUUsage{}}}
	for _, s := range c.v1.Subsystems() {
		st, ok := s.(v1Stater)
		if !ok {
			continue
		}
		p, err := c.v1path(s.Name())
		if err != nil {
			return nil, err
		}
		if err := st.Stat(p, m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return m, nil
}

// gone reports whether the memory cgroup's directory no longer exists.
func (c *Cgroup) gone() bool {
	_, err := os.Stat(c.memory)
	return errors.Is(err, fs.ErrNotExist)
}

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}

// RemoveLeftoverCgroup removes the cgroupfs cgroup that a `runc create` of
// container id which did not finish (runc killed, or its shim) can leave:
// runc has no state for such a container, so `runc delete` cannot. Only
// the cgroup named in the bundle's spec is considered, only when its last
// element is the container's id (as containerd and kubelet name them),
// and it is removed only while it and its children hold no process. With
// the systemd driver there is nothing to do: systemd removes the
// container's scope once its last process is gone.
func RemoveLeftoverCgroup(bundle, id string, systemd bool) error {
	if systemd {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return err
	}
	var spec struct {
		Linux *struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("read the bundle's spec: %w", err)
	}
	if spec.Linux == nil {
		return nil
	}
	path := filepath.Clean(spec.Linux.CgroupsPath)
	if !filepath.IsAbs(path) || filepath.Base(path) != id {
		return nil
	}
	var errs []error
	if cgroups.Mode() == cgroups.Unified {
		errs = append(errs, removeV2(path, cgroupRoot))
	} else {
		cg, err := cgroup1.Load(cgroup1.StaticPath(path))
		switch {
		case errors.Is(err, cgroup1.ErrCgroupDeleted):
		case err != nil:
			errs = append(errs, err)
		default:
			errs = append(errs, cg.Delete())
		}
		if cgroups.Mode() == cgroups.Hybrid {
			errs = append(errs, removeV2(path, filepath.Join(cgroupRoot, "unified")))
		}
	}
	return errors.Join(errs...)
}

// removeV2 removes the cgroup v2 group path under mountpoint if it exists
// and holds no process.
func removeV2(path, mountpoint string) error {
	if _, err := os.Stat(filepath.Join(mountpoint, path)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(mountpoint))
	if err != nil {
		return err
	}
	return m.Delete()
}
