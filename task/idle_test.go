package task

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// idleHarness is a service whose idle timer never fires by itself (an
// hour): the tests call idleCheck, as the timer would, after making the
// last request old.
func idleHarness(t *testing.T) *harness {
	h := newHarness(t, nil)
	h.svc.idle.after = time.Hour
	h.svc.StartIdleExit()
	t.Cleanup(func() { h.svc.idle.timer.Stop() })
	return h
}

func (h *harness) ageLastRequest() {
	h.svc.idleMu.Lock()
	h.svc.idle.last = time.Now().Add(-2 * h.svc.idle.after)
	h.svc.idleMu.Unlock()
}

func (h *harness) shutDown() bool {
	select {
	case <-h.stopped:
		return true
	case <-time.After(5 * time.Second): // only when it does not: a hang guard
		return false
	}
}

func (h *harness) stillUp() bool {
	select {
	case <-h.stopped:
		return false
	default:
		return true
	}
}

// A server that holds no container and had no request for the idle time
// exits; a Create after that is Unavailable.
func TestIdleExitWithoutContainers(t *testing.T) {
	h := idleHarness(t)
	h.ageLastRequest()
	h.svc.idleCheck()
	if !h.shutDown() {
		t.Fatal("an idle server without containers did not shut down")
	}
	_, err := h.svc.Create(context.Background(), &taskapi.CreateTaskRequest{ID: "late", Bundle: h.bundle()})
	if !errdefs.IsUnavailable(errgrpc.ToNative(err)) {
		t.Fatalf("Create after the idle exit: %v, want Unavailable", err)
	}
}

// One that holds a container never exits when idle.
func TestNoIdleExitWithContainers(t *testing.T) {
	h := idleHarness(t)
	h.create("c1")
	h.ageLastRequest()
	h.svc.idleCheck()
	if !h.stillUp() {
		t.Fatal("a server holding a container exited when idle")
	}
}

// A recent request, or one in flight, keeps the server up.
func TestNoIdleExitWhileRequested(t *testing.T) {
	h := idleHarness(t)
	h.svc.idleCheck() // the last request: just now
	if !h.stillUp() {
		t.Fatal("exited although the last request was just now")
	}
	h.ageLastRequest()
	interceptedRequest(t, h.svc, func() {
		h.svc.idleCheck() // the timer firing while this request runs
	})
	if !h.stillUp() {
		t.Fatal("exited while a request was in flight")
	}
	h.svc.idleCheck() // the request just ended
	if !h.stillUp() {
		t.Fatal("exited right after a request")
	}
}

// interceptedRequest passes one request through svc's interceptor; during
// runs as its handler.
func interceptedRequest(t *testing.T, svc *Service, during func()) {
	t.Helper()
	if _, err := svc.Interceptor(context.Background(), func(interface{}) error { return nil },
		&ttrpc.UnaryServerInfo{FullMethod: "/x/Request"}, func(context.Context, func(interface{}) error) (interface{}, error) {
			during()
			return nil, nil
		}); err != nil {
		t.Fatal(err)
	}
}

