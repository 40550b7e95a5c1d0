package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

func median(xs []float64) float64 { return quantile(xs, 0.5) }

// quantile interpolates linearly between the order statistics.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

func minOf(xs []float64) float64 { return quantile(xs, 0) }
func maxOf(xs []float64) float64 { return quantile(xs, 1) }

// row is one line of the results table.
type row struct {
	num, figure   string
	ours, ref     string
	ratio         float64 // NaN: no ratio
	goal, verdict string
}

// ratioRow compares two values against a maximum ratio.
func ratioRow(num, figure, unit string, o, r float64, prec int, maxRatio float64) row {
	ratio := o / r
	verdict := "missed"
	if ratio <= maxRatio {
		verdict = "met"
	}
	f := fmt.Sprintf("%%.%df %s", prec, unit)
	return row{num: num, figure: figure, ours: fmt.Sprintf(f, o), ref: fmt.Sprintf(f, r), ratio: ratio,
		goal: fmt.Sprintf("<= %gx", maxRatio), verdict: verdict}
}

// diagRow is a figure without a goal, to explain another.
func diagRow(num, figure, unit string, o, r float64, prec int) row {
	f := fmt.Sprintf("%%.%df %s", prec, unit)
	return row{num: num, figure: figure, ours: fmt.Sprintf(f, o), ref: fmt.Sprintf(f, r), ratio: o / r, goal: "-", verdict: ""}
}

const mb = 1e6 // figures in MB (10^6 bytes), as in the notes

func (r *results) rows(cfg config) []row {
	var rows []row
	kB := func(xs []float64) float64 { return mean(xs) * 1024 / mb }
	rows = append(rows,
		diagRow("1", fmt.Sprintf("idle RSS per shim (mean of %d; mostly the mapped binary, shared between shims)", len(r.idleRSS[ours])), "MB",
			kB(r.idleRSS[ours]), kB(r.idleRSS[ref]), 1),
		ratioRow("1", fmt.Sprintf("idle PSS per shim (mean of %d)", len(r.idlePSS[ours])), "MB",
			kB(r.idlePSS[ours]), kB(r.idlePSS[ref]), 2, 0.5),
		ratioRow("2", fmt.Sprintf("`ctr run --rm` busybox `true` (median of %d)", len(r.roundTrip[ours])), "ms",
			median(r.roundTrip[ours]), median(r.roundTrip[ref]), 1, 0.85),
		ratioRow("3", fmt.Sprintf("%d concurrent task create+start, wall to all running (median of %d)", cfg.parallel, len(r.parallel[ours])), "ms",
			median(r.parallel[ours]), median(r.parallel[ref]), 0, 0.9),
		ratioRow("4", fmt.Sprintf("Start call -> TaskOOM (median of %d)", len(r.callToOOM[ours])), "ms",
			median(r.callToOOM[ours]), median(r.callToOOM[ref]), 2, 1.0),
		diagRow("4", "diagnostic: TaskStart envelope -> TaskOOM envelope (median)", "ms",
			median(r.startToOOM[ours]), median(r.startToOOM[ref]), 2),
	)
	lag := diagRow("4", "diagnostic: TaskStart envelope's timestamp minus the Start call's return (median; negative: stamped before Start returned)", "ms",
		median(r.startStampLag[ours]), median(r.startStampLag[ref]), 2)
	lag.ratio = math.NaN()
	rows = append(rows, lag)
	gap := func(s int) string {
		return fmt.Sprintf("%.2f ms (min %.2f, %d/%d > 0)", median(r.oomToExit[s]), minOf(r.oomToExit[s]),
			countPositive(r.oomToExit[s]), r.oomRuns[s])
	}
	gapOK := "missed"
	if r.oomMissing[ours] == 0 && r.oomLostEvents[ours] == 0 && len(r.oomToExit[ours]) > 0 && minOf(r.oomToExit[ours]) > 0 {
		gapOK = "met"
	}
	rows = append(rows, row{num: "4", figure: "TaskOOM -> TaskExit gap (median, min, positive/runs)",
		ours: gap(ours), ref: gap(ref), ratio: math.NaN(), goal: "always > 0", verdict: gapOK})
	rows = append(rows,
		diagRow("5", "binary size as built (ours `make build`: -s -w; ref `go install`: not stripped)", "MB",
			float64(r.built[ours])/mb, float64(r.built[ref])/mb, 1),
		diagRow("5", "binary size, both `strip`ped", "MB",
			float64(r.stripped[ours])/mb, float64(r.stripped[ref])/mb, 1),
	)
	sw := func(s int) string {
		return fmt.Sprintf("%.0f (max %.0f; %d/%d shims woke)", median(r.idleSwitches[s]), maxOf(r.idleSwitches[s]),
			countPositive(r.idleSwitches[s]), len(r.idleSwitches[s]))
	}
	swOK := "missed"
	if maxOf(r.idleSwitches[ours]) == 0 {
		swOK = "met"
	}
	rows = append(rows,
		row{num: "6", figure: fmt.Sprintf("idle context switches per shim in %.0f s, all threads (median of %d)", r.idleWindowSeconds, len(r.idleSwitches[ours])),
			ours: sw(ours), ref: sw(ref), ratio: median(r.idleSwitches[ours]) / median(r.idleSwitches[ref]), goal: "0", verdict: swOK},
		ratioRow("7", fmt.Sprintf("`ctr task exec` `true` (median of %d)", len(r.exec[ours])), "ms",
			median(r.exec[ours]), median(r.exec[ref]), 1, 0.9),
		diagRow("7", "diagnostic: the same exec at the shim's own ttrpc API (Exec+Start+Wait+Delete, no ctr, no containerd; median)", "ms",
			median(r.directExec[ours]), median(r.directExec[ref]), 1),
		diagRow("7", "diagnostic: shim CPU per `ctr task exec`, own threads", "ms", r.execSelfCPU[ours], r.execSelfCPU[ref], 2),
		diagRow("7", "diagnostic: CPU of the shim's reaped children (runc) per `ctr task exec` (10 ms ticks)", "ms", r.execChildCPU[ours], r.execChildCPU[ref], 1),
	)
	return append(rows, r.newRows(cfg)...)
}

