package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sync/errgroup"
)

// The soak does to pod shims what kubelet's exec probes and container
// restarts do over days, in minutes: every pod is a sandbox container and a
// workload container in one shim (the runc shim's group annotation), the
// workload gets execs (`true` with stdout and stderr fifos, waited for and
// deleted, as CRI's ExecSync does) and is now and then replaced by a new
// container in the same shim. Each shim's goroutines, fds, inotify watches
// and RSS are read after a warm-up and again at the end.

// groupAnnotation puts containers in one shim (honoured by both shims).
const groupAnnotation = "io.containerd.runc.v2.group"

// soakSettle is the pause before each reading, for teardown of the last
// exec and container to finish.
const soakSettle = 3 * time.Second

// soakCfg is the soak's part of the command line.
type soakCfg struct {
	pods, execs, restarts int
	warmup                int  // execs per pod before the first reading
	ref                   bool // soak the reference's shims too
}

// shimReading is one shim's footprint at one moment.
type shimReading struct {
	rssKB, goroutines, fds, watches int
}

// podSoak is one pod's soak: its shim, its readings and its counts.
type podSoak struct {
	shim           shim
	id             string
	pid            int
	before, after  shimReading
	execs, restart int
}

// soakResult is what a soak of one binary's pods measured.
type soakResult struct {
	shim     shim
	pods     []*podSoak
	duration time.Duration
}

