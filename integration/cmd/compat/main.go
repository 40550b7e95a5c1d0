// Command compat runs one smoke set of the shim under each of several
// containerd versions and prints a table, containerd version x check. It
// exits 1 if any cell is not "ok".
//
//	compat -shim bin/containerd-shim-runc-v2 -compat .tools/compat -tools .tools/bin \
//	       -image .tools/images/busybox.tar -pause .tools/images/pause.tar \
//	       -versions "1.6.20 1.7.35 2.2.9 2.3.7 2.4.2"
//
// Each version's own containerd and ctr (from <compat>/<version>/) run on a
// private root, state and sockets, with this shim as containerd-shim-runc-v2
// on containerd's PATH and CRI on (containerd 1.x gets its own configuration
// format). The checks use that version's ctr, as a user would, and CRI's
// gRPC API for the pod.
package main

import (
	"oomshim/testkit"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	image     = "docker.io/library/busybox:latest"
	pause     = "oomshim.test/pause:1"
	ns        = "oomshim-compat"      // the ctr checks' namespace, named after this tool
	criParent = "/oomshim-compat-cri" // the CRI pod's cgroup parent (cgroupfs)
	criNS     = "k8s.io"
	memLimit  = 20 << 20
	hogScript = "x=a; while true; do x=$x$x; done"
)

type config struct {
	shim, compatDir, toolsBin, image, pause string
	versions                                []string
}

// checks names the columns, in order.
var checks = []string{"start", "run --rm x20", "exec", "tty", "pause/resume", "OOM init", "OOM exec", "CRI OOMKilled", "shim killed", "containerd restart"}

func main() {
	run()
	os.Exit(status)
}

func run() {
	var c config
	var versions string
	flag.StringVar(&c.shim, "shim", "bin/containerd-shim-runc-v2", "the shim binary")
	flag.StringVar(&c.compatDir, "compat", ".tools/compat", "holds <version>/containerd and <version>/ctr")
	flag.StringVar(&c.toolsBin, "tools", ".tools/bin", "holds runc")
	flag.StringVar(&c.image, "image", ".tools/images/busybox.tar", "busybox image tarball")
	flag.StringVar(&c.pause, "pause", ".tools/images/pause.tar", "pause image tarball ("+pause+")")
	flag.StringVar(&versions, "versions", "1.6.20 1.7.35 2.2.9 2.3.7 2.4.2", "containerd versions")
	flag.Parse()
	c.versions = strings.Fields(versions)
	for _, p := range []*string{&c.shim, &c.compatDir, &c.toolsBin, &c.image, &c.pause} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			fatal(err)
		}
		*p = abs
	}
	// As /proc/<pid>/exe names it.
	shim, err := filepath.EvalSymlinks(c.shim)
	if err != nil {
		fatal(err)
	}
	c.shim = shim
	if os.Geteuid() != 0 {
		fatal(errors.New("must run as root"))
	}
	// runc's state roots of the two namespaces: ours always goes, CRI's
	// only if this run made it.
	criRoot := filepath.Join(testkit.RuncRoot, criNS)
	_, statErr := os.Stat(criRoot)
	defer func() {
		_ = os.Remove(filepath.Join(testkit.RuncRoot, ns))
		if errors.Is(statErr, os.ErrNotExist) {
			_ = os.Remove(criRoot)
		}
	}()
	results := map[string]map[string]string{}
	failed := false
	for _, v := range c.versions {
		fmt.Fprintf(os.Stderr, "[compat] containerd %s\n", v)
		r := runVersion(c, v)
		results[v] = r
		for _, name := range checks {
			if r[name] != "ok" {
				failed = true
			}
		}
	}
	printTable(c.versions, results)
	if failed {
		status = 1
	}
}

// status is the exit status, set before run's deferred cleanup.
var status int

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "compat:", err)
	os.Exit(2)
}

func printTable(versions []string, results map[string]map[string]string) {
	var b strings.Builder
	b.WriteString("| containerd | task API | " + strings.Join(checks, " | ") + " |\n|" + strings.Repeat(" --- |", len(checks)+2) + "\n")
	for _, v := range versions {
		b.WriteString("| " + v + " | " + results[v]["task API"])
		for _, name := range checks {
			cell := results[v][name]
			if cell == "" {
				cell = "not run"
			}
			b.WriteString(" | " + strings.ReplaceAll(cell, "|", "/"))
		}
		b.WriteString(" |\n")
	}
	fmt.Print(b.String())
}

// env is one version's private containerd.
type env struct {
	c   config
	d   *testkit.Containerd
	ctr string
	api string // the task API containerd took from the shim's start reply
}

