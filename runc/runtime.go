// Package runc is the shim's glue to runc and the platform: building the
// runc client from containerd's runtime options, the bundle files the shim
// keeps, mounting the rootfs, and finding and reading a container's cgroup.
package runc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

const (
	// DefaultRoot is runc's state root, one directory per namespace below it.
	DefaultRoot = "/run/containerd/runc"
	// DefaultBinary is the runtime binary used when no BinaryName is set.
	DefaultBinary = "runc"

	optionsFile = "options.json"
	logFile     = "log.json"
	// InitPidFile holds the container init's pid, written by runc create.
	InitPidFile = "init.pid"
)

// ErrRuntimeNotFound is returned when the runtime binary cannot be found.
var ErrRuntimeNotFound = errors.New("runc: runtime binary not found")

// Config is what the shim needs from containerd's runc options.
type Config struct {
	Binary        string
	Root          string // already joined with the namespace
	SystemdCgroup bool
	NoPivotRoot   bool
	NoNewKeyring  bool
	IoUID, IoGID  int
	Namespace     string
	// CriuImagePath and CriuWorkPath are the runtime options' defaults
	// for checkpoint images and criu's work files.
	CriuImagePath, CriuWorkPath string
}

// NewConfig resolves runtime options for namespace; opts may be nil.
func NewConfig(opts *options.Options, namespace string) Config {
	c := Config{Binary: DefaultBinary, Root: filepath.Join(DefaultRoot, namespace), Namespace: namespace}
	if opts == nil {
		return c
	}
	if opts.BinaryName != "" {
		c.Binary = opts.BinaryName
	}
	if opts.Root != "" {
		c.Root = filepath.Join(opts.Root, namespace)
	}
	c.SystemdCgroup = opts.SystemdCgroup
	c.NoPivotRoot = opts.NoPivotRoot
	c.NoNewKeyring = opts.NoNewKeyring
	c.IoUID = int(opts.IoUid)
	c.IoGID = int(opts.IoGid)
	c.CriuImagePath = opts.CriuImagePath
	c.CriuWorkPath = opts.CriuWorkPath
	return c
}

// LookPath checks that the runtime binary exists and is executable.
func (c Config) LookPath() (string, error) {
	p, err := exec.LookPath(c.Binary)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %w", ErrRuntimeNotFound, c.Binary, err)
	}
	return p, nil
}

// Runtime returns a runc client that logs to the bundle's log.json, so that
// a failure can be reported with runc's own message (see Error).
func (c Config) Runtime(bundle string) *gorunc.Runc {
	return &gorunc.Runc{
		Command:       c.Binary,
		Root:          c.Root,
		Log:           filepath.Join(bundle, logFile),
		LogFormat:     gorunc.JSON,
		PdeathSignal:  unix.SIGKILL,
		Setpgid:       true,
		SystemdCgroup: c.SystemdCgroup,
	}
}

// WriteOptions records the runtime options in the bundle for the delete
// action, which runs after the shim that knew them is gone. The file is
// plain encoding/json of the message, as containerd's own shim writes it,
// so either shim's delete action can read the other's bundle.
func WriteOptions(bundle string, opts *options.Options) error {
	if opts == nil {
		opts = &options.Options{}
	}
	data, err := json.Marshal(opts)
	if err != nil {
		return fmt.Errorf("marshal runtime options: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundle, optionsFile), data, 0o600); err != nil {
		return fmt.Errorf("write runtime options: %w", err)
	}
	return nil
}

// ReadOptions reads what WriteOptions wrote; a missing file yields nil.
func ReadOptions(bundle string) (*options.Options, error) {
	data, err := os.ReadFile(filepath.Join(bundle, optionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read runtime options: %w", err)
	}
	opts, err := ParseOptions(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundle, optionsFile), err)
	}
	return opts, nil
}

// ParseOptions parses runtime options in the form WriteOptions records.
func ParseOptions(data []byte) (*options.Options, error) {
	var opts options.Options
	if err := json.Unmarshal(data, &opts); err != nil {
		return nil, fmt.Errorf("parse runtime options: %w", err)
	}
	return &opts, nil
}

// Error is a failed runc command, carrying runc's own last error message.
type Error struct {
	Op  string // runc subcommand
	Msg string // runc's last logged error, if any
	Err error
}

func (e *Error) Error() string {
	// go-runc's error ends with runc's output, newline included.
	if e.Msg == "" {
		return strings.TrimSpace(fmt.Sprintf("runc %s: %v", e.Op, e.Err))
	}
	return strings.TrimSpace(fmt.Sprintf("runc %s: %s: %v", e.Op, e.Msg, e.Err))
}

func (e *Error) Unwrap() error { return e.Err }

// WrapError attaches runc's last logged error in bundle to err. A missing
// runtime binary becomes ErrRuntimeNotFound.
func WrapError(op, bundle string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		err = fmt.Errorf("%w: %w", ErrRuntimeNotFound, err)
	}
	msg := lastError(filepath.Join(bundle, logFile))
	if msg == "" && bundleFull(bundle) {
		// runc's log is in the bundle too: it could not say why.
		err = fmt.Errorf("%w (the bundle's filesystem is full: no space left on device)", err)
	}
	return &Error{Op: op, Msg: msg, Err: err}
}

// bundleFull reports whether the filesystem of bundle has no free block
// or inode left.
func bundleFull(bundle string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(bundle, &st); err != nil {
		return false
	}
	return st.Bavail == 0 || (st.Files > 0 && st.Ffree == 0)
}

// lastError returns the message of the last error-level entry in runc's
// JSON log.
func lastError(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var msg string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			msg = entry.Msg
		}
	}
	return msg
}
