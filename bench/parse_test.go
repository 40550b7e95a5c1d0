package main

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestStatusField(t *testing.T) {
	smaps := []byte("00400000-7ffc25253000 ---p 00000000 00:00 0 [rollup]\nRss:               10856 kB\nPss:                5341 kB\nPss_Dirty:          2588 kB\n")
	status := []byte("Name:\tcontainerd-shim\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n")
	for _, tc := range []struct {
		name string
		data []byte
		key  string
		want uint64
		err  bool
	}{
		{"rss", smaps, "Rss:", 10856, false},
		{"pss, not Pss_Dirty", smaps, "Pss:", 5341, false},
		{"voluntary", status, "voluntary_ctxt_switches:", 12, false},
		{"nonvoluntary", status, "nonvoluntary_ctxt_switches:", 3, false},
		{"missing", status, "Rss:", 0, true},
		{"empty value", []byte("Rss:\n"), "Rss:", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := statusField(tc.data, tc.key)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("statusField(%q) = %d, %v; want %d, error %v", tc.key, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		q    float64
		want float64
	}{
		{"median odd", []float64{3, 1, 2}, 0.5, 2},
		{"median even", []float64{4, 1, 3, 2}, 0.5, 2.5},
		{"min", []float64{4, 1, 3}, 0, 1},
		{"max", []float64{4, 1, 3}, 1, 4},
		{"one", []float64{7}, 0.25, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := quantile(tc.xs, tc.q); got != tc.want {
				t.Fatalf("quantile(%v, %v) = %v, want %v", tc.xs, tc.q, got, tc.want)
			}
		})
	}
	if !math.IsNaN(median(nil)) {
		t.Fatal("median of nothing should be NaN")
	}
}

func TestSoakSection(t *testing.T) {
	sec := soakBegin + "\nsoak figures\n" + soakEnd + "\n"
	doc := withSection("# Results\n\ntable\n", sec)
	if want := "# Results\n\ntable\n\n" + sec; doc != want {
		t.Fatalf("appended: %q, want %q", doc, want)
	}
	if got := soakSection(doc); got != sec {
		t.Fatalf("soakSection: %q, want %q", got, sec)
	}
	sec2 := soakBegin + "\nnew figures\n" + soakEnd + "\n"
	if got, want := withSection(doc, sec2), "# Results\n\ntable\n\n"+sec2; got != want {
		t.Fatalf("replaced: %q, want %q", got, want)
	}
	if got := withSection(doc, ""); got != "# Results\n\ntable\n" {
		t.Fatalf("dropped: %q", got)
	}
	if got := soakSection("no section"); got != "" {
		t.Fatalf("soakSection of a doc without one: %q", got)
	}
}

func TestGoroutineDumpCount(t *testing.T) {
	for _, line := range []string{
		`time="x" level=info msg="=== goroutine stack dump ===\ngoroutine 1 [running]:\nmain.main()\n\ngoroutine 7 [select, 2 minutes]:\n\ngoroutine 12 gp=0xc000 m=nil mp=0x0 [chan receive]:\n=== end of dump ==="`,
		`time="x" level=info msg="=== BEGIN goroutine stack dump ===\ngoroutine 1 [running]:\n\ngoroutine 7 [select]:\n\ngoroutine 9 [IO wait]:\n=== END goroutine stack dump ===" runtime=io.containerd.runc.v2`,
	} {
		if !dumpStart.MatchString(line) {
			t.Fatalf("no dump start in %q", line)
		}
		if n := len(goroutineHead.FindAllStringIndex(line, -1)); n != 3 {
			t.Fatalf("%d goroutines in %q, want 3", n, line)
		}
	}
}

func TestParseKmsg(t *testing.T) {
	stamp, msg, ok := parseKmsg("3,1234,5678901,-;Memory cgroup out of memory: Killed process 4242 (dd) total-vm:206000kB\n SUBSYSTEM=memory\n")
	if !ok || stamp != 5678901*time.Microsecond || msg != "Memory cgroup out of memory: Killed process 4242 (dd) total-vm:206000kB" {
		t.Fatalf("got %v %q %v", stamp, msg, ok)
	}
	if m := killedRE.FindStringSubmatch(msg); m == nil || m[1] != "4242" {
		t.Fatalf("kill record not matched: %v", m)
	}
	for _, bad := range []string{"", "no separator", "3,1;x", "3,1,notanumber,-;x"} {
		if _, _, ok := parseKmsg(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

// Every figure of the report belongs to a step -steps can name, so a
// partial run leaves out exactly the figures it did not take.
func TestFigureSteps(t *testing.T) {
	r := &results{pods: []*podPhase{{n: 1, statsCalls: 1}}, lifeRuns: [2]int{1, 1},
		stormDelay: [2][]float64{{1}, {1}}}
	for _, rw := range r.rows(config{}) {
		st, ok := figureStep[rw.num]
		if !ok || !slices.Contains(stepNames, st) {
			t.Errorf("figure %s (%s): step %q is not one of %v", rw.num, rw.figure, st, stepNames)
		}
	}
}