// newRows: memory per pod, shim CPU per lifecycle, Stats, the OOM storm.
func (r *results) newRows(cfg config) []row {
	var rows []row
	kB := func(xs []float64) float64 { return mean(xs) * 1024 / mb }
	for _, ph := range r.pods {
		for _, st := range []struct {
			when string
			m    [2][]memReading
		}{{"idle", ph.idle}, {fmt.Sprintf("after %d exec round trips per pod", ph.probesPerPod), ph.probed}} {
			rows = append(rows,
				ratioRow("8", fmt.Sprintf("PSS per pod shim, %d pods, %s (mean)", ph.n, st.when), "MB",
					kB(field(st.m[ours], pssOf)), kB(field(st.m[ref], pssOf)), 2, 0.4),
				ratioRow("8", fmt.Sprintf("USS per pod shim, %d pods, %s (mean)", ph.n, st.when), "MB",
					kB(field(st.m[ours], ussOf)), kB(field(st.m[ref], ussOf)), 2, 0.4),
			)
			if ph == r.pods[len(r.pods)-1] {
				rows = append(rows, diagRow("8", fmt.Sprintf("node total: PSS of all %d pod shims, %s", ph.n, st.when), "MB",
					sum(field(st.m[ours], pssOf))*1024/mb, sum(field(st.m[ref], pssOf))*1024/mb, 1))
			}
		}
	}
	if f := r.floor; f != nil && len(r.pods) > 0 {
		ph := r.pods[0]
		rows = append(rows,
			diagRow("8", fmt.Sprintf("floor: anonymous memory of a Go ttrpc server with only the task API (bench/floor, no container), idle; the reference: its USS per pod shim, %d pods, idle", ph.n), "MB",
				f.idle*1024/mb, kB(field(ph.idle[ref], ussOf)), 2),
			diagRow("8", fmt.Sprintf("floor: the same after %d calls and a release of its free heap; the reference: after the probes, %d pods", f.calls, ph.n), "MB",
				f.after*1024/mb, kB(field(ph.probed[ref], ussOf)), 2),
		)
	}
	if r.lifeRuns[ours] > 0 && r.lifeRuns[ref] > 0 {
		per := func(d time.Duration, n int) float64 { return ms(d) / float64(n) }
		rows = append(rows,
			ratioRow("9", fmt.Sprintf("shim CPU per container lifecycle (start action + server; sum of %d, per run)", r.lifeRuns[ours]), "ms",
				per(r.lifeServer[ours]+r.lifeStart[ours], r.lifeRuns[ours]), per(r.lifeServer[ref]+r.lifeStart[ref], r.lifeRuns[ref]), 2, 0.5),
			diagRow("9", "diagnostic: the server's own threads, per run", "ms",
				per(r.lifeServer[ours], r.lifeRuns[ours]), per(r.lifeServer[ref], r.lifeRuns[ref]), 2),
			diagRow("9", "diagnostic: the start action, per run", "ms",
				per(r.lifeStart[ours], r.lifeRuns[ours]), per(r.lifeStart[ref], r.lifeRuns[ref]), 2),
		)
		for p, name := range phaseNames {
			rows = append(rows, diagRow("9", fmt.Sprintf("diagnostic: lifecycle phase as the client waits for it: %s (median)", name), "ms",
				median(r.lifePhases[ours][p]), median(r.lifePhases[ref][p]), 2))
		}
	}
	if n := len(r.pods); n > 0 && r.pods[n-1].statsCalls > 0 {
		ph := r.pods[n-1]
		rows = append(rows,
			ratioRow("10", fmt.Sprintf("shim CPU per Stats call, %d pods x %d calls (mean over shims)", ph.n, ph.statsCalls), "ms",
				mean(ph.statsCPU[ours]), mean(ph.statsCPU[ref]), 3, 0.5),
			diagRow("10", "Stats call latency through containerd (median)", "ms",
				median(ph.statsLatency[ours]), median(ph.statsLatency[ref]), 2),
			diagRow("10", fmt.Sprintf("RSS per pod shim after the %d Stats calls (mean)", ph.statsCalls), "MB",
				kB(field(ph.afterStats[ours], rssOf)), kB(field(ph.afterStats[ref], rssOf)), 1),
		)
	}
	if len(r.stormDelay[ours]) > 0 && len(r.stormDelay[ref]) > 0 {
		p50 := diagRow("11", "OOM storm: kill -> TaskOOM, p50", "ms",
			median(r.stormDelay[ours]), median(r.stormDelay[ref]), 1)
		if median(r.stormDelay[ref]) <= 0 || median(r.stormDelay[ours]) <= 0 {
			p50.ratio = math.NaN() // a ratio of signed delays says nothing
		}
		mis := func(s int) string {
			return fmt.Sprintf("%d of %d (no kill record: %d)", r.stormMisordered[s], r.stormContainers[s], r.stormNoKill[s])
		}
		ok := "missed"
		if r.stormMisordered[ours] == 0 {
			ok = "met"
		}
		rows = append(rows,
			ratioRow("11", fmt.Sprintf("OOM storm, %d at once in one pod shim: kill -> TaskOOM, p99 (%d containers)", cfg.stormSize, len(r.stormDelay[ours])), "ms",
				quantile(r.stormDelay[ours], 0.99), quantile(r.stormDelay[ref], 0.99), 1, 1.0),
			p50,
			row{num: "11", figure: "OOM storm: TaskOOM after the TaskExit, or none", ours: mis(ours), ref: mis(ref),
				ratio: math.NaN(), goal: "0", verdict: ok},
		)
	}
	return rows
}

