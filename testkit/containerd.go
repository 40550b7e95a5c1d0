package testkit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// maxSocketDirLen is containerd's limit on the shim socket_dir (sun_path
// minus the 64-character socket name).
const maxSocketDirLen = 38

// RuncRoot is where the runc shims keep runc state when the runtime options
// leave Root empty (containerd's process.RuncRoot); namespaces are subdirs.
const RuncRoot = "/run/containerd/runc"

// Options describe a private containerd.
type Options struct {
	Prefix   string // of its directory under BaseDir, such as "oomshim-test-"
	Title    string // what the generated config says it is for
	Shim     string // the binary on PATH as containerd-shim-runc-v2
	ToolsBin string // holds containerd and runc; on PATH after Shim's dir
	LogLevel string // containerd's; "debug" also gives the shims -debug
	// CRI, when set, serves Kubernetes' CRI on CRIAddress with this pinned
	// sandbox (pause) image; otherwise the CRI plugin is off. Pods get no
	// CNI: use host-network sandboxes.
	CRI *CRIOptions
	// ClientOpts are added to the client's (a timeout, a default namespace).
	ClientOpts []client.Opt
	// Containerd is the daemon binary, by default ToolsBin's containerd.
	Containerd string
	// ConfigVersion 2 writes the configuration format of containerd 1.x
	// (CRI as the one plugin io.containerd.grpc.v1.cri); by default 3.
	ConfigVersion int
}

// CRIOptions configure containerd's CRI plugin.
type CRIOptions struct {
	SandboxImage string
	// SystemdCgroup sets the runc runtime's option of that name, as
	// kubeadm's nodes do: pods' CgroupParent is then a systemd slice.
	SystemdCgroup bool
}

// Containerd is a running private containerd.
type Containerd struct {
	Base         string // /run/<Prefix>NNN: everything of this daemon lives here (see baseDir)
	Root         string
	State        string
	SocketDir    string // shim sockets (short: see maxSocketDirLen)
	PathDir      string // holds the containerd-shim-runc-v2 symlink, first on PATH
	FifoDir      string // for client and ctr fifos
	ConfigPath   string
	Address      string // gRPC socket (also CRI's, when enabled)
	TTRPCAddress string // ttrpc socket
	LogPath      string // containerd's stdout and stderr

	Client *client.Client

	toolsBin    string
	binary      string // containerd
	clientOpts  []client.Opt
	logFile     *os.File
	cmd         *exec.Cmd
	exited      chan struct{}
	waitErr     error
	createdDirs []string // global dirs that did not exist before
}

// socketsTemplate is the part both configuration formats share.
var socketsTemplate = template.Must(template.New("sockets").Parse(`[grpc]
  address = "{{.Address}}"

[ttrpc]
  address = "{{.TTRPCAddress}}"

[debug]
  level = "{{.LogLevel}}"
`))

var configTemplate = template.Must(template.Must(socketsTemplate.Clone()).New("config").Parse(`# containerd config of {{.Title}} (generated)
version = 3
root = "{{.Root}}"
state = "{{.State}}"
temp = "{{.Base}}/tmp"
imports = []
{{- if .CRI}}

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{{.SandboxImage}}"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here may lack CAP_SYS_RESOURCE: never lower an oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = {{.SystemdCgroup}}
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{{.Base}}/cni/bin"]
    conf_dir = "{{.Base}}/cni/conf"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{{- else}}
# CRI is out of scope here.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
{{- end}}

{{template "sockets" .}}
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{{.SocketDir}}"

# Keep everything of this daemon inside its own directory.
[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Base}}/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
`))

// configTemplateV2 is configTemplate in containerd 1.x's format. Shim
// sockets go to 1.x's fixed /run/containerd/s.
var configTemplateV2 = template.Must(template.Must(socketsTemplate.Clone()).New("config-v2").Parse(`# containerd 1.x config of {{.Title}} (generated)
version = 2
root = "{{.Root}}"
state = "{{.State}}"
imports = []
{{- if .CRI}}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.SandboxImage}}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = {{.SystemdCgroup}}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.Base}}/cni/bin"
    conf_dir = "{{.Base}}/cni/conf"
{{- else}}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
{{- end}}

{{template "sockets" .}}
[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Base}}/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
`))