func (e *env) soak(ctx context.Context) ([]soakResult, error) {
	cfg := e.cfg.soak
	shims := []shim{e.cfg.ours}
	if cfg.ref {
		shims = append(shims, e.cfg.ref)
	}
	var out []soakResult
	for _, s := range shims {
		r, err := e.soakShim(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// soakShim soaks cfg.pods pods of shim s at once, each pod in its own
// goroutine.
func (e *env) soakShim(ctx context.Context, s shim) (soakResult, error) {
	cfg := e.cfg.soak
	res := soakResult{shim: s}
	var cs []client.Container
	var csMu sync.Mutex
	defer e.destroyLater(&cs)
	track := func(c client.Container) {
		csMu.Lock()
		cs = append(cs, c)
		csMu.Unlock()
	}
	untrack := func(c client.Container) {
		csMu.Lock()
		defer csMu.Unlock()
		for i := range cs {
			if cs[i] == c {
				cs = append(cs[:i], cs[i+1:]...)
				return
			}
		}
	}

	progress("soak %s: %d pods x %d execs + %d restarts", s.name, cfg.pods, cfg.execs, cfg.restarts)
	for i := 0; i < cfg.pods; i++ {
		p := &podSoak{shim: s, id: fmt.Sprintf("soak-%s-%d", shortName[shimIndex(e, s)], i)}
		c, err := e.newContainer(ctx, p.id, s, oci.WithProcessArgs("sleep", "86400"), oci.WithAnnotations(map[string]string{groupAnnotation: p.id}))
		if err != nil {
			return res, err
		}
		track(c)
		if _, err := startTask(ctx, c); err != nil {
			return res, err
		}
		pid, ok := e.shimServers(s)[p.id]
		if !ok {
			return res, fmt.Errorf("no shim server for pod %s", p.id)
		}
		p.pid = pid
		res.pods = append(res.pods, p)
	}

	// Each pod: a workload container, restarted every execs/restarts execs.
	every := cfg.execs
	if cfg.restarts > 0 {
		every = max(1, cfg.execs/cfg.restarts)
	}
	var (
		warm     sync.WaitGroup
		measured = make(chan struct{})
	)
	warm.Add(len(res.pods))
	g, gctx := errgroup.WithContext(ctx)
	for _, p := range res.pods {
		g.Go(func() error {
			warmed := false
			defer func() {
				if !warmed {
					warm.Done()
				}
			}()
			var w client.Container
			restart := func(n int) error {
				if w != nil {
					if err := destroy(gctx, w); err != nil {
						return err
					}
					untrack(w)
				}
				id := fmt.Sprintf("%s-w%d", p.id, n)
				c, err := e.newContainer(gctx, id, s, oci.WithProcessArgs("sleep", "86400"), oci.WithAnnotations(map[string]string{groupAnnotation: p.id}))
				if err != nil {
					return err
				}
				track(c)
				w = c
				if _, err := startTask(gctx, c); err != nil {
					return err
				}
				return nil
			}
			if err := restart(0); err != nil {
				return fmt.Errorf("pod %s: %w", p.id, err)
			}
			total := cfg.warmup + cfg.execs
			for i := 0; i < total; i++ {
				if i == cfg.warmup {
					warmed = true
					warm.Done()
					select {
					case <-measured:
					case <-gctx.Done():
						return gctx.Err()
					}
				}
				if err := soakExec(gctx, w, fmt.Sprintf("probe-%d", i)); err != nil {
					return fmt.Errorf("pod %s exec %d: %w", p.id, i, err)
				}
				if i >= cfg.warmup {
					p.execs++
				}
				// Restart after the warm-up's first exec and then every
				// `every` execs, so the warm-up has seen one restart too.
				if i == 0 || (i >= cfg.warmup && (i-cfg.warmup+1)%every == 0 && p.restart < cfg.restarts) {
					if err := restart(i + 1); err != nil {
						return fmt.Errorf("pod %s restart: %w", p.id, err)
					}
					if i >= cfg.warmup {
						p.restart++
					}
				}
			}
			return nil
		})
	}
	// The first reading, once every pod has warmed up and waits.
	waited := make(chan struct{})
	go func() { warm.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-gctx.Done():
		close(measured)
		return res, g.Wait()
	}
	if gctx.Err() == nil {
		// The same settling time as before the second reading.
		if err := sleepCtx(gctx, soakSettle); err != nil {
			close(measured)
			return res, errors.Join(err, g.Wait())
		}
		if err := e.readPods(ctx, res.pods, true); err != nil {
			close(measured)
			_ = g.Wait()
			return res, err
		}
	}
	t0 := time.Now()
	close(measured)
	if err := g.Wait(); err != nil {
		return res, err
	}
	res.duration = time.Since(t0)
	// Let deleted containers' teardown and the shims' GC settle as they
	// would between probes.
	if err := sleepCtx(ctx, soakSettle); err != nil {
		return res, err
	}
	if err := e.readPods(ctx, res.pods, false); err != nil {
		return res, err
	}
	return res, nil
}

func shimIndex(e *env, s shim) int {
	if s.path == e.cfg.ours.path {
		return 0
	}
	return 1
}

// soakExec runs `true` in c with stdout and stderr through fifos, waits
// for it and deletes it.
func soakExec(ctx context.Context, c client.Container, execID string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t, err := c.Task(ctx, nil)
	if err != nil {
		return err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return err
	}
	ps := *spec.Process
	ps.Args = []string{"true"}
	ps.Terminal = false
	var stdout, stderr bytes.Buffer
	p, err := t.Exec(ctx, execID, &ps, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	if err != nil {
		return err
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer dcancel()
		_, _ = p.Delete(dctx)
	}()
	ch, err := p.Wait(ctx)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	select {
	case st := <-ch:
		if st.Error() != nil {
			return st.Error()
		}
		if st.ExitCode() != 0 {
			return fmt.Errorf("exit status %d (stderr %q)", st.ExitCode(), stderr.String())
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	// The deferred Delete is for the failure paths above; after this one
	// it gets NotFound (the figures in RESULTS.md were taken so).
	_, err = p.Delete(ctx)
	return err
}

// readPods reads every pod's shim, one at a time (the goroutine count comes
// from the shim's SIGUSR1 stack dump in containerd's log).
func (e *env) readPods(ctx context.Context, pods []*podSoak, before bool) error {
	for _, p := range pods {
		r, err := e.readShim(ctx, p.pid)
		if err != nil {
			return fmt.Errorf("pod %s (shim pid %d): %w", p.id, p.pid, err)
		}
		if before {
			p.before = r
		} else {
			p.after = r
		}
	}
	return nil
}

func (e *env) readShim(ctx context.Context, pid int) (shimReading, error) {
	var r shimReading
	g, err := e.goroutines(ctx, pid)
	if err != nil {
		return r, err
	}
	r.goroutines = g
	rss, _, err := smapsRollup(pid)
	if err != nil {
		return r, err
	}
	r.rssKB = int(rss)
	if r.fds, r.watches, err = fdsAndWatches(pid); err != nil {
		return r, err
	}
	return r, nil
}

// dumpStart matches the first line of either shim's SIGUSR1 stack dump
// ("=== goroutine stack dump ===" and "=== BEGIN goroutine stack dump ===").
var (
	dumpStart     = regexp.MustCompile(`=== (BEGIN )?goroutine stack dump ===`)
	goroutineHead = regexp.MustCompile(`goroutine [0-9]+ (gp=0x[0-9a-f]+ m=[0-9a-z]+ mp=0x[0-9a-f]+ )?\[`)
)

// goroutines sends the shim SIGUSR1 and counts the goroutines of the dump
// it logs (one line of containerd's log, newlines escaped).
func (e *env) goroutines(ctx context.Context, pid int) (int, error) {
	off := e.LogOffset()
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if n, ok, err := dumpIn(e.LogPath, off); err != nil || ok {
			return n, err
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, errors.New("no goroutine stack dump in containerd's log within 10s of SIGUSR1")
}

// dumpIn looks for a stack dump in log after offset and counts its
// goroutines.
func dumpIn(log string, offset int64) (n int, found bool, err error) {
	f, err := os.Open(log)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, false, err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		if line := sc.Text(); dumpStart.MatchString(line) {
			return len(goroutineHead.FindAllStringIndex(line, -1)), true, nil
		}
	}
	return 0, false, sc.Err()
}

// fdsAndWatches counts pid's open fds and the inotify watches on them.
func fdsAndWatches(pid int) (fds, watches int, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, ent := range ents {
		data, err := os.ReadFile(dir + "/" + ent.Name())
		if err != nil {
			continue // closed meanwhile
		}
		fds++
		watches += bytes.Count(data, []byte("\ninotify wd:"))
	}
	return fds, watches, nil
}

// growth sums over a result's pods.
func (r soakResult) growth() (rssMax, rssSum, goroutines, fds, watches, execs, restarts int) {
	for i, p := range r.pods {
		d := p.after.rssKB - p.before.rssKB
		if i == 0 || d > rssMax {
			rssMax = d
		}
		rssSum += d
		goroutines += p.after.goroutines - p.before.goroutines
		fds += p.after.fds - p.before.fds
		watches += p.after.watches - p.before.watches
		execs += p.execs
		restarts += p.restart
	}
	return
}

// line is the one-line summary for a result.
func (r soakResult) line() string {
	rssMax, _, g, f, w, x, rs := r.growth()
	return fmt.Sprintf("soak: shim=%s pods=%d execs=%d restarts=%d rss_growth_kb=%d goroutines_growth=%d fds_growth=%d watches_growth=%d",
		r.shim.name, len(r.pods), x, rs, rssMax, g, f, w)
}

// soakMarkdown is the soak's section of RESULTS.md.
func soakMarkdown(cfg config, rs []soakResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## Soak: exec probes and container restarts\n\n", soakBegin)
	fmt.Fprintf(&b, "`%s`, %s, on %s.\n\n", cfg.command, time.Now().UTC().Format("2006-01-02 15:04 MST"), machine())
	fmt.Fprintf(&b, "%d pods per shim binary, each one shim holding a sandbox container and a workload container; per pod %d execs of `true` (stdout and stderr fifos, waited for and deleted) into the workload container, which is replaced by a new container in the same shim every %d execs (%d restarts). Readings after %d warm-up execs and one restart per pod, each 3 s after the last exec. Growth is after minus before: RSS the largest of any pod's shim, the counts summed over the pods' shims.\n\n",
		cfg.soak.pods, cfg.soak.execs, max(1, cfg.soak.execs/max(1, cfg.soak.restarts)), cfg.soak.restarts, cfg.soak.warmup)
	b.WriteString("```\n")
	for _, r := range rs {
		b.WriteString(r.line() + "\n")
	}
	b.WriteString("```\n\n")
	b.WriteString("| shim | soak time | RSS before (median) | RSS growth per shim (min / median / max) | goroutines before -> after (per shim, median) | fds before -> after (median) | inotify watches before -> after (sum) |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rs {
		var rssB, dRSS, gB, gA, fB, fA []float64
		wB, wA := 0, 0
		for _, p := range r.pods {
			rssB = append(rssB, float64(p.before.rssKB))
			dRSS = append(dRSS, float64(p.after.rssKB-p.before.rssKB))
			gB = append(gB, float64(p.before.goroutines))
			gA = append(gA, float64(p.after.goroutines))
			fB = append(fB, float64(p.before.fds))
			fA = append(fA, float64(p.after.fds))
			wB += p.before.watches
			wA += p.after.watches
		}
		sort.Float64s(dRSS)
		fmt.Fprintf(&b, "| %s | %.0f s | %.0f kB | %.0f / %.0f / %.0f kB | %.0f -> %.0f | %.0f -> %.0f | %d -> %d |\n",
			r.shim.name, r.duration.Seconds(), median(rssB), minOf(dRSS), median(dRSS), maxOf(dRSS), median(gB), median(gA), median(fB), median(fA), wB, wA)
	}
	b.WriteString("\n" + soakEnd + "\n")
	return b.String()
}

// The soak's section of RESULTS.md lies between these markers; `make bench`
// keeps it and `make soak` replaces only it.
const (
	soakBegin = "<!-- soak: begin -->"
	soakEnd   = "<!-- soak: end -->"
)

// withSection returns doc with the section between soakBegin and soakEnd
// replaced by section (appended when doc has none; dropped when section is
// "").
func withSection(doc, section string) string {
	i := strings.Index(doc, soakBegin)
	j := strings.Index(doc, soakEnd)
	if i >= 0 && j > i {
		rest := strings.TrimLeft(doc[j+len(soakEnd):], "\n")
		doc = strings.TrimRight(doc[:i], "\n") + "\n"
		if rest != "" {
			doc += "\n" + rest
		}
	}
	if section == "" {
		return doc
	}
	return strings.TrimRight(doc, "\n") + "\n\n" + section
}

// soakSection returns the soak section of doc, or "".
func soakSection(doc string) string {
	i := strings.Index(doc, soakBegin)
	j := strings.Index(doc, soakEnd)
	if i < 0 || j < i {
		return ""
	}
	return doc[i:j+len(soakEnd)] + "\n"
}