func countPositive(xs []float64) int {
	n := 0
	for _, x := range xs {
		if x > 0 {
			n++
		}
	}
	return n
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", x)
}

// figureStep names the step (-steps) that takes each numbered figure.
var figureStep = map[string]string{
	"1": "idle", "2": "roundtrips", "3": "parallel", "4": "oom", "5": "sizes", "6": "idle",
	"7": "execs", "8": "pods", "9": "lifecycle", "10": "pods", "11": "storm",
}

// markdown renders the results file: command, date, machine, the table, the
// spread of the timed figures and how each figure is taken.
func (r *results) markdown(cfg config) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Shim benchmark: ours vs containerd's containerd-shim-runc-v2\n\n")
	p("- Command: `%s`\n", cfg.command)
	p("- Date: %s (the run took %s)\n", r.started.UTC().Format("2006-01-02 15:04 MST"), r.took.Round(time.Second))
	p("- Machine: %s; load average at start %s\n", machine(), r.load)
	p("- Tools: %s\n", r.versions)
	p("- Ours: `%s` (%s)\n", cfg.ours.path, cfg.ours.version)
	p("- Reference: `%s` (%s)\n\n", cfg.ref.path, cfg.ref.version)

	p("| # | figure | ours | reference | ours / ref | goal | |\n")
	p("| --- | --- | ---: | ---: | ---: | --- | --- |\n")
	for _, rw := range r.rows(cfg) {
		if cfg.steps != nil && !cfg.steps[figureStep[rw.num]] {
			continue // a step -steps left out
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", rw.num, rw.figure, rw.ours, rw.ref, fmtRatio(rw.ratio), rw.goal, rw.verdict)
	}

	p("\nSpread of the timed figures (ms): min / p25 / median / p75 / max.\n\n")
	p("| figure | ours | reference |\n| --- | --- | --- |\n")
	spread := func(xs []float64) string {
		if len(xs) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f / %.1f", minOf(xs), quantile(xs, 0.25), median(xs), quantile(xs, 0.75), maxOf(xs))
	}
	for _, f := range []struct {
		name string
		xs   [2][]float64
	}{
		{"ctr run --rm true", r.roundTrip},
		{"ctr task exec true", r.exec},
		{"exec at the shim API", r.directExec},
		{"parallel starts", r.parallel},
		{"Start call -> TaskOOM", r.callToOOM},
		{"TaskStart -> TaskOOM", r.startToOOM},
		{"TaskStart stamp - Start return", r.startStampLag},
		{"TaskOOM -> TaskExit", r.oomToExit},
		{"OOM storm: kill -> TaskOOM", r.stormDelay},
		{"OOM storm: kill -> TaskOOM's timestamp", r.stormStamped},
	} {
		if len(f.xs[ours]) == 0 && len(f.xs[ref]) == 0 {
			continue // its step did not run
		}
		p("| %s | %s | %s |\n", f.name, spread(f.xs[ours]), spread(f.xs[ref]))
	}
	var other []string
	if len(r.idleThreads[ours]) > 0 {
		other = append(other, fmt.Sprintf("threads per idle shim (median) ours %.0f, reference %.0f",
			median(r.idleThreads[ours]), median(r.idleThreads[ref])))
	}
	if r.oomRuns[ours] > 0 {
		other = append(other, fmt.Sprintf("OOM runs without a TaskOOM: ours %d/%d, reference %d/%d; without TaskStart or TaskExit (within %s of the exit status): ours %d, reference %d; exit status other than 137: ours %d, reference %d",
			r.oomMissing[ours], r.oomRuns[ours], r.oomMissing[ref], r.oomRuns[ref], oomGrace, r.oomLostEvents[ours], r.oomLostEvents[ref],
			r.oomBadStatus[ours], r.oomBadStatus[ref]))
	}
	if len(other) > 0 {
		p("\nOther observations: %s.\n", strings.Join(other, "; "))
	}

	p("\nHow each figure is taken (one private containerd, info log level, CRI off; each container names its shim by absolute runtime path; samples alternate ours/reference):\n\n")
	p("1. %d `sleep` containers per shim, each with its own shim, started alternately; after 3 s to settle and the %.0f s window of figure 6, `Rss:` and `Pss:` of `/proc/<shim>/smaps_rollup`, averaged over the shims. PSS shares pages between the shims of one binary, so it depends on their number.\n", cfg.idle, r.idleWindowSeconds)
	p("2. Wall time of `ctr run --rm --runtime <shim> docker.io/library/busybox:latest <id> true` (ctr's own start-up included), after %d warm-ups per shim.\n", cfg.warmups)
	p("3. %d containers (metadata and snapshot made beforehand) get `NewTask` + `Start` from %d goroutines at once; wall time until the last `Start` returned. Tasks are then killed and deleted and the shims waited for before the next round.\n", cfg.parallel, cfg.parallel)
	p("4. `dd if=/dev/zero of=/dev/null bs=200M count=1` under a 20 MiB memory (and memory+swap) limit. The figure: the TaskOOM envelope's timestamp minus the time the benchmark called `Start` (the container's start as its user asks for it, the same point for both shims). The gap: TaskExit's envelope timestamp minus TaskOOM's. Envelope timestamps are set by the shim: ours when it queues the event, the reference's when its forwarder takes the event off its queue (TaskStart, TaskExit) or when it publishes it directly (TaskOOM), so TaskStart's timestamp is not a common start point; the diagnostics show it. The task is deleted only once its events arrived (or %s passed).\n", oomGrace)
	p("5. File sizes; stripped copies made with `strip`.\n")
	p("6. Sum of `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` over `/proc/<shim>/task/*/status`, difference across the window, for the shims of figure 1 with their containers running `sleep`.\n")
	p("7. Wall time of `ctr task exec --exec-id <n> <id> true` into one running container per shim, after %d warm-ups. Diagnostics: the shim's CPU over those execs (its threads' `schedstat` run time; its children's `cutime`+`cstime`), and the same exec driven through a ttrpc connection of our own to the shim (address from the bundle's `bootstrap.json`), timing the shim and runc alone.\n", cfg.warmups)
	p("8. Pods as CRI makes them: per shim binary, %v pods (one count at a time), each one shim (the runc group annotation) holding a `sleep` sandbox and a `sleep` workload container. After 3 s, `Pss:` and USS (`Private_Clean:` + `Private_Dirty:`) of each shim's `smaps_rollup`, averaged; then %d exec round trips of `true` per pod (stdout and stderr fifos, waited for and deleted, as kubelet's exec probes through CRI), %d in flight, interleaved over pods and binaries, and the same readings 3 s later. The node total is the sum of PSS over the shims of one binary. PSS splits shared pages between the shims of a binary, so it falls as pods are added; USS does not.\n", cfg.podCounts, cfg.podExecs, cfg.podConcurrency)
	p("9. %d container lifecycles per binary (after %d warm-ups), each as `ctr run --rm true` makes it, through the client: create with stdout and stderr fifos, Wait, Start, the exit, Delete. The server's CPU: its threads' `schedstat` run time, read every millisecond after Delete until it exits; the start action's: what containerd (which reaps it) gains in `cutime`+`cstime`, exact over the sum to one 10 ms tick. runc's CPU is in neither. The phases: the client's wall time of NewTask (the start action, the server's start, Create), Start, Start's return to the exit reaching Wait, Delete (which returns once containerd has shut the server down and run the delete action), and Delete's return to the server's exit.\n", cfg.lifecycles, cfg.warmups)
	p("10. With the last pod count running, %d rounds of `Stats` of every pod's workload container (containerd's task metrics, which asks the shim; kubelet's stats polling), alternating binaries, the rounds starting %s apart (kubelet polls every 10 s; what matters is that each shim is idle between its calls for longer than any timer it arms after a request: ours releases free heap 1 s after its last request); each call timed; each shim's own CPU (`schedstat`) from before the first call to 3 s after the last, divided by the calls; RSS 3 s after.\n", cfg.statsCalls, cfg.statsInterval)
	p("11. Per storm, one pod shim (a `sleep` sandbox) and %d containers under a 20 MiB memory (and memory+swap) limit, each a shell blocked reading a fifo bind-mounted from the host; one write of a line for each releases them together, and each `exec`s `dd` of 200 MiB. The kill's time: the kernel's `Killed process <pid>` record in `/dev/kmsg` (the container's init pid), its monotonic stamp put on the wall clock by a marker record the benchmark writes first; the TaskOOM's: when it reached this benchmark's event subscription (where containerd's clients see it). The diagnostics also give the kill -> the TaskOOM envelope's timestamp (ours: when the shim queued the event; the reference's: when it published it). %d storms per binary, alternating.\n", cfg.stormSize, cfg.storms)
	return b.String()
}
