// Package shim is the shim binary's command line: the start and delete
// actions containerd runs, -info and -version, and the long-running server.
package shim

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
)

// RuntimeName is the runtime type this shim serves.
const RuntimeName = "io.containerd.runc.v2"

// Version and Revision are set at build time (-ldflags -X).
var (
	Version  = "dev"
	Revision = "unknown"
)

// flags are the command line containerd passes, exactly as it passes it to
// its own runc shim.
type flags struct {
	namespace     string
	id            string
	address       string // containerd's gRPC address
	publishBinary string // accepted, unused: events go over ttrpc
	bundle        string
	socket        string // the server's listen address (set by start)
	debugSocket   string // accepted, unused
	debug         bool
	version       bool
	info          bool
	action        string
}

func parseFlags(args []string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet(filepath.Base(args[0]), flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.namespace, "namespace", "", "namespace that owns the shim")
	fs.StringVar(&f.id, "id", "", "id of the task")
	fs.StringVar(&f.address, "address", "", "grpc address back to main containerd")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd binary (unused: events are forwarded over ttrpc)")
	fs.StringVar(&f.bundle, "bundle", "", "path to the bundle if not workdir")
	fs.StringVar(&f.socket, "socket", "", "socket address to serve")
	fs.StringVar(&f.debugSocket, "debug-socket", "", "debug socket path (unused)")
	fs.BoolVar(&f.debug, "debug", false, "enable debug output in logs")
	fs.BoolVar(&f.version, "v", false, "show the shim version and exit")
	fs.BoolVar(&f.version, "version", false, "show the shim version and exit")
	fs.BoolVar(&f.info, "info", false, "read runtime options from stdin, print the runtime info protobuf and exit")
	if err := fs.Parse(args[1:]); err != nil {
		return f, err
	}
	f.action = fs.Arg(0)
	return f, nil
}

func printVersion(w io.Writer, name string) {
	fmt.Fprintf(w, "%s:\n", name)
	fmt.Fprintf(w, "  Version:  %s\n", Version)
	fmt.Fprintf(w, "  Revision: %s\n", Revision)
	fmt.Fprintf(w, "  Go version: %s\n\n", runtime.Version())
}

// Main runs the shim's command line and returns the process exit code.
func Main(args []string) int {
	f, err := parseFlags(args, os.Stderr)
	if err != nil {
		return 2
	}
	name := filepath.Base(args[0])
	// containerd runs every shim command with GOMAXPROCS=2, meant for the
	// shim (the runtime has read it by now); runc, which each action may
	// run, would inherit it and is 10-15% slower with fewer Ps than CPUs.
	os.Unsetenv("GOMAXPROCS")
	switch {
	case f.version:
		printVersion(os.Stdout, name)
		return 0
	case f.info:
		err = runInfo(os.Stdin, os.Stdout)
	case f.namespace == "":
		err = fmt.Errorf("shim namespace cannot be empty")
	case f.action == "start":
		err = runStart(f, os.Stdin, os.Stdout)
	case f.action == "delete":
		err = runDelete(f, os.Stdout)
	case f.action == cleanupAction:
		err = runCleanup(f, os.Stdin)
	case f.action == "":
		err = serve(f)
	default:
		err = fmt.Errorf("unknown action %q", f.action)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", RuntimeName, err)
		return 1
	}
	return 0
}
