package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// maxSocketDirLen is containerd's limit on the shim socket_dir.
const maxSocketDirLen = 38

// runcRoot is where both shims keep runc state by default (one dir per
// namespace).
const runcRoot = "/run/containerd/runc"

// env is the private containerd both shims run under.
type env struct {
	cfg   config
	token string
	ns    string // the one containerd namespace of this run

	base         string // /run/oomb-NNN: everything of this run lives here
	socketDir    string
	pathDir      string // first on containerd's PATH: our shim as containerd-shim-runc-v2
	configPath   string
	address      string
	ttrpcAddress string
	logPath      string

	cmd    *exec.Cmd
	exited chan struct{}

	client *client.Client
	image  client.Image

	// createdDirs are global dirs that did not exist before the run;
	// teardown removes them again if they are empty.
	createdDirs []string
}

var configTemplate = template.Must(template.New("config").Parse(`# containerd config of the oomshim benchmark (generated)
version = 3
root = "{{.Base}}/root"
state = "{{.Base}}/state"
temp = "{{.Base}}/tmp"
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{{.Address}}"

[ttrpc]
  address = "{{.TTRPCAddress}}"

# info, as on a node: shims run without -debug.
[debug]
  level = "{{.LogLevel}}"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{{.SocketDir}}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Base}}/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
`))

// startEnv starts containerd and imports the image. A non-nil env needs
// teardown even when err is set.
func startEnv(ctx context.Context, cfg config) (*env, error) {
	for _, bin := range []string{cfg.containerd(), cfg.ctr(), filepath.Join(cfg.toolsBin, "runc"), cfg.imageTar} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%w (run `make tools image build`)", err)
		}
	}
	var tok [4]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, token: hex.EncodeToString(tok[:]), exited: make(chan struct{})}
	e.ns = "oomshim-bench-" + e.token
	for _, d := range []string{"/run/containerd", runcRoot} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			e.createdDirs = append(e.createdDirs, d)
		}
	}
	var err error
	if e.base, err = os.MkdirTemp("/run", "oomb-"); err != nil {
		return nil, err
	}
	e.socketDir = filepath.Join(e.base, "s")
	e.pathDir = filepath.Join(e.base, "path")
	e.configPath = filepath.Join(e.base, "config.toml")
	e.address = filepath.Join(e.base, "c.sock")
	e.ttrpcAddress = e.address + ".ttrpc"
	e.logPath = filepath.Join(e.base, "containerd.log")
	if len(e.socketDir) > maxSocketDirLen {
		return e, fmt.Errorf("socket dir %s is longer than %d characters", e.socketDir, maxSocketDirLen)
	}
	for _, d := range []string{"root", "state", "tmp", "path", "fifo"} {
		if err := os.MkdirAll(filepath.Join(e.base, d), 0o711); err != nil {
			return e, err
		}
	}
	// As in the integration harness: our shim answers to the stock name on
	// PATH. Every container here names its shim by absolute path anyway.
	if err := os.Symlink(cfg.ours.path, filepath.Join(e.pathDir, "containerd-shim-runc-v2")); err != nil {
		return e, err
	}
	var buf bytes.Buffer
	if err := configTemplate.Execute(&buf, map[string]string{
		"Base": e.base, "Address": e.address, "TTRPCAddress": e.ttrpcAddress, "SocketDir": e.socketDir,
		"LogLevel": cfg.logLevel,
	}); err != nil {
		return e, err
	}
	if err := os.WriteFile(e.configPath, buf.Bytes(), 0o644); err != nil {
		return e, err
	}
	if err := e.startContainerd(ctx); err != nil {
		return e, err
	}
	progress("containerd %s up (namespace %s)", e.address, e.ns)
	return e, e.importImage(ctx)
}

func (c config) containerd() string { return filepath.Join(c.toolsBin, "containerd") }
func (c config) ctr() string        { return filepath.Join(c.toolsBin, "ctr") }