// taskAPI reads what containerd recorded of container id's shim: 2.x and
// 1.7 write the parsed reply to bootstrap.json (version 2 or 3), 1.6 the
// plain address to a file named address (task API v2).
func (e *env) taskAPI(id string) string {
	bundle := filepath.Join(e.d.State, "io.containerd.runtime.v2.task", ns, id)
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var b struct {
			Version int `json:"version"`
		}
		if json.Unmarshal(data, &b) == nil {
			return fmt.Sprintf("v%d", b.Version)
		}
	}
	if _, err := os.Stat(filepath.Join(bundle, "address")); err == nil {
		return "v2" // containerd 1.x records no reply; 1.x speaks only v2
	}
	return "?"
}

func runVersion(c config, v string) map[string]string {
	res := map[string]string{}
	dir := filepath.Join(c.compatDir, v)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	opts := testkit.Options{
		Prefix: "oomshim-compat-", Title: "containerd " + v + " compatibility",
		Shim: c.shim, ToolsBin: c.toolsBin, Containerd: filepath.Join(dir, "containerd"),
		LogLevel: "info", CRI: &testkit.CRIOptions{SandboxImage: pause},
	}
	if strings.HasPrefix(v, "1.") {
		opts.ConfigVersion = 2
	}
	d, err := testkit.Start(ctx, opts)
	if d != nil {
		defer func() {
			d.Stop(10 * time.Second)
			errs := []error{d.Remove(), testkit.RemoveNamespaceCgroups(ns), testkit.RemoveNamespaceCgroups(strings.TrimPrefix(criParent, "/"))}
			if err := errors.Join(errs...); err != nil {
				fmt.Fprintf(os.Stderr, "[compat] %s cleanup: %v\n", v, err)
			}
		}()
	}
	if err != nil {
		res["start"] = "containerd: " + err.Error()
		if d != nil {
			fmt.Fprintln(os.Stderr, d.LogSince(0, 30))
		}
		return res
	}
	e := &env{c: c, d: d, ctr: filepath.Join(dir, "ctr")}
	if out, err := e.run(ctx, ns, "images", "import", c.image); err != nil {
		res["start"] = "import: " + firstLine(out, err)
		return res
	}
	if out, err := e.run(ctx, criNS, "images", "import", c.image); err != nil {
		res["start"] = "import: " + firstLine(out, err)
		return res
	}
	if out, err := e.run(ctx, criNS, "images", "import", c.pause); err != nil {
		res["start"] = "import: " + firstLine(out, err)
		return res
	}
	res["start"] = "ok"
	defer func() { res["task API"] = e.api }()
	ev, err := e.events(ctx)
	if err != nil {
		res["OOM init"] = "ctr events: " + err.Error()
	} else {
		defer ev.stop()
	}
	for _, ch := range []struct {
		name string
		f    func(context.Context) error
	}{
		{"run --rm x20", e.runRm},
		{"exec", e.exec},
		{"tty", e.tty},
		{"pause/resume", e.pauseResume},
		{"OOM init", func(ctx context.Context) error { return e.oomInit(ctx, ev) }},
		{"OOM exec", func(ctx context.Context) error { return e.oomExec(ctx, ev) }},
		{"CRI OOMKilled", e.criOOM},
		{"shim killed", e.shimKilled},
		{"containerd restart", e.restart}, // last: ctr events ends with it
	} {
		if res[ch.name] != "" {
			continue
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
		if err := ch.f(cctx); err != nil {
			res[ch.name] = err.Error()
			fmt.Fprintf(os.Stderr, "[compat] %s %s: %v\n", v, ch.name, err)
		} else {
			res[ch.name] = "ok"
		}
		ccancel()
	}
	return res
}

// run runs this version's ctr in namespace n and returns its stdout; on
// failure the error carries its stderr (ctr >= 2.2 warns there on cgroup
// v1 hosts).
func (e *env) run(ctx context.Context, n string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.ctr, append([]string{"-a", e.d.Address, "-n", n}, args...)...)
	cmd.Env = e.d.Environ()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, lastLine(stderr.String()))
	}
	return string(out), err
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// firstLine names a failure: the error (with ctr's last stderr line), or
// the first line of the output.
func firstLine(out string, err error) string {
	if err != nil {
		return err.Error()
	}
	s := strings.TrimSpace(out)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// runRm: 20 `ctr run --rm`, each with its own output and exit code.
func (e *env) runRm(ctx context.Context) error {
	for i := range 20 {
		id := fmt.Sprintf("run%d", i)
		out, err := e.run(ctx, ns, "run", "--rm", image, id, "sh", "-c", fmt.Sprintf("echo out-%d; exit %d", i, i%5))
		if code := exitCode(err); code != i%5 {
			return fmt.Errorf("%s: exit code %d, want %d (%s)", id, code, i%5, firstLine(out, err))
		}
		if strings.TrimSpace(out) != fmt.Sprintf("out-%d", i) {
			return fmt.Errorf("%s: output %q", id, out)
		}
	}
	return nil
}

// detached runs a sleeping container and returns its cleanup.
func (e *env) detached(ctx context.Context, id string, extra ...string) (func(), error) {
	args := append(append([]string{"run", "-d"}, extra...), image, id, "sleep", "1000")
	if out, err := e.run(ctx, ns, args...); err != nil {
		return func() {}, fmt.Errorf("run -d %s: %s", id, firstLine(out, err))
	}
	return func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = e.run(cctx, ns, "task", "kill", "-s", "SIGKILL", id)
		for range 100 {
			if _, err := e.run(cctx, ns, "task", "delete", id); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_, _ = e.run(cctx, ns, "containers", "delete", id)
	}, nil
}

func (e *env) exec(ctx context.Context) error {
	done, err := e.detached(ctx, "ex")
	defer done()
	if err != nil {
		return err
	}
	e.api = e.taskAPI("ex")
	out, err := e.run(ctx, ns, "task", "exec", "--exec-id", "e1", "ex", "sh", "-c", "echo exec-out; exit 5")
	if code := exitCode(err); code != 5 || strings.TrimSpace(out) != "exec-out" {
		return fmt.Errorf("exec: exit code %d, output %q", code, out)
	}
	return nil
}

// tty runs `ctr run -t` under script(1), which gives ctr a terminal.
func (e *env) tty(ctx context.Context) error {
	line := fmt.Sprintf("%s -a %s -n %s run --rm -t %s tty1 sh -c 'test -t 0 && test -t 1 && echo tty-yes'", e.ctr, e.d.Address, ns, image)
	cmd := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
	cmd.Env = e.d.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tty-yes") {
		return fmt.Errorf("ctr run -t: %s", firstLine(string(out), err))
	}
	return nil
}