// baseDir is where daemons get their directories: TESTKIT_BASE_DIR, or
// /run. A disk filesystem there lets kernels that cannot idmap tmpfs
// (before 6.3) run user-namespace pods.
func baseDir() string {
	if d := os.Getenv("TESTKIT_BASE_DIR"); d != "" {
		return d
	}
	return "/run"
}

// Start starts containerd and waits until it serves. A non-nil result
// needs Stop and Remove even when err is set.
func Start(ctx context.Context, o Options) (*Containerd, error) {
	c := &Containerd{toolsBin: o.ToolsBin, binary: o.Containerd, clientOpts: o.ClientOpts, exited: make(chan struct{})}
	if c.binary == "" {
		c.binary = filepath.Join(o.ToolsBin, "containerd")
	}
	for _, d := range []string{"/run/containerd", RuncRoot, "/run/containerd/s"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			c.createdDirs = append(c.createdDirs, d)
		}
	}
	base, err := os.MkdirTemp(baseDir(), o.Prefix)
	if err != nil {
		return nil, err
	}
	c.Base = base
	// 0711 as /run/containerd: a user-namespace container's root (an
	// unprivileged host uid) must reach its bundle's rootfs below it.
	if err := os.Chmod(base, 0o711); err != nil {
		return c, err
	}
	c.Root = filepath.Join(base, "root")
	c.State = filepath.Join(base, "state")
	c.SocketDir = filepath.Join(base, "s")
	c.PathDir = filepath.Join(base, "path")
	c.FifoDir = filepath.Join(base, "fifo")
	c.ConfigPath = filepath.Join(base, "config.toml")
	c.Address = filepath.Join(base, "c.sock")
	c.TTRPCAddress = c.Address + ".ttrpc"
	c.LogPath = filepath.Join(base, "containerd.log")
	if len(c.SocketDir) > maxSocketDirLen {
		return c, fmt.Errorf("socket dir %s is longer than %d characters", c.SocketDir, maxSocketDirLen)
	}
	for _, d := range []string{c.Root, c.State, c.PathDir, c.FifoDir, filepath.Join(base, "tmp")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return c, err
		}
	}
	// The only difference from a stock containerd: which binary answers to
	// the name containerd-shim-runc-v2 on its PATH.
	if err := os.Symlink(o.Shim, filepath.Join(c.PathDir, "containerd-shim-runc-v2")); err != nil {
		return c, err
	}
	var buf bytes.Buffer
	params := map[string]any{
		"Title": o.Title, "Base": base, "Root": c.Root, "State": c.State,
		"Address": c.Address, "TTRPCAddress": c.TTRPCAddress, "SocketDir": c.SocketDir,
		"LogLevel": o.LogLevel, "CRI": o.CRI != nil,
	}
	if o.CRI != nil {
		params["SandboxImage"] = o.CRI.SandboxImage
		params["SystemdCgroup"] = o.CRI.SystemdCgroup
	}
	tmpl := configTemplate
	if o.ConfigVersion == 2 {
		tmpl = configTemplateV2
	}
	if err := tmpl.Execute(&buf, params); err != nil {
		return c, err
	}
	if err := os.WriteFile(c.ConfigPath, buf.Bytes(), 0o644); err != nil {
		return c, err
	}
	return c, c.run(ctx)
}

// Restart stops containerd (if it runs) and starts it again on the same
// root, state and sockets, as an upgrade does; shims run on across it.
// Client is a new client afterwards.
func (c *Containerd) Restart(ctx context.Context, grace time.Duration) error {
	c.Stop(grace)
	c.exited = make(chan struct{})
	c.waitErr = nil
	return c.run(ctx)
}

