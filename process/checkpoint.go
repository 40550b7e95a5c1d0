package process

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"oomshim/runc"
)

// CheckpointConfig is a checkpoint request: containerd's image path and
// runc's CheckpointOptions.
type CheckpointConfig struct {
	ImagePath  string // where criu writes the image
	WorkPath   string // criu's work files and log; default: a directory in the bundle, removed after
	ParentPath string // a pre-dump this dump builds on
	// Exit ends the container after the dump; otherwise it runs on.
	Exit                bool
	OpenTCP             bool
	ExternalUnixSockets bool
	Terminal            bool
	FileLocks           bool
	EmptyNamespaces     []string
	CgroupsMode         string // soft, full, strict or "" (runc's default)
}

// Checkpoint dumps the running or paused container with `runc checkpoint`.
// A failure's error carries criu's last error line; its whole log is kept
// in the bundle as criu-dump.log.
func (p *Init) Checkpoint(ctx context.Context, c CheckpointConfig) error {
	// No pause or resume meanwhile: criu freezes the container itself.
	p.freeze.Lock()
	defer p.freeze.Unlock()
	switch st := p.Status(); st {
	case Running, Paused:
	case Stopped, Deleted:
		return ErrExited
	default:
		return fmt.Errorf("checkpoint a %s container: %w", st, ErrInvalidTransition)
	}
	if c.ImagePath == "" {
		c.ImagePath = p.config.CriuImagePath
	}
	if c.ImagePath == "" {
		return fmt.Errorf("checkpoint: no image path (the request's path and the runtime option CriuImagePath are empty): %w", errdefs.ErrInvalidArgument)
	}
	work := c.WorkPath
	if work == "" {
		work = p.config.CriuWorkPath
	}
	if work == "" {
		work = filepath.Join(p.bundle, "criu-work")
		defer os.RemoveAll(work)
	}
	var actions []gorunc.CheckpointAction
	if !c.Exit {
		actions = append(actions, gorunc.LeaveRunning)
	}
	// stdio the shim opened (containerd's fifos) are external to criu.
	keys, err := runc.ExternalStdio(p.Pid())
	if err != nil {
		return fmt.Errorf("checkpoint: the init's stdio: %w", err)
	}
	opts := &gorunc.CheckpointOpts{
		ImagePath:                c.ImagePath,
		WorkDir:                  work,
		ParentPath:               c.ParentPath,
		AllowOpenTCP:             c.OpenTCP,
		AllowExternalUnixSockets: c.ExternalUnixSockets,
		AllowTerminal:            c.Terminal,
		FileLocks:                c.FileLocks,
		EmptyNamespaces:          c.EmptyNamespaces,
		Cgroups:                  gorunc.CgroupMode(c.CgroupsMode),
	}
	err = runc.WithCriuConfig(p.bundle, runc.DumpConfig(keys), func() error {
		return p.runtime.Checkpoint(ctx, p.id, opts, actions...)
	})
	if err != nil {
		return p.criuError(ctx, "checkpoint", filepath.Join(work, "dump.log"), "criu-dump.log", err)
	}
	if err := runc.WriteStdioKeys(c.ImagePath, keys); err != nil {
		return fmt.Errorf("checkpoint: record the stdio in the image: %w", err)
	}
	return nil
}

// prepareRestore records the `runc restore` that Start runs for a
// container created from a checkpoint, with the stdio and options `runc
// create` would have had.
func (p *Init) prepareRestore(io *IO, opts *gorunc.CreateOpts) {
	// criu's work files (restore.log): the runtime option, else the
	// bundle's work directory (containerd's, kept after the task), as
	// the stock shim does.
	work := p.config.CriuWorkPath
	if work == "" {
		if _, err := os.Stat(filepath.Join(p.bundle, "work")); err == nil {
			work = filepath.Join(p.bundle, "work")
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.io = io
	p.restore = &gorunc.RestoreOpts{
		CheckpointOpts: gorunc.CheckpointOpts{
			ImagePath:  p.checkpoint,
			WorkDir:    work,
			ParentPath: p.parentCheckpoint,
		},
		IO:            opts.IO,
		Detach:        true,
		PidFile:       opts.PidFile,
		NoPivot:       opts.NoPivot,
		NoSubreaper:   true,
		ConsoleSocket: opts.ConsoleSocket,
	}
}

// runRestore restores the container (`runc restore --detach`): its
// restored process becomes the init. On failure nothing is left in runc.
func (p *Init) runRestore(ctx context.Context) error {
	p.mu.Lock()
	r, io := p.restore, p.io
	p.mu.Unlock()
	keys, err := runc.ReadStdioKeys(r.ImagePath)
	if err != nil {
		p.forceDelete(ctx)
		return fmt.Errorf("restore: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	err = runc.WithCriuConfig(p.bundle, runc.RestoreConfig(keys), func() error {
		_, err := p.runtime.Restore(ctx, p.id, p.bundle, r)
		return err
	})
	if err != nil {
		p.forceDelete(ctx)
		work := r.WorkDir
		if work == "" {
			work = r.ImagePath
		}
		return p.criuError(ctx, "restore", filepath.Join(work, "restore.log"), "criu-restore.log", err)
	}
	if err := io.Attach(ctx); err != nil {
		p.forceDelete(ctx)
		return fmt.Errorf("container %s terminal: %w", p.id, err)
	}
	pid, err := gorunc.ReadPidFile(r.PidFile)
	if err != nil {
		p.forceDelete(ctx)
		return fmt.Errorf("read the restored init's pid: %w", err)
	}
	cg, err := runc.LoadCgroup(pid)
	if err != nil {
		log.G(ctx).WithError(err).WithField("container_id", p.id).Warn("no cgroup for the restored container: no OOM watch, no stats")
	}
	p.mu.Lock()
	p.pid, p.cgroup, p.restore = pid, cg, nil
	if p.status == Created {
		p.status = Running
	}
	p.mu.Unlock()
	return nil
}

// criuError is a failed runc checkpoint or restore, with criu's first error
// line from its log; the log is copied into the bundle as keep.
func (p *Init) criuError(ctx context.Context, op, criuLog, keep string, err error) error {
	werr := runc.WrapError(op, p.bundle, err)
	data, rerr := os.ReadFile(criuLog)
	if rerr != nil {
		return werr
	}
	kept := filepath.Join(p.bundle, keep)
	if err := os.WriteFile(kept, data, 0o600); err != nil {
		log.G(ctx).WithError(err).Warn("keep criu's log")
		kept = criuLog
	}
	if line := firstCriuError(data); line != "" {
		return fmt.Errorf("%w; criu: %s (log %s)", werr, line, kept)
	}
	return fmt.Errorf("%w (criu log %s)", werr, kept)
}

// firstCriuError returns the first line of a criu log that reports an
// error, without its timestamp: the cause (the last ones say only that
// the dump failed).
func firstCriuError(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := sc.Text()
		if i := strings.Index(l, "Error ("); i >= 0 {
			return strings.TrimSpace(l[i:])
		}
	}
	return ""
}
