package main

import (
	"oomshim/testkit"

	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// runcRoot is where both shims keep runc state by default (one dir per
// namespace).
const runcRoot = testkit.RuncRoot

// env is the private containerd both shims run under.
type env struct {
	*testkit.Containerd
	cfg   config
	token string
	ns    string // the one containerd namespace of this run
	image client.Image
}

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
	e := &env{cfg: cfg, token: hex.EncodeToString(tok[:])}
	e.ns = "oomshim-bench-" + e.token
	var err error
	// Our shim answers to the stock name on PATH, as in the integration
	// tests; every container here names its shim by absolute path anyway.
	e.Containerd, err = testkit.Start(ctx, testkit.Options{
		Prefix: "oomb-",
		Title:  "the oomshim benchmark",
		Shim:   cfg.ours.path,
		// info, as on a node: shims run without -debug.
		LogLevel:   cfg.logLevel,
		ToolsBin:   cfg.toolsBin,
		ClientOpts: []client.Opt{client.WithDefaultNamespace(e.ns)},
	})
	if e.Containerd == nil {
		return nil, err
	}
	if err != nil {
		return e, err
	}
	progress("containerd %s up (namespace %s)", e.Address, e.ns)
	return e, e.importImage(ctx)
}

func (c config) containerd() string { return filepath.Join(c.toolsBin, "containerd") }
func (c config) ctr() string        { return filepath.Join(c.toolsBin, "ctr") }

func (e *env) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.ns)
}

func (e *env) importImage(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(e.nsCtx(ctx), 2*time.Minute)
	defer cancel()
	img, err := e.Import(ctx, e.cfg.imageTar)
	e.image = img
	return err
}

// fifoDir holds ctr's stdio fifos (its default is /run/containerd/fifo).
func (e *env) fifoDir() string { return e.FifoDir }

// ctr runs ctr against the private containerd in the run's namespace.
func (e *env) ctr(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--address", e.Address, "--namespace", e.ns}, args...)
	cmd := exec.CommandContext(ctx, e.cfg.ctr(), full...)
	cmd.Env = e.Environ()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	return cmd
}

// printLogTail shows the end of containerd's log on stderr.
func (e *env) printLogTail(n int) {
	fmt.Fprintf(os.Stderr, "----- containerd log (last %d lines) -----\n%s\n-----\n", n, e.LogSince(0, n))
}

// keepLog copies containerd's log out of the run's directory.
func (e *env) keepLog() {
	dst := filepath.Join(os.TempDir(), "oomshim-bench-containerd-"+e.token+".log")
	if err := e.CopyLog(dst); err == nil {
		progress("containerd log kept at %s", dst)
	}
}

// hold prints how to reach the private containerd and waits for ctx to end.
func (e *env) hold(ctx context.Context) {
	fmt.Printf("containerd: %s (log %s)\n", e.Address, e.LogPath)
	fmt.Printf("image:      %s\n", e.image.Name())
	fmt.Printf("ctr:        %s --address %s --namespace %s\n", e.cfg.ctr(), e.Address, e.ns)
	fmt.Printf("runtimes:   --runtime %s (ours), --runtime %s (reference)\n", e.cfg.ours.path, e.cfg.ref.path)
	fmt.Printf("stdio:      --null-io, or --fifo-dir %s (removed at the end)\n", e.fifoDir())
	fmt.Println("holding; SIGINT or SIGTERM cleans up")
	<-ctx.Done()
}
