// Command bench measures what a shim costs per container, for this
// repository's shim and for containerd's own containerd-shim-runc-v2 (the
// reference), in the same run, on the same private containerd, alternating
// between the two sample by sample so drift hits both alike. It prints one
// markdown table of medians and ratios (ours / reference) and, with -out,
// writes it with the command, the date and the machine to a file.
//
//	bench -shim bin/containerd-shim-runc-v2 -ref .tools/bin/ref/containerd-shim-runc-v2 \
//	      -tools .tools/bin -image .tools/images/busybox.tar -out bench/RESULTS.md
//
// Every container selects its shim by absolute runtime path, so one
// containerd serves both. The benchmarks never assert a timing: they print.
// Everything the run creates (containers, shims, containerd, mounts, dirs)
// is removed at the end, also on failure or SIGINT/SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	ours, ref shim
	toolsBin  string // containerd, ctr, runc
	floorBin  string // bench-floor
	imageTar  string
	out       string // RESULTS.md to write, or ""
	command   string // the command to name in the results
	keepLog   bool
	hold      bool
	logLevel  string

	// Sample counts.
	warmups      int // per shim, before timed round trips and execs
	roundTrips   int // ctr run --rm, per shim
	execs        int // ctr task exec, per shim
	idle         int // running containers per shim for memory and wakeups
	idleWindow   time.Duration
	parallel     int // containers per parallel-start round
	parallelRuns int // rounds per shim
	ooms         int // OOM runs per shim

	lifecycles     int // container lifecycles per shim for shim CPU
	podCounts      []int
	podExecs       int             // exec round trips per pod
	podConcurrency int             // execs in flight during the pod probes
	statsCalls     int             // Stats calls per pod, at the largest pod count
	statsInterval  time.Duration   // the Stats rounds start at least this far apart
	storms         int             // OOM storms per shim
	stormSize      int             // containers per storm
	steps          map[string]bool // the steps to run; nil: all

	soakMode bool // run the soak instead of the benchmarks
	soak     soakCfg
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	ours := fs.String("shim", "bin/containerd-shim-runc-v2", "our shim binary")
	ref := fs.String("ref", ".tools/bin/ref/containerd-shim-runc-v2", "the reference shim binary (containerd v2.4.2)")
	fs.StringVar(&c.floorBin, "floor", "bin/bench-floor", "the floor server (./floor): a ttrpc server with only the task API, for the floor step")
	fs.StringVar(&c.toolsBin, "tools", ".tools/bin", "directory with containerd, ctr and runc")
	fs.StringVar(&c.imageTar, "image", ".tools/images/busybox.tar", "busybox image tarball (scripts/build-image.sh)")
	fs.StringVar(&c.out, "out", "", "write the results as markdown to this file")
	fs.StringVar(&c.command, "command", "", "the command to record in -out (default: this command line)")
	fs.BoolVar(&c.keepLog, "keep-log", false, "keep containerd's log (printed path) instead of removing it")
	fs.BoolVar(&c.hold, "hold", false, "only start the private containerd, print how to reach it, and wait for SIGINT/SIGTERM (for profiling by hand)")
	fs.StringVar(&c.logLevel, "log-level", "info", "containerd's log level (debug gives the shims -debug)")
	quick := fs.Bool("quick", false, "few samples: a smoke test of the benchmark itself, not figures")
	fs.IntVar(&c.warmups, "warmups", 3, "untimed round trips and execs per shim first")
	fs.IntVar(&c.roundTrips, "roundtrips", 60, "timed ctr run --rm per shim")
	fs.IntVar(&c.execs, "execs", 40, "timed ctr task exec per shim")
	fs.IntVar(&c.idle, "idle", 20, "idle containers per shim (memory, wakeups)")
	fs.DurationVar(&c.idleWindow, "idle-window", 10*time.Second, "window over which idle context switches are counted")
	fs.IntVar(&c.parallel, "parallel", 50, "containers started concurrently per round")
	fs.IntVar(&c.parallelRuns, "parallel-rounds", 6, "parallel-start rounds per shim")
	fs.IntVar(&c.ooms, "ooms", 40, "OOM runs per shim")
	fs.IntVar(&c.lifecycles, "lifecycles", 50, "container lifecycles per shim whose shim CPU is summed")
	pods := fs.String("pods", "20,110", "pod counts per shim binary for memory per pod (the last also gets the Stats calls)")
	fs.IntVar(&c.podExecs, "pod-execs", 250, "exec round trips per pod (exec probes)")
	fs.IntVar(&c.podConcurrency, "pod-concurrency", 4, "execs in flight during the pod probes")
	fs.IntVar(&c.statsCalls, "stats-calls", 100, "Stats calls per pod at the largest pod count")
	fs.DurationVar(&c.statsInterval, "stats-interval", 1500*time.Millisecond, "the Stats rounds start this far apart (kubelet polls every 10 s; 0: back to back)")
	fs.IntVar(&c.storms, "storms", 3, "OOM storms per shim")
	fs.IntVar(&c.stormSize, "storm-size", 50, "containers OOM-killed at once in one pod shim")
	steps := fs.String("steps", "", "only these steps, comma-separated ("+strings.Join(stepNames, ", ")+"); default all (for profiling: the results file is then partial)")
	fs.BoolVar(&c.soakMode, "soak", false, "run the soak (exec probes and container restarts in pod shims) instead of the benchmarks")
	fs.IntVar(&c.soak.pods, "soak-pods", 10, "soak: pods (shims) per shim binary")
	fs.IntVar(&c.soak.execs, "soak-execs", 2000, "soak: measured execs per pod")
	fs.IntVar(&c.soak.restarts, "soak-restarts", 100, "soak: measured workload container restarts per pod")
	fs.IntVar(&c.soak.warmup, "soak-warmup", 300, "soak: execs per pod before the first reading (the heap grows to its working size over the first hundred or so)")
	fs.BoolVar(&c.soak.ref, "soak-ref", true, "soak: the reference shim's pods too, after ours")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, f := range strings.Split(*pods, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return c, fmt.Errorf("-pods %q: want positive counts separated by commas", *pods)
		}
		c.podCounts = append(c.podCounts, n)
	}
	if *steps != "" {
		c.steps = map[string]bool{}
		for _, st := range strings.Split(*steps, ",") {
			st = strings.TrimSpace(st)
			if !slices.Contains(stepNames, st) {
				return c, fmt.Errorf("-steps: unknown step %q (want %s)", st, strings.Join(stepNames, ", "))
			}
			c.steps[st] = true
		}
	}
	if *quick {
		c.warmups, c.roundTrips, c.execs, c.idle, c.parallel, c.parallelRuns, c.ooms = 1, 3, 3, 3, 5, 1, 2
		c.lifecycles, c.podCounts, c.podExecs, c.statsCalls, c.storms, c.stormSize = 3, []int{2, 3}, 3, 3, 1, 4
		c.idleWindow = 2 * time.Second
		c.soak.pods, c.soak.execs, c.soak.restarts, c.soak.warmup = 2, 20, 2, 5
	}
	if c.soak.pods < 1 || c.soak.execs < 1 || c.soak.restarts < 0 || c.soak.warmup < 1 {
		return c, errors.New("soak: -soak-pods, -soak-execs and -soak-warmup must be at least 1, -soak-restarts at least 0")
	}
	c.command = strings.TrimSpace(c.command)
	if c.command == "" {
		c.command = strings.Join(append([]string{"bench"}, args...), " ")
	}
	var err error
	if c.ours, err = newShim("ours", *ours); err != nil {
		return c, err
	}
	if c.ref, err = newShim("reference", *ref); err != nil {
		return c, err
	}
	for _, p := range []*string{&c.toolsBin, &c.imageTar, &c.out, &c.floorBin} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return c, err
			}
		}
	}
	return c, nil
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (containers)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	e, err := startEnv(ctx, cfg)
	if e != nil {
		defer e.teardown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: start containerd:", err)
		if e != nil {
			e.printLogTail(40)
		}
		return 1
	}
	if cfg.hold {
		e.hold(ctx)
		return 0
	}
	if cfg.soakMode {
		return runSoak(ctx, e, cfg)
	}
	res, err := e.runAll(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		e.printLogTail(40)
		if errors.Is(ctx.Err(), context.Canceled) {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
		}
		return 1
	}
	md := res.markdown(cfg)
	fmt.Print(md)
	if cfg.out != "" {
		// The soak's section, if the file has one, stays.
		if old, err := os.ReadFile(cfg.out); err == nil {
			if sec := soakSection(string(old)); sec != "" {
				md = withSection(md, sec)
			}
		}
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", cfg.out)
	}
	return 0
}

// runSoak runs the soak, prints its lines and section and, with -out,
// puts the section in that file in place of the previous soak's.
func runSoak(ctx context.Context, e *env, cfg config) int {
	rs, err := e.soak(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: soak:", err)
		e.printLogTail(40)
		return 1
	}
	sec := soakMarkdown(cfg, rs)
	fmt.Print(sec)
	for _, r := range rs {
		fmt.Println(r.line())
	}
	if cfg.out != "" {
		old, err := os.ReadFile(cfg.out)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		if err := os.WriteFile(cfg.out, []byte(withSection(string(old), sec)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "bench: wrote the soak section of %s\n", cfg.out)
	}
	return 0
}

// progress reports what the run is doing, on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
