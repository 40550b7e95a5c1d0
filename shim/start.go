package shim

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	// defaultSocketDir is used when containerd names no socket directory.
	defaultSocketDir = "/run/containerd/s"
	// maxStdin bounds what start reads from containerd.
	maxStdin = 10 << 20
	// readyTimeout bounds the wait for the server to listen.
	readyTimeout = 10 * time.Second
)

// groupLabels name the annotations that put several containers in one shim,
// in order of precedence (the same labels containerd's runc shim honours).
var groupLabels = []string{
	"io.containerd.runc.v2.group",
	"io.kubernetes.cri.sandbox-id",
}

// reply is the form of the start action's answer, the one the calling
// containerd reads; it also decides the task API that containerd uses.
type reply int

const (
	// replyBootstrap: a BootstrapResult protobuf naming task API v3, to
	// containerd >= 2.3, which wrote BootstrapParams on stdin.
	replyBootstrap reply = iota
	// replyJSON3: {"version":3,...}, to containerd 2.0-2.2 (task API v3).
	replyJSON3
	// replyJSON2: {"version":2,...}, to containerd 1.7 and to any
	// containerd this cannot tell from it (task API v2).
	replyJSON2
	// replyPlain: the socket address alone, to containerd 1.6 and older,
	// which dial whatever start printed (task API v2).
	replyPlain
)

// legacyReply tells the containerd versions that start a shim the same
// way apart. containerd 1.7 and 2.0-2.2 both set MAX_SHIM_VERSION=2 (2.x
// nonetheless reads version 3) and pass the same flags; 1.6 and older set
// no MAX_SHIM_VERSION and read only a plain address. The Go module of the
// containerd binary (-publish-binary, read from its build information)
// tells 2.x (github.com/containerd/containerd/v2) from 1.x. Whatever
// cannot be read gets version 2, which every containerd since 1.7 reads.
func legacyReply(maxVersion, containerdModule string) reply {
	switch {
	case maxVersion == "":
		return replyPlain
	case containerdModule == "github.com/containerd/containerd/v2":
		return replyJSON3
	default:
		return replyJSON2
	}
}

// moduleOf returns the main module path recorded in a Go binary, or "".
func moduleOf(binary string) string {
	if binary == "" {
		return ""
	}
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		return ""
	}
	return info.Main.Path
}

// startParams is what start learned from containerd, whichever protocol it
// spoke.
type startParams struct {
	reply        reply
	ttrpcAddress string
	grpcAddress  string
	socketDir    string
	debug        bool
	options      *options.Options
}

// parseStartInput tells the two start protocols apart. containerd >= 2.3
// writes a BootstrapParams protobuf naming the same instance and namespace
// as the command line; older ones write the runc options as a protobuf Any
// (or nothing) and pass addresses in the environment. A legacy Any can
// decode as BootstrapParams by accident, hence the identity check.
func parseStartInput(input []byte, f flags, getenv func(string) string) (startParams, error) {
	var bp bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &bp) == nil && bp.InstanceID == f.id && bp.Namespace == f.namespace {
		p := startParams{
			reply:        replyBootstrap,
			ttrpcAddress: bp.ContainerdTtrpcAddress,
			grpcAddress:  bp.ContainerdGrpcAddress,
			socketDir:    bp.GetSocketDir(),
			debug:        f.debug || bp.LogLevel <= bootapi.LogLevel_LOG_LEVEL_DEBUG,
		}
		var opts options.Options
		found, err := bp.FindExtension(&opts)
		if err != nil {
			return p, fmt.Errorf("read runc options from bootstrap params: %w", err)
		}
		if found {
			p.options = &opts
		}
		return p, nil
	}
	p := startParams{
		reply:        legacyReply(getenv("MAX_SHIM_VERSION"), moduleOf(f.publishBinary)),
		ttrpcAddress: getenv("TTRPC_ADDRESS"),
		grpcAddress:  f.address,
		debug:        f.debug,
	}
	if p.grpcAddress == "" {
		p.grpcAddress = getenv("GRPC_ADDRESS")
	}
	if len(input) == 0 {
		return p, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(input, &a); err != nil {
		return p, fmt.Errorf("start input is neither bootstrap params nor runtime options: %w", err)
	}
	v, err := typeurl.UnmarshalAny(&a)
	if err != nil {
		return p, fmt.Errorf("decode runtime options: %w", err)
	}
	opts, ok := v.(*options.Options)
	if !ok {
		return p, fmt.Errorf("runtime options of type %s, want containerd.runc.v1.Options", a.GetTypeUrl())
	}
	p.options = opts
	return p, nil
}

// socketAddress is where the shim for (namespace, group) listens: a hash, so
// the path stays short, of containerd's address, the namespace and the group.
func socketAddress(dir, grpcAddress, namespace, group string) string {
	d := sha256.Sum256([]byte(filepath.Join(grpcAddress, namespace, group)))
	return fmt.Sprintf("unix://%s/%x", dir, d)
}

func socketPath(address string) string { return strings.TrimPrefix(address, "unix://") }

