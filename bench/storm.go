package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The OOM storm: e.cfg.stormSize containers in one pod shim (a sandbox
// and the hogs, the group annotation), released at once, each then
// exceeding its 20 MiB limit. The delay of each TaskOOM is from the
// kernel's kill (its "Killed process <pid>" record in /dev/kmsg, whose
// monotonic stamp is put on the wall clock by a marker the benchmark
// writes there first) to the TaskOOM's arrival at this subscriber, which
// is where containerd's clients see it. Misordered: a container whose
// TaskOOM arrived after its TaskExit, or never.

// stormResult is one storm of one shim binary.
type stormResult struct {
	delays     []float64 // ms, kill -> TaskOOM arrival, per container
	stamped    []float64 // ms, kill -> the TaskOOM envelope's timestamp
	misordered int
	missing    int // no kill record found for the container's init
}

func (e *env) oomStorms(ctx context.Context, r *results) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l, err := e.subscribe(sctx)
	if err != nil {
		return err
	}
	for i := 0; i < e.cfg.storms; i++ {
		for _, s := range order(i) {
			res, err := e.oomStorm(ctx, l, fmt.Sprintf("storm-%s-%d", shortName[s], i), s)
			if err != nil {
				return fmt.Errorf("%s: %w", e.shims()[s].name, err)
			}
			r.stormDelay[s] = append(r.stormDelay[s], res.delays...)
			r.stormStamped[s] = append(r.stormStamped[s], res.stamped...)
			r.stormMisordered[s] += res.misordered
			r.stormNoKill[s] += res.missing
			r.stormContainers[s] += e.cfg.stormSize
		}
	}
	return nil
}

var killedRE = regexp.MustCompile(`Killed process (\d+) `)

func (e *env) oomStorm(ctx context.Context, l *eventLog, pod string, s int) (stormResult, error) {
	var res stormResult
	sh := e.shims()[s]
	dir, err := os.MkdirTemp(e.Base, pod+"-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	fifo := filepath.Join(dir, "go")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return res, err
	}
	var cs []client.Container
	defer e.destroyLater(&cs)
	group := oci.WithAnnotations(map[string]string{groupAnnotation: pod})
	sandbox, err := e.newContainer(ctx, pod, sh, oci.WithProcessArgs("sleep", "86400"), group)
	if err != nil {
		return res, err
	}
	cs = append(cs, sandbox)
	if _, err := startTask(ctx, sandbox); err != nil {
		return res, err
	}
	gate := oci.WithMounts([]specs.Mount{{Destination: "/gate", Type: "bind", Source: dir, Options: []string{"rbind", "ro"}}})
	type hog struct {
		id   string
		pid  uint32
		exit <-chan client.ExitStatus
	}
	hogs := make([]hog, 0, e.cfg.stormSize)
	for i := 0; i < e.cfg.stormSize; i++ {
		id := fmt.Sprintf("%s-h%d", pod, i)
		c, err := e.newContainer(ctx, id, sh, group, gate,
			oci.WithProcessArgs("sh", "-c", "read x < /gate/go; exec dd if=/dev/zero of=/dev/null bs=200M count=1"),
			oci.WithMemoryLimit(oomLimit), oci.WithMemorySwap(oomLimit))
		if err != nil {
			return res, err
		}
		cs = append(cs, c)
		t, err := c.NewTask(ctx, cio.NullIO)
		if err != nil {
			return res, fmt.Errorf("create %s: %w", id, err)
		}
		ch, err := t.Wait(ctx)
		if err != nil {
			return res, err
		}
		if err := t.Start(ctx); err != nil {
			return res, fmt.Errorf("start %s: %w", id, err)
		}
		hogs = append(hogs, hog{id: id, pid: t.Pid(), exit: ch})
	}
	// Every shell waits in the fifo's open by now.
	if err := sleepCtx(ctx, time.Second); err != nil {
		return res, err
	}
	kmsg, err := os.Open("/dev/kmsg")
	if err != nil {
		return res, err
	}
	defer kmsg.Close()
	if _, err := unix.Seek(int(kmsg.Fd()), 0, unix.SEEK_END); err != nil {
		return res, fmt.Errorf("seek /dev/kmsg: %w", err)
	}
	marker := fmt.Sprintf("oomshim-bench storm %s", pod)
	if err := os.WriteFile("/dev/kmsg", []byte(marker), 0); err != nil {
		return res, fmt.Errorf("write /dev/kmsg: %w", err)
	}
	markedAt := time.Now()
	// Release them all: one line each, the fifo held open until the end.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		return res, err
	}
	defer w.Close()
	if _, err := w.WriteString(strings.Repeat("go\n", len(hogs))); err != nil {
		return res, err
	}
	for _, h := range hogs {
		select {
		case <-h.exit:
		case <-time.After(time.Minute):
			return res, fmt.Errorf("%s did not exit within a minute", h.id)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	wctx, cancel := context.WithTimeout(ctx, oomGrace)
	_ = l.wait(wctx, func() bool {
		for _, h := range hogs {
			if t := l.byID[h.id]; t == nil || t.oomArrived.IsZero() || t.exitArrived.IsZero() {
				return false
			}
		}
		return true
	})
	cancel()
	kills, offset, err := readKills(kmsg, marker, markedAt)
	if err != nil {
		return res, err
	}
	for _, h := range hogs {
		t := l.times(h.id)
		if t.oomArrived.IsZero() || (!t.exitArrived.IsZero() && t.exitSeq < t.oomSeq) {
			res.misordered++
		}
		mono, ok := kills[int(h.pid)]
		if !ok {
			res.missing++
			continue
		}
		if !t.oomArrived.IsZero() {
			res.delays = append(res.delays, ms(t.oomArrived.Sub(offset.Add(mono))))
			res.stamped = append(res.stamped, ms(t.oom.Sub(offset.Add(mono))))
		}
	}
	return res, nil
}

// readKills reads /dev/kmsg (positioned before the marker) without
// blocking: the pids of the "Killed process" records and their monotonic
// stamps, and the wall time of stamp 0 from the marker's record.
func readKills(kmsg *os.File, marker string, markedAt time.Time) (map[int]time.Duration, time.Time, error) {
	fd := int(kmsg.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, time.Time{}, err
	}
	kills := map[int]time.Duration{}
	var origin time.Time
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf) // one record per read
		if err == unix.EPIPE {
			continue // records overwritten meanwhile
		}
		if err != nil || n <= 0 {
			break // EAGAIN: the end
		}
		stamp, msg, ok := parseKmsg(string(buf[:n]))
		if !ok {
			continue
		}
		if strings.HasSuffix(msg, marker) {
			origin = markedAt.Add(-stamp)
			continue
		}
		if m := killedRE.FindStringSubmatch(msg); m != nil {
			pid, _ := strconv.Atoi(m[1])
			kills[pid] = stamp
		}
	}
	if origin.IsZero() {
		return nil, origin, fmt.Errorf("the marker %q is not in /dev/kmsg", marker)
	}
	return kills, origin, nil
}

// parseKmsg splits a /dev/kmsg record ("prio,seq,usec,flags;message\n"
// and continuation lines) into its monotonic stamp and first line.
func parseKmsg(rec string) (time.Duration, string, bool) {
	head, msg, ok := strings.Cut(rec, ";")
	if !ok {
		return 0, "", false
	}
	f := strings.Split(head, ",")
	if len(f) < 3 {
		return 0, "", false
	}
	usec, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return 0, "", false
	}
	msg, _, _ = strings.Cut(msg, "\n")
	return time.Duration(usec) * time.Microsecond, strings.TrimSpace(msg), true
}
