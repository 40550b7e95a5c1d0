package integration

import (
	"oomshim/testkit"

	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"
)

// holdFor is how long TestEventsHeldForAMinute keeps containerd from
// taking events.
const holdFor = time.Minute

// TestEventsHeldForAMinute: containerd takes no events for a minute (its
// ttrpc socket, where shims forward them, passes nothing on) while it
// serves its API as usual. Meanwhile the shim of a group of three
// containers answers Create, Start, Exec, State, Kill and Delete at once;
// no Wait returns (each waits for its TaskExit to be out); and the last
// Delete's Shutdown answers within containerd's 3 s (containerd logs no
// failed shutdown). When containerd takes events again, every queued
// event arrives once, each container's in the order the calls made them,
// and the shim exits. (The shim waits for containerd's answer to a
// forward rather than sending it again, which would deliver it twice once
// containerd reads both.)
func TestEventsHeldForAMinute(t *testing.T) {
	te0 := newTestEnvTimeout(t, holdFor+3*time.Minute)
	d := te0.privateContainerd("oomshim-hold-", "the held events test", nil, te0.ns)
	te := te0.onContainerd(d)
	gate := gateSocket(t, d.TTRPCAddress)
	rec := te.recordEvents()

	group := oci.WithAnnotations(map[string]string{"io.containerd.runc.v2.group": "held"})
	a := te.containerWith("a", nil, group, oci.WithProcessArgs("sleep", "1000"))
	taskA, exitA := te.startTask(a, cio.NullIO)
	b := te.containerWith("b", nil, group, oci.WithProcessArgs("sleep", "1000"))
	taskB, exitB := te.startTask(b, cio.NullIO)
	c := te.containerWith("c", nil, group, oci.WithProcessArgs("sleep", "1000"))
	shims := testkit.ShimProcesses(d.Address, te.h.shimPath)
	if len(shims) != 1 {
		t.Fatalf("want one shim for the group, found %v", shims)
	}
	if _, err := rec.waitFor(te.ctx, "b's TaskStart", isTopicOf("/tasks/start", "b")); err != nil {
		t.Fatal(err)
	}
	before := len(rec.snapshot())

	gate.hold()
	held := time.Now()
	// Every call below must answer while events are held: each gets a
	// deadline well inside the hold.
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(te.ctx, 15*time.Second) }
	ctx, cancel := call()
	defer cancel()
	taskC, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("create c with events held: %v", err)
	}
	t.Cleanup(func() { te.destroyTask(taskC) })
	exitC, err := taskC.Wait(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := taskC.Start(ctx); err != nil {
		t.Fatalf("start c with events held: %v", err)
	}
	probe, err := taskA.Exec(ctx, "probe", te.processSpec(a, "true"), cio.NullIO)
	if err != nil {
		t.Fatalf("exec in a with events held: %v", err)
	}
	exitProbe, err := probe.Wait(te.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := probe.Start(ctx); err != nil {
		t.Fatalf("start the exec with events held: %v", err)
	}
	cancel()
	stopped := func(p interface {
		Status(context.Context) (client.Status, error)
	}, what string) {
		t.Helper()
		ctx, cancel := call()
		defer cancel()
		for {
			st, err := p.Status(ctx)
			if err != nil {
				t.Fatalf("state of %s with events held: %v", what, err)
			}
			if st.Status == client.Stopped {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	kill := func(task client.Task) {
		t.Helper()
		ctx, cancel := call()
		defer cancel()
		if err := task.Kill(ctx, unix.SIGKILL); err != nil {
			t.Fatalf("kill %s with events held: %v", task.ID(), err)
		}
		stopped(task, task.ID())
	}
	del := func(p interface {
		Delete(context.Context, ...client.ProcessDeleteOpts) (*client.ExitStatus, error)
	}, what string, want uint32) {
		t.Helper()
		ctx, cancel := call()
		defer cancel()
		st, err := p.Delete(ctx)
		if err != nil {
			t.Fatalf("delete %s with events held: %v", what, err)
		}
		if st.ExitCode() != want {
			t.Errorf("delete %s: exit status %d, want %d", what, st.ExitCode(), want)
		}
	}
	stopped(probe, "the exec")
	kill(taskB)
	kill(taskC)
	kill(taskA)
	// Every process has exited; no Wait may answer before its TaskExit is
	// out. (Once the tasks are deleted below, containerd ends the Waits it
	// still has open with an error.)
	for what, ch := range map[string]<-chan client.ExitStatus{"a": exitA, "b": exitB, "c": exitC, "the exec": exitProbe} {
		select {
		case st := <-ch:
			t.Errorf("Wait for %s returned (%d, %v) while its TaskExit was held", what, st.ExitCode(), st.Error())
		default:
		}
	}
	del(probe, "the exec", 0)
	del(taskB, "b", 137)
	del(taskC, "c", 137)
	del(taskA, "a", 137) // the last: containerd then shuts the shim down
	answered := time.Since(held)
	t.Logf("every call answered %v into the hold", answered.Round(time.Millisecond))
	if answered >= holdFor {
		t.Fatalf("the calls took %v, longer than the hold", answered)
	}

	time.Sleep(time.Until(held.Add(holdFor)))
	gate.release()
	// Each container's TaskDelete is its last event; the lanes arrive in
	// no fixed order, so wait for all three.
	for _, id := range []string{"a", "b", "c"} {
		if _, err := rec.waitFor(te.ctx, id+"'s TaskDelete", isTopicOf("/tasks/delete", id)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	seen := map[string]bool{}
	dups := 0
	for _, e := range taskEvents(rec.snapshot()[before:]) {
		key := fmt.Sprintf("%s@%d", e, e.At.UnixNano())
		if seen[key] {
			dups++
			continue
		}
		seen[key] = true
		got = append(got, e.Topic+" "+eventID(e))
	}
	// Each container's events in the order its calls made them; the
	// shim forwards different containers' events side by side, so their
	// interleaving is free.
	want := map[string][]string{
		"a": {"/tasks/exec-added a/probe", "/tasks/exec-started a/probe", "/tasks/exit a/probe", "/tasks/exit a", "/tasks/delete a"},
		"b": {"/tasks/exit b", "/tasks/delete b"},
		"c": {"/tasks/create c", "/tasks/start c", "/tasks/exit c", "/tasks/delete c"},
	}
	perContainer := map[string][]string{}
	for _, line := range got {
		id, _, _ := strings.Cut(strings.Fields(line)[1], "/")
		perContainer[id] = append(perContainer[id], line)
	}
	for id := range perContainer {
		if _, ok := want[id]; !ok {
			t.Errorf("events of %s after the hold: %v, want none", id, perContainer[id])
		}
	}
	for id, w := range want {
		if g := perContainer[id]; strings.Join(g, "\n") != strings.Join(w, "\n") {
			t.Errorf("events of %s after the hold:\n  %s\nwant:\n  %s", id, strings.Join(g, "\n  "), strings.Join(w, "\n  "))
		}
	}
	if dups > 0 {
		t.Errorf("%d events arrived twice: a forward containerd had not answered was sent again", dups)
	}
	if err := testkit.WaitPidExit(shims[0].PID, 30*time.Second); err != nil {
		t.Errorf("the shim after the hold: %v", err)
	}
	if log := d.LogSince(0, 100000); strings.Contains(log, "failed to shutdown shim task") {
		t.Errorf("containerd's Shutdown of the shim failed:\n%s", grepLines(log, "failed to shutdown shim task"))
	}
}

// isTopicOf matches an event of topic about container id.
func isTopicOf(topic, id string) func(recordedEvent) bool {
	return func(e recordedEvent) bool { return e.Topic == topic && containerOf(e) == id }
}

// eventID names the container (and exec) an event is about.
func eventID(e recordedEvent) string {
	id := containerOf(e)
	switch ev := e.Event.(type) {
	case interface{ GetExecID() string }:
		if ev.GetExecID() != "" {
			id += "/" + ev.GetExecID()
		}
	case interface{ GetID() string }:
		if ev.GetID() != "" && ev.GetID() != id {
			id += "/" + ev.GetID()
		}
	}
	return id
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// onContainerd is te on containerd d: its client, and the test image
// imported there.
func (te *testEnv) onContainerd(d *testkit.Containerd) *testEnv {
	te.t.Helper()
	img, err := d.Import(te.ctx, te.h.s.imageTar)
	if err != nil {
		te.t.Fatalf("import the test image: %v", err)
	}
	cp := *te
	cp.c, cp.image = d.Client, img
	return &cp
}

// socketGate stands in for a unix socket (containerd's ttrpc socket, which
// the shims dial to forward events) and passes every connection on to the
// real one, which it moved aside. While held it accepts and reads but
// passes nothing on, in either direction: a containerd that is alive but
// takes no events. Bytes read before a connection closed are still passed
// on at release, as the kernel would have left them in a stuck reader's
// socket buffer.
type socketGate struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	open  chan struct{} // closed while passing
	conns []net.Conn
}

func gateSocket(t *testing.T, path string) *socketGate {
	t.Helper()
	target := path + ".gated"
	if err := os.Rename(path, target); err != nil {
		t.Fatalf("move %s aside: %v", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := &socketGate{l: l, target: target, open: make(chan struct{})}
	close(g.open)
	go g.accept()
	t.Cleanup(func() {
		g.release()
		l.Close()
		g.mu.Lock()
		for _, c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		if err := os.Rename(target, path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return g
}

func (g *socketGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default:
	}
}

func (g *socketGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *socketGate) wait() {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	<-ch
}

func (g *socketGate) accept() {
	for {
		in, err := g.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("unix", g.target)
		if err != nil {
			in.Close()
			continue
		}
		g.mu.Lock()
		g.conns = append(g.conns, in, out)
		g.mu.Unlock()
		go g.pump(out, in)
		go g.pump(in, out)
	}
}

// pump copies src to dst, each chunk once the gate is open.
func (g *socketGate) pump(dst, src net.Conn) {
	defer dst.(*net.UnixConn).CloseWrite()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			g.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				src.Close()
			}
			return
		}
	}
}