func (c *Containerd) run(ctx context.Context) error {
	f, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.logFile = f
	cmd := exec.Command(c.binary, "--config", c.ConfigPath)
	// containerd also looks for ./containerd-shim-runc-v2: run it where none is.
	cmd.Dir = c.Base
	cmd.Env = c.Environ()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd = cmd
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	cl, err := client.New(c.Address, append([]client.Opt{client.WithTimeout(10 * time.Second)}, c.clientOpts...)...)
	if err != nil {
		return err
	}
	c.Client = cl
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	serving := make(chan error, 1)
	go func() {
		ok, err := cl.IsServing(hctx)
		if err == nil && !ok {
			err = errors.New("health check: not serving")
		}
		serving <- err
	}()
	select {
	case err := <-serving:
		if err != nil {
			return fmt.Errorf("containerd did not come up: %w", err)
		}
		return nil
	case <-c.exited:
		return fmt.Errorf("containerd exited at start: %v", c.waitErr)
	}
}

// Path is the PATH containerd, and so the shims and runc, see.
func (c *Containerd) Path() string {
	return c.PathDir + ":" + c.toolsBin + ":" + os.Getenv("PATH")
}

// Environ is this process's environment with PATH replaced by Path, plus
// extra.
func (c *Containerd) Environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "PATH="+c.Path()), extra...)
}

// Exited is closed when containerd has exited.
func (c *Containerd) Exited() <-chan struct{} { return c.exited }

// PID is the running daemon's process ID.
func (c *Containerd) PID() int { return c.cmd.Process.Pid }

// Stop closes the client and stops containerd: SIGTERM, then SIGKILL after
// grace; a grace of 0 is SIGKILL at once (containerd crashing). It
// reports whether containerd had to be killed.
func (c *Containerd) Stop(grace time.Duration) (killed bool) {
	if c.Client != nil {
		c.Client.Close()
		c.Client = nil
	}
	if c.cmd == nil {
		return false
	}
	if grace > 0 {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.exited:
	case <-time.After(grace):
		killed = true
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	if c.logFile != nil {
		c.logFile.Close()
		c.logFile = nil
	}
	return killed
}

// LogOffset is the current size of containerd's log.
func (c *Containerd) LogOffset() int64 {
	st, err := os.Stat(c.LogPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogSince returns the last n lines written to containerd's log after
// offset.
func (c *Containerd) LogSince(offset int64, n int) string {
	f, err := os.Open(c.LogPath)
	if err != nil {
		return fmt.Sprintf("(no containerd log: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err.Error()
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 2*n {
			lines = append([]string(nil), lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CopyLog copies containerd's log to dst.
func (c *Containerd) CopyLog(dst string) error {
	data, err := os.ReadFile(c.LogPath)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// Import imports and unpacks an image tarball into ctx's namespace. Blobs
// are shared between namespaces: only the first import copies data.
func (c *Containerd) Import(ctx context.Context, tarball string) (client.Image, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := c.Client.Import(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", tarball, err)
	}
	if len(imgs) == 0 || imgs[0].Name == "" {
		return nil, fmt.Errorf("import %s: no named image in the tarball", tarball)
	}
	img := client.NewImage(c.Client, imgs[0])
	if err := img.Unpack(ctx, ""); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", imgs[0].Name, err)
	}
	return img, nil
}

// Remove unmounts what is left under Base, removes Base unless a mount
// stays, and removes the global directories Start found missing if they are
// empty. Call it after Stop.
func (c *Containerd) Remove() error {
	var err error
	if c.Base != "" {
		for _, m := range MountsUnder(c.Base) {
			if uerr := unix.Unmount(m, unix.MNT_DETACH); uerr != nil {
				err = errors.Join(err, fmt.Errorf("unmount %s: %w", m, uerr))
			}
		}
		if left := MountsUnder(c.Base); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("mounts remain under %s, not removing it: %v", c.Base, left))
		} else if rerr := os.RemoveAll(c.Base); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	for i := len(c.createdDirs) - 1; i >= 0; i-- {
		_ = os.Remove(c.createdDirs[i]) // only when empty
	}
	return err
}