// expectOneRelease: one release comes within 5 s, and no second one
// within 300 ms after it.
func expectOneRelease(t *testing.T, released <-chan struct{}) {
	t.Helper()
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("no release after the last request")
	}
	select {
	case <-released:
		t.Fatal("released twice after one burst")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestMemoryReleaseAfterBurst: the end of a request arms one memory
// release; it does not happen while a request is in flight, happens once
// after the last one ends, and not again while idle.
func TestMemoryReleaseAfterBurst(t *testing.T) {
	h := newHarness(t, nil)
	released := make(chan struct{}, 10)
	h.svc.idleMu.Lock()
	h.svc.idle.releaseAfter = 50 * time.Millisecond
	h.svc.idle.releaseDue = func() bool { return true }
	h.svc.idle.freeMemory = func() { released <- struct{}{} }
	h.svc.idleMu.Unlock()
	request := func(during func()) { t.Helper(); interceptedRequest(t, h.svc, during) }
	request(func() {})
	// A second request in flight well past the first one's release time:
	// the timer fires meanwhile and must find the server busy.
	request(func() {
		select {
		case <-released:
			t.Error("released while a request was in flight")
		case <-time.After(300 * time.Millisecond):
		}
	})
	expectOneRelease(t, released)
	h.svc.idleMu.Lock()
	h.svc.idle.release.Stop()
	h.svc.idleMu.Unlock()
}

// TestReleaseTimerOnlyWhenDue: a request after which no release is due
// arms no timer (no wakeup a second after each of kubelet's polls); the
// first one after which a release is due arms it, and it fires once.
func TestReleaseTimerOnlyWhenDue(t *testing.T) {
	h := newHarness(t, nil)
	var due atomic.Bool
	released := make(chan struct{}, 10)
	h.svc.idleMu.Lock()
	h.svc.idle.releaseAfter = 50 * time.Millisecond
	h.svc.idle.releaseDue = due.Load
	h.svc.idle.freeMemory = func() { released <- struct{}{} }
	h.svc.idleMu.Unlock()
	request := func() { t.Helper(); interceptedRequest(t, h.svc, func() {}) }
	armed := func() bool {
		h.svc.idleMu.Lock()
		defer h.svc.idleMu.Unlock()
		return h.svc.idle.release != nil
	}
	for i := 0; i < 3; i++ {
		request()
	}
	if armed() {
		t.Fatal("release timer armed after requests with no release due")
	}
	select {
	case <-released:
		t.Fatal("released with no release due")
	case <-time.After(200 * time.Millisecond):
	}
	due.Store(true)
	request()
	if !armed() {
		t.Fatal("no release timer after a request with a release due")
	}
	expectOneRelease(t, released)
}

// TestHeapReleaseDue: the check a request's end makes agrees with
// freeHeap's own: due after enough allocation, not right after a release.
func TestHeapReleaseDue(t *testing.T) {
	runtime.GC()
	for i := 0; i < 64; i++ {
		sink = append(sink, make([]byte, 64<<10)) // 4 MB
	}
	sink = nil
	if !heapReleaseDue() {
		t.Fatal("no release due after 4 MB allocated")
	}
	freeHeap()
	if heapReleaseDue() {
		t.Fatal("a release due right after one, with nothing allocated since")
	}
}

// TestShouldRelease: no release before the runtime's first collection,
// and none until releaseEvery bytes were allocated since the last one.
func TestShouldRelease(t *testing.T) {
	for _, tc := range []struct {
		cycles, allocated, lastAt uint64
		want                      bool
	}{
		{0, 10 << 20, 0, false},
		{1, 10 << 20, 0, true},
		{1, releaseEvery - 1, 0, false},
		{3, 5<<20 + releaseEvery - 1, 5 << 20, false},
		{3, 5<<20 + releaseEvery, 5 << 20, true},
	} {
		if got := shouldRelease(tc.cycles, tc.allocated, tc.lastAt); got != tc.want {
			t.Errorf("shouldRelease(%d, %d, %d) = %v, want %v", tc.cycles, tc.allocated, tc.lastAt, got, tc.want)
		}
	}
}

// sink keeps the test's allocations from being optimised away.
var sink [][]byte

// TestFreeHeapGated: freeHeap forces a collection (FreeOSMemory) after
// enough allocation, and not again right after with nothing allocated.
func TestFreeHeapGated(t *testing.T) {
	var st debug.GCStats
	numGC := func() int64 {
		debug.ReadGCStats(&st)
		return st.NumGC
	}
	runtime.GC()
	for i := 0; i < 64; i++ {
		sink = append(sink, make([]byte, 64<<10)) // 4 MB
	}
	sink = nil
	before := numGC()
	freeHeap()
	if numGC() == before {
		t.Fatal("no collection after 4 MB allocated")
	}
	before = numGC()
	freeHeap()
	if n := numGC(); n != before {
		t.Fatalf("collected again (%d cycles) with nothing allocated since the release", n-before)
	}
}