func (e *env) pauseResume(ctx context.Context) error {
	done, err := e.detached(ctx, "pr")
	defer done()
	if err != nil {
		return err
	}
	for _, step := range []struct{ action, want string }{{"pause", "PAUSED"}, {"resume", "RUNNING"}} {
		if out, err := e.run(ctx, ns, "task", step.action, "pr"); err != nil {
			return fmt.Errorf("%s: %s", step.action, firstLine(out, err))
		}
		out, err := e.run(ctx, ns, "task", "ls")
		if err != nil {
			return fmt.Errorf("task ls: %s", firstLine(out, err))
		}
		ok := false
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "pr" && f[2] == step.want {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("after %s, task ls: %q, want %s", step.action, out, step.want)
		}
	}
	return nil
}

// eventLog is `ctr events` running in the background.
type eventLog struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *eventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *eventLog) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(l.buf.String(), "\n")
}

func (l *eventLog) stop() {
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	_ = l.cmd.Wait()
}

func (e *env) events(ctx context.Context) (*eventLog, error) {
	l := &eventLog{}
	l.cmd = exec.Command(e.ctr, "-a", e.d.Address, "-n", ns, "events")
	l.cmd.Env = e.d.Environ()
	l.cmd.Stdout, l.cmd.Stderr = l, l
	if err := l.cmd.Start(); err != nil {
		return nil, err
	}
	// Live once a container's events show up: a throwaway container.
	for i := 0; ; i++ {
		id := fmt.Sprintf("probe%d", i)
		if out, err := e.run(ctx, ns, "run", "--rm", image, id, "true"); err != nil {
			l.stop()
			return nil, fmt.Errorf("run: %s", firstLine(out, err))
		}
		for _, line := range l.lines() {
			if strings.Contains(line, "/tasks/exit") && strings.Contains(line, `"`+id+`"`) {
				return l, nil
			}
		}
		if i == 20 {
			l.stop()
			return nil, errors.New("no events seen")
		}
	}
}

