package integration

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
	"regexp"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// maxSocketDirLen is containerd's limit on the shim socket_dir (sun_path minus
// the 64-character socket name).
const maxSocketDirLen = 38

// runcRoot is where the runc shim keeps runc state when the runtime options
// leave Root empty (containerd's process.RuncRoot); namespaces are subdirs.
const runcRoot = "/run/containerd/runc"

// harness is the package's private containerd.
type harness struct {
	s        settings
	token    string // short random id of this run, in namespace names
	shimPath string // SHIM_BINARY with symlinks resolved, as /proc/<pid>/exe shows it

	base       string // /run/oomshim-test-NNN: everything of this run lives here
	root       string
	state      string
	socketDir  string // shim sockets (short: see maxSocketDirLen)
	pathDir    string // holds the containerd-shim-runc-v2 symlink, first on PATH
	fifoDir    string // client and ctr fifos
	handDir    string // bundles of shims started by hand
	configPath string

	address      string // containerd gRPC socket
	ttrpcAddress string // containerd ttrpc socket

	logPath string // containerd stdout+stderr
	keptLog string // where the log is kept after teardown
	logFile *os.File

	cmd     *exec.Cmd
	exited  chan struct{} // closed when containerd exits
	waitErr error

	client   *client.Client
	imageRef string // name of the test image, as the tarball names it

	// createdDirs are global directories that did not exist before this
	// run; teardown removes them again when they are empty.
	createdDirs []string

	mu         sync.Mutex
	namespaces []string // every namespace a test used
}

var configTemplate = template.Must(template.New("config").Parse(`# containerd config of the oomshim integration tests (generated)
version = 3
root = "{{.Root}}"
state = "{{.State}}"
temp = "{{.Temp}}"
imports = []
# CRI is out of scope here.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{{.Address}}"

[ttrpc]
  address = "{{.TTRPCAddress}}"

[debug]
  # debug: the shim gets -debug and its log lands in containerd's log.
  level = "debug"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{{.SocketDir}}"

# Keep everything of this daemon inside its own directory.
[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Opt}}"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
`))

// startHarness starts containerd and imports the test image. On error the
// returned harness (if any) still needs teardown.
func startHarness(s settings) (*harness, error) {
	shimPath, err := filepath.EvalSymlinks(s.shimBinary)
	if err != nil {
		return nil, err
	}
	var tok [3]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	h := &harness{s: s, token: hex.EncodeToString(tok[:]), shimPath: shimPath, exited: make(chan struct{})}
	for _, d := range []string{"/run/containerd", runcRoot, "/run/containerd/s"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			h.createdDirs = append(h.createdDirs, d)
		}
	}

	h.base, err = os.MkdirTemp("/run", "oomshim-test-")
	if err != nil {
		return nil, err
	}
	h.root = filepath.Join(h.base, "root")
	h.state = filepath.Join(h.base, "state")
	h.socketDir = filepath.Join(h.base, "s")
	h.pathDir = filepath.Join(h.base, "path")
	h.fifoDir = filepath.Join(h.base, "fifo")
	h.handDir = filepath.Join(h.base, "hand")
	h.configPath = filepath.Join(h.base, "config.toml")
	h.address = filepath.Join(h.base, "c.sock")
	h.ttrpcAddress = filepath.Join(h.base, "c.sock.ttrpc")
	h.logPath = filepath.Join(h.base, "containerd.log")
	h.keptLog = filepath.Join(os.TempDir(), "oomshim-containerd-"+h.token+".log")
	if len(h.socketDir) > maxSocketDirLen {
		return h, fmt.Errorf("socket dir %s is longer than %d characters", h.socketDir, maxSocketDirLen)
	}
	for _, d := range []string{h.root, h.state, h.pathDir, h.fifoDir, h.handDir, filepath.Join(h.base, "tmp")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return h, err
		}
	}
	// The ONLY difference from a stock containerd: which binary answers to
	// the name containerd-shim-runc-v2 on containerd's PATH.
	if err := os.Symlink(s.shimBinary, filepath.Join(h.pathDir, "containerd-shim-runc-v2")); err != nil {
		return h, err
	}
	if err := h.writeConfig(); err != nil {
		return h, err
	}
	if err := h.startContainerd(); err != nil {
		return h, err
	}
	if err := h.importImage(); err != nil {
		return h, err
	}
	return h, nil
}

