package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"
)

// markerTopic prefixes the events the recorder publishes itself. containerd's
// exchange delivers one subscriber's events in publish order, so once a marker
// arrives, every event published before it has arrived too: no sleeping.
const markerTopic = "/oomshim-test/marker"

// recordedEvent is one event of the test's namespace, decoded.
type recordedEvent struct {
	Topic string
	Event any       // e.g. *eventstypes.TaskExit
	At    time.Time // the envelope's timestamp, set by the publisher
}

func (e recordedEvent) String() string {
	switch ev := e.Event.(type) {
	case *eventstypes.TaskCreate:
		return fmt.Sprintf("%s(%s pid %d)", e.Topic, ev.ContainerID, ev.Pid)
	case *eventstypes.TaskStart:
		return fmt.Sprintf("%s(%s pid %d)", e.Topic, ev.ContainerID, ev.Pid)
	case *eventstypes.TaskExit:
		return fmt.Sprintf("%s(%s id %s pid %d status %d)", e.Topic, ev.ContainerID, ev.ID, ev.Pid, ev.ExitStatus)
	case *eventstypes.TaskDelete:
		return fmt.Sprintf("%s(%s id %s status %d)", e.Topic, ev.ContainerID, ev.ID, ev.ExitStatus)
	case *eventstypes.TaskExecAdded:
		return fmt.Sprintf("%s(%s exec %s)", e.Topic, ev.ContainerID, ev.ExecID)
	case *eventstypes.TaskExecStarted:
		return fmt.Sprintf("%s(%s exec %s pid %d)", e.Topic, ev.ContainerID, ev.ExecID, ev.Pid)
	case *eventstypes.TaskOOM:
		return fmt.Sprintf("%s(%s)", e.Topic, ev.ContainerID)
	}
	return e.Topic
}

// recorder records every event of one namespace from the moment it returns.
type recorder struct {
	te      *testEnv
	mu      sync.Mutex
	events  []recordedEvent
	changed chan struct{}
	err     error // why the subscription ended, if it did
	markers int
}

// recordEvents subscribes to the test's namespace and returns once the
// subscription is known to be live (a first marker came back).
func (te *testEnv) recordEvents() *recorder {
	te.t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), te.ns))
	ch, errs := te.c.Subscribe(ctx, fmt.Sprintf("namespace==%q", te.ns))
	r := &recorder{te: te, changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.loop(ch, errs)
	}()
	te.t.Cleanup(func() {
		cancel()
		<-done
	})
	if err := r.waitLive(te.ctx); err != nil {
		te.t.Fatalf("event subscription: %v", err)
	}
	return r
}

// waitLive returns once the subscription delivers events. Subscribe returns
// before containerd has registered the subscriber, and a marker published
// before that is never seen, so markers are re-published until one arrives.
func (r *recorder) waitLive(ctx context.Context) error {
	for {
		attempt, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := r.mark(attempt)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
	}
}

func (r *recorder) loop(ch <-chan *events.Envelope, errs <-chan error) {
	for {
		select {
		case env, ok := <-ch:
			if !ok {
				r.finish(fmt.Errorf("event channel closed"))
				return
			}
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				ev = fmt.Sprintf("undecodable %s: %v", env.Event.GetTypeUrl(), err)
			}
			r.add(recordedEvent{Topic: env.Topic, Event: ev, At: env.Timestamp})
		case err := <-errs:
			if err == nil {
				err = fmt.Errorf("subscription ended")
			}
			r.finish(err)
			return
		}
	}
}

func (r *recorder) add(e recordedEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) finish(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// waitFor waits until an event matching pred was recorded and returns the
// index of the first one.
func (r *recorder) waitFor(ctx context.Context, what string, pred func(recordedEvent) bool) (int, error) {
	for seen := 0; ; {
		r.mu.Lock()
		events, ch, err := r.events, r.changed, r.err
		r.mu.Unlock()
		for ; seen < len(events); seen++ {
			if pred(events[seen]) {
				return seen, nil
			}
		}
		if err != nil {
			return -1, fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return -1, fmt.Errorf("waiting for %s: %w; recorded: %s", what, ctx.Err(), r.summary(r.snapshot()))
		}
	}
}

// mark publishes a marker event and waits for it: every event published
// before the call has then been recorded. It returns those events (markers
// left out).
func (r *recorder) mark(ctx context.Context) ([]recordedEvent, error) {
	r.mu.Lock()
	r.markers++
	topic := fmt.Sprintf("%s/%d", markerTopic, r.markers)
	r.mu.Unlock()
	if err := r.te.c.EventService().Publish(ctx, topic, &emptypb.Empty{}); err != nil {
		return nil, fmt.Errorf("publish marker: %w", err)
	}
	idx, err := r.waitFor(ctx, "marker "+topic, func(e recordedEvent) bool { return e.Topic == topic })
	if err != nil {
		return nil, err
	}
	var out []recordedEvent
	for _, e := range r.snapshot()[:idx] {
		if !strings.HasPrefix(e.Topic, markerTopic+"/") {
			out = append(out, e)
		}
	}
	return out, nil
}

func (r *recorder) snapshot() []recordedEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedEvent(nil), r.events...)
}

// taskEvents keeps the /tasks/* events.
func taskEvents(events []recordedEvent) []recordedEvent {
	var out []recordedEvent
	for _, e := range events {
		if strings.HasPrefix(e.Topic, "/tasks/") {
			out = append(out, e)
		}
	}
	return out
}

func topics(events []recordedEvent) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Topic
	}
	return out
}

func (r *recorder) summary(events []recordedEvent) string {
	parts := make([]string, len(events))
	for i, e := range events {
		parts[i] = e.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