func canConnect(address string) bool {
	c, err := net.DialTimeout("unix", socketPath(address), 100*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// groupID reads the bundle's config.json (in the working directory) for a
// grouping annotation; without one, the container gets its own shim.
func groupID(id string) (string, error) {
	data, err := os.ReadFile("config.json")
	if err != nil {
		return "", fmt.Errorf("read bundle config: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return "", fmt.Errorf("parse bundle config: %w", err)
	}
	for _, l := range groupLabels {
		if g, ok := spec.Annotations[l]; ok && g != "" {
			return g, nil
		}
	}
	return id, nil
}

// runStart is the start action: launch (or find) the server and tell
// containerd where it listens.
func runStart(f flags, stdin io.Reader, stdout io.Writer) error {
	input, err := io.ReadAll(io.LimitReader(stdin, maxStdin))
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	p, err := parseStartInput(input, f, os.Getenv)
	if err != nil {
		return err
	}
	group, err := groupID(f.id)
	if err != nil {
		return err
	}
	dir := p.socketDir
	if dir == "" {
		dir = defaultSocketDir
	}
	address := socketAddress(dir, p.grpcAddress, f.namespace, group)
	l, existing, err := bindSocket(address)
	if err != nil {
		return err
	}
	if !existing {
		err := launch(f, p, address, l)
		l.Close()
		if err != nil {
			return err
		}
	}
	// containerd 1.x finds a running shim again after its own restart by
	// this file (2.x records start's reply itself, in bootstrap.json).
	if err := writeAddress(addressFile, address); err != nil {
		return err
	}
	return writeStartResult(stdout, p.reply, address)
}

// addressFile, in the bundle, holds the shim's socket address.
const addressFile = "address"

// writeAddress writes path atomically: containerd may read it at any time,
// and several start actions of one group may write it at once (each
// through a temporary file of its own).
func writeAddress(path, address string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write the address file: %w", err)
	}
	_, werr := f.WriteString(address)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write the address file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write the address file: %w", err)
	}
	return nil
}

// writeStartResult answers start in the form r. The server serves the task
// API v3 and v2 alike; the form tells containerd which one to use.
func writeStartResult(w io.Writer, r reply, address string) error {
	var data []byte
	var err error
	switch r {
	case replyBootstrap:
		data, err = proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
	case replyPlain:
		data = []byte(address)
	default:
		version := 3
		if r == replyJSON2 {
			version = 2
		}
		data, err = json.Marshal(struct {
			Version  int    `json:"version"`
			Address  string `json:"address"`
			Protocol string `json:"protocol"`
		}{version, address, "ttrpc"})
	}
	if err != nil {
		return fmt.Errorf("marshal start result: %w", err)
	}
	_, err = w.Write(data)
	return err
}

// launch starts the server process on the socket l (its fd 4) and returns
// once it serves. The server reports through a pipe (its fd 3): "ok" once
// it serves, or its error. On failure the socket file is removed.
func launch(f flags, p startParams, address string, l *net.UnixListener) (retErr error) {
	l.SetUnlinkOnClose(false)
	defer func() {
		if retErr != nil {
			os.Remove(socketPath(address))
		}
	}()
	lf, err := l.File()
	if err != nil {
		return fmt.Errorf("socket for the server: %w", err)
	}
	defer lf.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	args := []string{"-namespace", f.namespace, "-id", f.id, "-address", p.grpcAddress, "-socket", address}
	if p.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir, _ = os.Getwd()
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+p.ttrpcAddress, "GRPC_ADDRESS="+p.grpcAddress, readyFdEnv+"=3", listenFdEnv+"=4")
	// One P for the server, replacing the GOMAXPROCS=2 containerd gives
	// every shim command: the server's work is syscalls and waiting on
	// runc, never two goroutines of Go code at once, and one P means one
	// set of per-P caches and one thread fewer (runc runs on locked
	// threads, see process.Reaper.StartLocked, which park without holding
	// the P). Given at exec, not set later with runtime.GOMAXPROCS, which
	// left 4 in 10 servers with 0.6 MB more memory. Main drops the
	// variable again, so that runc does not inherit it.
	cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
	cmd.ExtraFiles = []*os.File{w, lf}
	// Its own process group: signals for containerd's group are not ours.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start shim server: %w", err)
	}
	w.Close()
	defer func() {
		if retErr != nil {
			cmd.Process.Kill()
			cmd.Wait()
		} else {
			cmd.Process.Release()
		}
	}()
	if err := adjustOOMScore(os.Getppid(), cmd.Process.Pid); err != nil {
		return err
	}
	msg, err := readReady(r, readyTimeout)
	if err != nil {
		return err
	}
	if msg != readyOK {
		if msg == "" {
			msg = "shim server exited before listening"
		}
		return errors.New(msg)
	}
	if p.options != nil && p.options.ShimCgroup != "" {
		if err := joinCgroup(p.options.ShimCgroup, cmd.Process.Pid, f.namespace, f.id); err != nil {
			return err
		}
	}
	return nil
}

// adjustOOMScore sets the server's oom_score_adj to containerd's (the
// start action's parent's) + 1, so that under memory pressure the kernel
// kills a shim before containerd, as with the stock shim. Raising a score
// needs no privilege, and 1000 is the ceiling.
func adjustOOMScore(containerd, pid int) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", containerd))
	if err != nil {
		return fmt.Errorf("read containerd's oom_score_adj: %w", err)
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("containerd's oom_score_adj %q: %w", data, err)
	}
	score = min(score+1, 1000)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(score)), 0); err != nil {
		return fmt.Errorf("set the shim's oom_score_adj to %d: %w", score, err)
	}
	return nil
}

func readReady(r *os.File, timeout time.Duration) (string, error) {
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(r, 64<<10)); err != nil {
		return "", fmt.Errorf("wait for shim server: %w", err)
	}
	return strings.TrimSpace(buf.String()), nil
}