// path is the PATH containerd, the shims and runc see.
func (e *env) path() string {
	return e.pathDir + ":" + e.cfg.toolsBin + ":" + os.Getenv("PATH")
}

func (e *env) environ() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			out = append(out, kv)
		}
	}
	return append(out, "PATH="+e.path())
}

func (e *env) startContainerd(ctx context.Context) error {
	f, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close() // the child holds its own copy
	cmd := exec.Command(e.cfg.containerd(), "--config", e.configPath)
	cmd.Dir = e.base // containerd also looks for ./containerd-shim-runc-v2
	cmd.Env = e.environ()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.cmd = cmd
	go func() {
		_ = cmd.Wait()
		close(e.exited)
	}()
	c, err := client.New(e.address, client.WithTimeout(10*time.Second), client.WithDefaultNamespace(e.ns))
	if err != nil {
		return err
	}
	e.client = c
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	serving := make(chan error, 1)
	go func() {
		ok, err := c.IsServing(hctx)
		if err == nil && !ok {
			err = errors.New("not serving")
		}
		serving <- err
	}()
	select {
	case err := <-serving:
		return err
	case <-e.exited:
		return errors.New("containerd exited at start")
	}
}

func (e *env) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.ns)
}

func (e *env) importImage(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(e.nsCtx(ctx), 2*time.Minute)
	defer cancel()
	f, err := os.Open(e.cfg.imageTar)
	if err != nil {
		return err
	}
	defer f.Close()
	imgs, err := e.client.Import(ctx, f)
	if err != nil {
		return fmt.Errorf("import %s: %w", e.cfg.imageTar, err)
	}
	if len(imgs) == 0 || imgs[0].Name == "" {
		return fmt.Errorf("import %s: no named image", e.cfg.imageTar)
	}
	img := client.NewImage(e.client, imgs[0])
	if err := img.Unpack(ctx, ""); err != nil {
		return fmt.Errorf("unpack %s: %w", imgs[0].Name, err)
	}
	e.image = img
	return nil
}

// fifoDir holds ctr's stdio fifos (its default is /run/containerd/fifo).
func (e *env) fifoDir() string { return filepath.Join(e.base, "fifo") }

// ctr runs ctr against the private containerd in the run's namespace.
func (e *env) ctr(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--address", e.address, "--namespace", e.ns}, args...)
	cmd := exec.CommandContext(ctx, e.cfg.ctr(), full...)
	cmd.Env = e.environ()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	return cmd
}

// printLogTail shows the end of containerd's log on stderr.
func (e *env) printLogTail(n int) {
	f, err := os.Open(e.logPath)
	if err != nil {
		return
	}
	defer f.Close()
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
	fmt.Fprintf(os.Stderr, "----- containerd log (last %d lines) -----\n%s\n-----\n", n, strings.Join(lines, "\n"))
}

// keepLog copies containerd's log out of the run's directory.
func (e *env) keepLog() {
	dst := filepath.Join(os.TempDir(), "oomshim-bench-containerd-"+e.token+".log")
	src, err := os.Open(e.logPath)
	if err != nil {
		return
	}
	defer src.Close()
	out, err := os.Create(dst)
	if err != nil {
		return
	}
	defer out.Close()
	if _, err := io.Copy(out, src); err == nil {
		progress("containerd log kept at %s", dst)
	}
}

// hold prints how to reach the private containerd and waits for ctx to end.
func (e *env) hold(ctx context.Context) {
	fmt.Printf("containerd: %s (log %s)\n", e.address, e.logPath)
	fmt.Printf("image:      %s\n", e.image.Name())
	fmt.Printf("ctr:        %s --address %s --namespace %s\n", e.cfg.ctr(), e.address, e.ns)
	fmt.Printf("runtimes:   --runtime %s (ours), --runtime %s (reference)\n", e.cfg.ours.path, e.cfg.ref.path)
	fmt.Printf("stdio:      --null-io, or --fifo-dir %s (removed at the end)\n", e.fifoDir())
	fmt.Println("holding; SIGINT or SIGTERM cleans up")
	<-ctx.Done()
}