func (h *harness) writeConfig() error {
	var buf bytes.Buffer
	err := configTemplate.Execute(&buf, map[string]string{
		"Root": h.root, "State": h.state, "Temp": filepath.Join(h.base, "tmp"),
		"Address": h.address, "TTRPCAddress": h.ttrpcAddress,
		"SocketDir": h.socketDir, "Opt": filepath.Join(h.base, "opt"),
	})
	if err != nil {
		return err
	}
	return os.WriteFile(h.configPath, buf.Bytes(), 0o644)
}

// containerdPath is the PATH containerd (and so the shim and runc) sees.
func (h *harness) containerdPath() string {
	return h.pathDir + ":" + h.s.toolsBin + ":" + os.Getenv("PATH")
}

// envWithPath returns the environment with PATH replaced by path, plus extra.
func envWithPath(path string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "PATH="+path), extra...)
}

func (h *harness) startContainerd() error {
	f, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	h.logFile = f
	cmd := exec.Command(h.s.containerd(), "--config", h.configPath)
	// containerd also looks for ./containerd-shim-runc-v2: run it where none is.
	cmd.Dir = h.base
	cmd.Env = envWithPath(h.containerdPath())
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.cmd = cmd
	go func() {
		h.waitErr = cmd.Wait()
		close(h.exited)
	}()

	c, err := client.New(h.address, client.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	h.client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	serving := make(chan error, 1)
	go func() {
		ok, err := c.IsServing(ctx)
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
	case <-h.exited:
		return fmt.Errorf("containerd exited at start: %v", h.waitErr)
	}
}

// importImage imports the tarball once into a base namespace: it proves the
// image is importable before any test runs and names the image.
func (h *harness) importImage() error {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "oomshim-base-"+h.token), time.Minute)
	defer cancel()
	h.namespaces = append(h.namespaces, "oomshim-base-"+h.token)
	img, err := h.importInto(ctx)
	if err != nil {
		return err
	}
	h.imageRef = img.Name()
	return nil
}

// importInto imports and unpacks the test image into ctx's namespace. The
// blobs are shared between namespaces, so only the first import copies data.
func (h *harness) importInto(ctx context.Context) (client.Image, error) {
	f, err := os.Open(h.s.imageTar)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := h.client.Import(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", h.s.imageTar, err)
	}
	if len(imgs) == 0 || imgs[0].Name == "" {
		return nil, fmt.Errorf("import %s: no named image in the tarball", h.s.imageTar)
	}
	img := client.NewImage(h.client, imgs[0])
	if err := img.Unpack(ctx, ""); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", imgs[0].Name, err)
	}
	return img, nil
}

var nsUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// newNamespace returns a fresh containerd namespace for a test: its name,
// sanitised, plus this run's token (so a crashed earlier run never collides).
func (h *harness) newNamespace(name string) string {
	base := strings.Trim(nsUnsafe.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(base) > 50 {
		base = strings.TrimRight(base[:50], "-")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ns := base + "-" + h.token
	for i := 2; contains(h.namespaces, ns); i++ {
		ns = fmt.Sprintf("%s-%d-%s", base, i, h.token)
	}
	h.namespaces = append(h.namespaces, ns)
	return ns
}

func (h *harness) allNamespaces() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.namespaces...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// stopContainerd sends SIGTERM, then SIGKILL if containerd lingers.
func (h *harness) stopContainerd() {
	if h.cmd == nil {
		return
	}
	if h.client != nil {
		h.client.Close()
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "integration: containerd ignored SIGTERM for 30s, killing it")
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
	h.cmd = nil
}

// logOffset is the current size of containerd's log.
func (h *harness) logOffset() int64 {
	st, err := os.Stat(h.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logSince returns the last n lines written to containerd's log after offset.
func (h *harness) logSince(offset int64, n int) string {
	f, err := os.Open(h.logPath)
	if err != nil {
		return fmt.Sprintf("(no containerd log: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err.Error()
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
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

func (h *harness) printLogTail(w io.Writer, offset int64, n int) {
	fmt.Fprintf(w, "----- containerd log (last %d lines) -----\n%s\n----- end of containerd log -----\n", n, h.logSince(offset, n))
}