// oomBeforeExit waits for the TaskExit of process id (container c) and
// checks that a TaskOOM of c came before it.
func (l *eventLog) oomBeforeExit(ctx context.Context, c, id string) error {
	for {
		oom := -1
		for i, line := range l.lines() {
			switch {
			case strings.Contains(line, "/tasks/oom") && strings.Contains(line, `"container_id":"`+c+`"`):
				if oom < 0 {
					oom = i
				}
			case strings.Contains(line, "/tasks/exit") && strings.Contains(line, `"container_id":"`+c+`"`) && strings.Contains(line, `"id":"`+id+`"`):
				if oom < 0 {
					return fmt.Errorf("TaskExit of %s without a TaskOOM before it", id)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no TaskExit of %s: %w", id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *env) oomInit(ctx context.Context, ev *eventLog) error {
	out, err := e.run(ctx, ns, "run", "--rm", "--memory-limit", fmt.Sprint(memLimit), image, "oomi", "sh", "-c", hogScript)
	if code := exitCode(err); code != 137 {
		return fmt.Errorf("exit code %d, want 137 (%s)", code, firstLine(out, err))
	}
	return ev.oomBeforeExit(ctx, "oomi", "oomi")
}

func (e *env) oomExec(ctx context.Context, ev *eventLog) error {
	done, err := e.detached(ctx, "oome", "--memory-limit", fmt.Sprint(memLimit))
	defer done()
	if err != nil {
		return err
	}
	out, err := e.run(ctx, ns, "task", "exec", "--exec-id", "hog", "oome", "sh", "-c", hogScript)
	if code := exitCode(err); code != 137 {
		return fmt.Errorf("exec exit code %d, want 137 (%s)", code, firstLine(out, err))
	}
	return ev.oomBeforeExit(ctx, "oome", "hog")
}

// shimKilled SIGKILLs a running container's shim: containerd cleans up
// with the shim's delete action (its DeleteResponse read by every version)
// and the task is gone, with no runc state left.
func (e *env) shimKilled(ctx context.Context) error {
	done, err := e.detached(ctx, "sk")
	defer done()
	if err != nil {
		return err
	}
	pid := 0
	for _, p := range testkit.ShimProcesses(e.d.Address, e.c.shim) {
		if p.ID == "sk" && p.Action == "" {
			pid = p.PID
		}
	}
	if pid == 0 {
		return errors.New("no shim server for the container")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for {
		out, err := e.run(ctx, ns, "task", "ls")
		if err != nil {
			return fmt.Errorf("task ls: %s", firstLine(out, err))
		}
		listed := ""
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "sk" {
				listed = f[2]
			}
		}
		if listed == "" { // cleaned up: containerd removed the task
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the task is still listed (%s) after its shim was killed", listed)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// containerd drops the task first and cleans up after, in the
	// background.
	for {
		ids, err := testkit.RuncContainers(filepath.Join(e.c.toolsBin, "runc"), filepath.Join(testkit.RuncRoot, ns))
		if err != nil {
			return err
		}
		if !slices.Contains(ids, "sk") {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("runc still has the container: containerd's cleanup did not delete it")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// restart restarts containerd under a running container: containerd finds
// the shim again (1.x by the bundle's address file) and an exec runs.
func (e *env) restart(ctx context.Context) error {
	done, err := e.detached(ctx, "rs")
	defer done()
	if err != nil {
		return err
	}
	if err := e.d.Restart(ctx, 10*time.Second); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	out, err := e.run(ctx, ns, "task", "exec", "--exec-id", "after", "rs", "sh", "-c", "echo still-here")
	if err != nil || strings.TrimSpace(out) != "still-here" {
		return fmt.Errorf("exec after the restart: %s", firstLine(out, err))
	}
	return nil
}

// criOOM runs a host-network pod whose container exceeds its memory limit
// and waits until CRI reports it EXITED, OOMKilled, exit code 137.
func (e *env) criOOM(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+e.d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "oompod", Uid: "oompod-uid", Namespace: "default"},
		LogDirectory: filepath.Join(e.d.Base, "podlogs"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: criParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		return fmt.Errorf("run pod: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
		_, _ = rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId})
	}()
	cr, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "hog"},
			Image:    &runtimeapi.ImageSpec{Image: image},
			Command:  []string{"sh", "-c", hogScript},
			Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: memLimit}},
			LogPath:  "hog.log",
		},
		SandboxConfig: podCfg,
	})
	if err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	// The pod's containers share its sandbox's shim (grouping).
	for _, p := range testkit.ShimProcesses(e.d.Address, e.c.shim) {
		if p.ID == cr.ContainerId {
			return fmt.Errorf("the container got a shim of its own: %s", p)
		}
	}
	for {
		st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cr.ContainerId})
		if err != nil {
			return fmt.Errorf("container status: %w", err)
		}
		if s := st.Status; s.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			if s.Reason != "OOMKilled" || s.ExitCode != 137 {
				return fmt.Errorf("exited with reason %q, exit code %d; want OOMKilled, 137", s.Reason, s.ExitCode)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container still %s: %w", st.Status.State, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
