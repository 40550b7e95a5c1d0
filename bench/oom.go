package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	markerTopic = "/oomshim-bench/marker"
	oomLimit    = 20 << 20 // memory (and memory+swap) limit of the OOM container
	// oomGrace is how long after the exit status the OOM run waits for
	// TaskStart, TaskOOM and TaskExit to arrive before it counts them missing.
	oomGrace = 3 * time.Second
)

// taskTimes are the envelope timestamps (set by the shim that published the
// event) of one container's init events.
type taskTimes struct {
	start, oom, exit time.Time
	marker           bool
	// When the TaskOOM and the init's TaskExit reached this subscriber,
	// and their places in the order events arrived.
	oomArrived, exitArrived time.Time
	oomSeq, exitSeq         int
}

// eventLog records the envelope timestamps of the run's task events.
type eventLog struct {
	mu      sync.Mutex
	byID    map[string]*taskTimes
	markers int
	seq     int // events received
	changed chan struct{}
	err     error
}

// subscribe starts recording and returns once the subscription is live: a
// marker it published came back (Subscribe returns before containerd has
// registered the subscriber).
func (e *env) subscribe(ctx context.Context) (*eventLog, error) {
	l := &eventLog{byID: map[string]*taskTimes{}, changed: make(chan struct{})}
	ch, errs := e.Client.Subscribe(ctx, fmt.Sprintf("namespace==%q", e.ns))
	go l.loop(ch, errs)
	for i := 0; ; i++ {
		attempt, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := e.Client.EventService().Publish(attempt, markerTopic, &emptypb.Empty{})
		if err == nil {
			err = l.wait(attempt, func() bool { return l.markers > 0 })
		}
		cancel()
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil || i > 50 {
			return nil, fmt.Errorf("event subscription: %w", err)
		}
	}
}

func (l *eventLog) loop(ch <-chan *events.Envelope, errs <-chan error) {
	for {
		select {
		case env, ok := <-ch:
			if !ok {
				l.finish(errors.New("event channel closed"))
				return
			}
			l.add(env)
		case err := <-errs:
			if err == nil {
				err = errors.New("subscription ended")
			}
			l.finish(err)
			return
		}
	}
}

func (l *eventLog) add(env *events.Envelope) {
	arrived := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.notify()
	l.seq++
	if env.Topic == markerTopic {
		l.markers++
		return
	}
	ev, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return
	}
	at := func(id string) *taskTimes {
		t := l.byID[id]
		if t == nil {
			t = &taskTimes{}
			l.byID[id] = t
		}
		return t
	}
	switch ev := ev.(type) {
	case *eventstypes.TaskStart:
		at(ev.ContainerID).start = env.Timestamp
	case *eventstypes.TaskOOM:
		if t := at(ev.ContainerID); t.oom.IsZero() {
			t.oom, t.oomArrived, t.oomSeq = env.Timestamp, arrived, l.seq
		}
	case *eventstypes.TaskExit:
		if ev.ID == ev.ContainerID || ev.ID == "" { // the init, not an exec
			t := at(ev.ContainerID)
			t.exit, t.exitArrived, t.exitSeq = env.Timestamp, arrived, l.seq
		}
	}
}

func (l *eventLog) finish(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
	l.notify()
}

func (l *eventLog) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// wait blocks until cond (called with l.mu held) holds, or ctx ends.
func (l *eventLog) wait(ctx context.Context, cond func() bool) error {
	for {
		l.mu.Lock()
		ok, ch, err := cond(), l.changed, l.err
		l.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *eventLog) times(id string) taskTimes {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t := l.byID[id]; t != nil {
		return *t
	}
	return taskTimes{}
}

// ooms runs a container that exceeds its 20 MiB limit at once, per shim,
// alternating, and takes start->TaskOOM and TaskOOM->TaskExit from the
// envelope timestamps.
func (e *env) ooms(ctx context.Context, r *results) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l, err := e.subscribe(sctx)
	if err != nil {
		return err
	}
	for i := 0; i < e.cfg.ooms; i++ {
		for _, s := range order(i) {
			if err := e.oomSample(ctx, l, r, s, fmt.Sprintf("oom-%s-%d", shortName[s], i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// oomSample runs one OOM container of shim s and records its figures. The
// task is deleted only after its events arrived (or oomGrace passed), so a
// shim that drops queued events at shutdown still yields a sample.
func (e *env) oomSample(ctx context.Context, l *eventLog, r *results, s int, id string) error {
	c, status, called, returned, err := e.oomRun(ctx, id, e.shims()[s])
	if c != nil {
		cs := []client.Container{c}
		defer e.destroyLater(&cs)
	}
	if err != nil {
		return err
	}
	r.oomRuns[s]++
	if status != 137 {
		r.oomBadStatus[s]++
	}
	wctx, cancel := context.WithTimeout(ctx, oomGrace)
	_ = l.wait(wctx, func() bool {
		t := l.byID[id]
		return t != nil && !t.start.IsZero() && !t.oom.IsZero() && !t.exit.IsZero()
	})
	cancel()
	t := l.times(id)
	if t.oom.IsZero() {
		r.oomMissing[s]++
	}
	if t.start.IsZero() || t.exit.IsZero() {
		r.oomLostEvents[s]++
	}
	if t.oom.IsZero() || t.start.IsZero() || t.exit.IsZero() {
		return nil
	}
	r.startToOOM[s] = append(r.startToOOM[s], ms(t.oom.Sub(t.start)))
	r.oomToExit[s] = append(r.oomToExit[s], ms(t.exit.Sub(t.oom)))
	r.callToOOM[s] = append(r.callToOOM[s], ms(t.oom.Sub(called)))
	r.startStampLag[s] = append(r.startStampLag[s], ms(t.start.Sub(returned)))
	return nil
}

// oomRun runs one OOM container until its exit status is known and returns
// it (and the container, to be destroyed by the caller), with the times
// the Start call was made and returned.
func (e *env) oomRun(ctx context.Context, id string, s shim) (c client.Container, status uint32, called, returned time.Time, err error) {
	c, err = e.newContainer(ctx, id, s,
		oci.WithProcessArgs("dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"),
		oci.WithMemoryLimit(oomLimit), oci.WithMemorySwap(oomLimit))
	if err != nil {
		return nil, 0, called, returned, err
	}
	t, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		return c, 0, called, returned, fmt.Errorf("create task %s: %w", id, err)
	}
	exitCh, err := t.Wait(ctx)
	if err != nil {
		return c, 0, called, returned, fmt.Errorf("wait %s: %w", id, err)
	}
	called = time.Now()
	if err := t.Start(ctx); err != nil {
		return c, 0, called, returned, fmt.Errorf("start %s: %w", id, err)
	}
	returned = time.Now()
	select {
	case st := <-exitCh:
		if err := st.Error(); err != nil {
			return c, 0, called, returned, fmt.Errorf("exit status of %s: %w", id, err)
		}
		return c, st.ExitCode(), called, returned, nil
	case <-time.After(time.Minute):
		return c, 0, called, returned, fmt.Errorf("%s (%s) did not exit within a minute", id, s.name)
	case <-ctx.Done():
		return c, 0, called, returned, ctx.Err()
	}
}
