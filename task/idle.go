package task

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// A server that holds no container and has had no request for the idle
// time exits: containerd will never talk to it (it could not use the start
// action's reply, or died before its first request), and nothing else
// would ever stop it. A server that holds a container never exits this
// way: its containers are containerd's to delete.
//
// The timer runs only after requests: every request's end arms it anew,
// and when it fires it checks, under the service's lock, that no
// container is held and no request is in flight or came since.

// idleState is guarded by Service.idleMu.
type idleState struct {
	after    time.Duration // 0: never exit when idle
	timer    *time.Timer
	inflight int
	last     time.Time // when the last request ended

	// release: the memory hand-back after a burst of requests.
	release      *time.Timer
	releaseAfter time.Duration
	releaseDue   func() bool // heapReleaseDue; tests choose
	freeMemory   func()      // freeHeap; tests count calls
}

// A burst of requests (exec probes, Stats polls) grows the heap to the
// garbage collector's goal, 4 MB at least, and the runtime keeps those
// pages; a pod shim then holds about 3 MB more than it needs until the
// next burst. So once no request came for releaseAfter, the server
// collects and returns the free pages to the kernel: one timer, armed (or
// pushed back) by the end of each request after which a release is due
// (heapReleaseDue), which fires once and never while idle. Measured
// (bench, 20 pod shims x 250 exec round trips): USS 7.1 MB after the
// probes without it, 4.1 MB with it.
//
// Only requests after which a release is due arm it: at kubelet's pace a
// Stats poll or an exec probe comes alone every 10 s, allocates about a
// tenth of releaseEvery, and a timer armed by each would wake the server
// a second after each for nothing nine times in ten (measured: 1.29 ms of
// server CPU per Stats call 1.2 s apart with that wakeup, 1.09 ms without
// any timer; bench/PROFILE.md, section 14).
const releaseAfter = time.Second

// releaseCheck runs when the release timer fires.
func (s *Service) releaseCheck() {
	s.idleMu.Lock()
	busy := s.idle.inflight > 0 || time.Since(s.idle.last) < s.idle.releaseAfter
	free := s.idle.freeMemory
	s.idleMu.Unlock()
	if !busy {
		free()
	}
}

// freeHeap collects and returns free heap pages to the kernel, but only
// once the runtime has collected at least once, and only once
// releaseEvery bytes were allocated since the last release.
//
// Before its first cycle the runtime has none of the collector's own
// structures (about 0.7 MB, measured), and a collection then costs more
// memory than the garbage of start-up it frees: a shim that only created
// and started its containers never got there (its heap stays below the
// collector's first goal).
//
// The allocation gate is for kubelet's pace: a Stats poll or an exec probe
// every 10 s ends a "burst" each time, and a release (a forced collection
// and the hand-back, then the pages faulted in again) cost about 1.6 ms of
// CPU for the 50-60 kB one such request allocates, more than the request
// itself (measured: 2.5 ms per Stats call 1.3 s apart, 0.9 ms 0.3 s apart;
// bench/PROFILE.md, section 11). With the gate a shim polled and probed
// every 10 s releases every few minutes and holds at most releaseEvery of
// garbage more than it would after a release.
func freeHeap() {
	heapRelease.Lock()
	defer heapRelease.Unlock()
	due, allocated := releaseState()
	if !due {
		return
	}
	debug.FreeOSMemory()
	heapRelease.at.Store(allocated)
}

// heapReleaseDue: freeHeap would release now. It takes no lock, so that a
// request's end does not wait for a release in progress (which then
// stores its own total, and the timer it was armed by re-checks).
func heapReleaseDue() bool {
	due, _ := releaseState()
	return due
}

// releaseState reads the runtime's completed collections and the bytes
// its heap has allocated in all: whether a release is due
// (shouldRelease), and that total.
func releaseState() (due bool, allocated uint64) {
	sample := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	allocated = metricUint(sample[1])
	return shouldRelease(metricUint(sample[0]), allocated, heapRelease.at.Load()), allocated
}

// releaseEvery: the bytes allocated since the last release that make the
// next one worth its CPU.
const releaseEvery = 512 << 10

// heapRelease: what the heap had allocated in all at the last release;
// the mutex makes one release at a time.
var heapRelease struct {
	sync.Mutex
	at atomic.Uint64
}

// shouldRelease: the runtime has collected, and releaseEvery bytes were
// allocated since lastAt (the total at the last release, 0 for none).
func shouldRelease(cycles, allocated, lastAt uint64) bool {
	return cycles > 0 && allocated >= lastAt+releaseEvery
}

func metricUint(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// StartIdleExit arms the idle exit; the server calls it once it serves.
func (s *Service) StartIdleExit() {
	if s.idle.after <= 0 {
		return
	}
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	s.idle.last = time.Now()
	s.idle.timer = time.AfterFunc(s.idle.after, s.idleCheck)
}

// Interceptor is the ttrpc server's unary interceptor: it tells the idle
// exit when requests begin and end.
func (s *Service) Interceptor(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (interface{}, error) {
	s.idleMu.Lock()
	s.idle.inflight++
	s.idleMu.Unlock()
	defer func() {
		s.idleMu.Lock()
		s.idle.inflight--
		s.idle.last = time.Now()
		if s.idle.timer != nil && s.idle.inflight == 0 {
			s.idle.timer.Reset(s.idle.after)
		}
		if s.idle.inflight == 0 && s.idle.releaseAfter > 0 && s.idle.releaseDue() {
			if s.idle.release == nil {
				s.idle.release = time.AfterFunc(s.idle.releaseAfter, s.releaseCheck)
			} else {
				s.idle.release.Reset(s.idle.releaseAfter)
			}
		}
		s.idleMu.Unlock()
	}()
	return m(ctx, u)
}

// idleCheck runs when the idle timer fires.
func (s *Service) idleCheck() {
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	if s.idle.inflight > 0 {
		return // its end re-arms the timer
	}
	if wait := s.idle.after - time.Since(s.idle.last); wait > 0 {
		s.idle.timer.Reset(wait)
		return
	}
	s.mu.Lock()
	if s.closing || len(s.containers) > 0 {
		s.mu.Unlock()
		return
	}
	s.closing = true // a Create from now on is Unavailable
	s.mu.Unlock()
	log.G(s.ctx).WithField("idle", s.idle.after).Info("no container and no request for the idle time: shim exiting")
	go s.shutdown()
}
