package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
)

// defaultCycles is the stress test's number of `ctr run --rm` cycles; the
// CYCLES environment variable overrides it.
const defaultCycles = 500

func stressCycles(t *testing.T) int {
	v := os.Getenv("CYCLES")
	if v == "" {
		return defaultCycles
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("CYCLES=%q: want a positive integer", v)
	}
	return n
}

// cycleTally is what the event stream said about one container.
type cycleTally struct {
	exits, deletes      int
	firstExit, firstDel int // event indexes, -1 if none
}

// TestStressRunRm runs CYCLES sequential `ctr run --rm <image> <id> true`
// while recording the namespace's events, and requires for every container
// exactly one TaskExit and one TaskDelete, the exit first. (The reference
// shim v2.4.2 loses a few percent of its TaskExit events here.)
func TestStressRunRm(t *testing.T) {
	cycles := stressCycles(t)
	// A guard against a hang, not a timing assertion: generous for TCG under load.
	te := newTestEnvTimeout(t, time.Duration(cycles)*10*time.Second+5*time.Minute)
	te.Image()
	rec := te.recordEvents()

	var failures []string
	started := time.Now()
	for i := range cycles {
		id := fmt.Sprintf("cycle-%d", i)
		ctx, cancel := context.WithTimeout(te.ctx, time.Minute)
		out, err := te.ctrRun(ctx, te.h.imageRef, id, "true")
		cancel()
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v: %s", id, err, strings.TrimSpace(stripCtrNoise(string(out)))))
		}
		if te.ctx.Err() != nil {
			t.Fatalf("deadline hit after %d of %d cycles", i+1, cycles)
		}
	}
	elapsed := time.Since(started)

	events, err := rec.mark(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	tally := map[string]*cycleTally{}
	for i := range cycles {
		tally[fmt.Sprintf("cycle-%d", i)] = &cycleTally{firstExit: -1, firstDel: -1}
	}
	var strays []string
	for idx, e := range events {
		switch ev := e.Event.(type) {
		case *eventstypes.TaskExit:
			c := tally[ev.ContainerID]
			if c == nil || ev.ID != ev.ContainerID {
				strays = append(strays, e.String())
				continue
			}
			c.exits++
			if c.firstExit < 0 {
				c.firstExit = idx
			}
		case *eventstypes.TaskDelete:
			c := tally[ev.ContainerID]
			if c == nil {
				strays = append(strays, e.String())
				continue
			}
			c.deletes++
			if c.firstDel < 0 {
				c.firstDel = idx
			}
		}
	}

	var missingExit, dupExit, missingDel, dupDel, misordered []string
	for i := range cycles {
		id := fmt.Sprintf("cycle-%d", i)
		c := tally[id]
		switch {
		case c.exits == 0:
			missingExit = append(missingExit, id)
		case c.exits > 1:
			dupExit = append(dupExit, id)
		}
		switch {
		case c.deletes == 0:
			missingDel = append(missingDel, id)
		case c.deletes > 1:
			dupDel = append(dupDel, id)
		}
		if c.firstExit >= 0 && c.firstDel >= 0 && c.firstExit > c.firstDel {
			misordered = append(misordered, id)
		}
	}

	t.Logf("%d cycles in %v (%v per cycle), %d events recorded", cycles, elapsed.Round(time.Millisecond),
		(elapsed / time.Duration(cycles)).Round(time.Millisecond), len(events))
	t.Logf("ctr failures %d; TaskExit missing %d, duplicated %d; TaskDelete missing %d, duplicated %d; TaskExit after TaskDelete %d; stray events %d",
		len(failures), len(missingExit), len(dupExit), len(missingDel), len(dupDel), len(misordered), len(strays))

	report := reporter(t, cycles, "containers")
	report("ctr run --rm failed", failures)
	report("TaskExit missing", missingExit)
	report("TaskExit published more than once", dupExit)
	report("TaskDelete missing", missingDel)
	report("TaskDelete published more than once", dupDel)
	report("TaskExit published after TaskDelete", misordered)
	report("task events for unknown containers or exec ids", strays)
}

func firstN(list []string, n int) []string {
	if len(list) > n {
		return append(append([]string(nil), list[:n]...), "...")
	}
	return list
}

// stripCtrNoise drops ctr's cgroup v1 deprecation warning.
func stripCtrNoise(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "DEPRECATION") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// reporter returns a function that fails t for a non-empty list of what went
// wrong, naming up to 10 entries; n is how many units were tried.
func reporter(t *testing.T, n int, units string) func(what string, list []string) {
	return func(what string, list []string) {
		t.Helper()
		if len(list) > 0 {
			t.Errorf("%s: %d of %d %s, e.g. %s", what, len(list), n, units, strings.Join(firstN(list, 10), ", "))
		}
	}
}
