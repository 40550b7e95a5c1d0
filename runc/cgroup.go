package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
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
	path := cgroup1.PidPath(pid)
	mem, err := path(cgroup1.Memory)
	if err != nil {
		return nil, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	cg, err := cgroup1.Load(path)
	if err != nil {
		return nil, fmt.Errorf("load cgroups of pid %d: %w", pid, err)
	}
	return &Cgroup{memory: filepath.Join(cgroupRoot, string(cgroup1.Memory), mem), v1: cg}, nil
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
			m, err = c.v1.Stat(cgroup1.IgnoreNotExist)
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

// FinalStats is what Stats answers after the cgroup has gone: the memory
// events as the OOM watcher last read them. CRI cross-checks oom_kill on
// an exit 137, and with the systemd driver the scope can vanish before
// anyone asked.
func (c *Cgroup) FinalStats(oomKill, max uint64) (*anypb.Any, error) {
	if c.unified {
		return typeurl.MarshalAnyToProto(&stats2.Metrics{
			MemoryEvents: &stats2.MemoryEvents{OomKill: oomKill, Oom: oomKill, Max: max},
		})
	}
	return typeurl.MarshalAnyToProto(&stats1.Metrics{
		MemoryOomControl: &stats1.MemoryOomControl{OomKill: oomKill},
	})
}

// gone reports whether the memory cgroup's directory no longer exists.
func (c *Cgroup) gone() bool {
	_, err := os.Stat(c.memory)
	return errors.Is(err, fs.ErrNotExist)
}

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}
