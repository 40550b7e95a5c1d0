// Package event owns the order in which the shim's task events reach
// containerd.
//
// Every task event (create, start, exec, OOM, exit, delete) goes through one
// Sequencer. The events of one container form a lane, forwarded one at a
// time in the order they were published; a failed forward is retried in
// place, with bounded backoff, so a later event of that container can never
// overtake an earlier one (its TaskOOM never comes after its TaskExit).
// Different containers' lanes are forwarded side by side, at most MaxLanes
// at once: when 50 containers of a pod are OOM-killed together, their
// events do not wait for containerd's answers one after another, and a
// container whose event containerd refuses does not hold back the others'.
// Publish returns a Ticket that is done once the event has been forwarded
// (or its retries ran out, which is logged); callers that must not answer
// before an event is out (Wait) block on it.
package event

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ErrClosed is returned by Publish after Shutdown has begun.
var ErrClosed = errors.New("event: sequencer is shut down")

// ErrStalled is returned by Flush when a forward is failing: containerd is
// not taking events right now. They stay queued and are retried.
var ErrStalled = errors.New("event: forwarding is failing; events stay queued")

// ErrUnreachable marks a Forward that failed because containerd could not
// be reached or did not answer (down, restarting, stuck), not because it
// refused the event. Such an event is retried, at the longest backoff
// delay, until it is delivered or the shim shuts down: a containerd that
// comes back gets every event, in order, however long it was away. Only
// refusals count against Backoff.Attempts.
var ErrUnreachable = errors.New("event: containerd unreachable")

// Forwarder delivers one envelope to containerd.
type Forwarder interface {
	Forward(ctx context.Context, env *types.Envelope) error
}

// Ticket is done when its event has left the queue: forwarded, or dropped
// after its retries ran out.
type Ticket <-chan struct{}

// Backoff bounds the in-place retries of one event.
type Backoff struct {
	Attempts int           // total forward attempts per event, at least 1
	Initial  time.Duration // delay before the second attempt
	Max      time.Duration // cap on any single delay
	// Stall is how long one forward may go unanswered before forwarding
	// counts as failing (Flush returns ErrStalled) while the forward goes
	// on waiting; 0 counts only failed forwards.
	Stall time.Duration
}

// DefaultBackoff makes 12 attempts per event that containerd refuses, 14.1
// s apart in all (20 ms doubling, at most 3 s); an unreachable containerd
// is waited for without limit (ErrUnreachable), tried every 3 s at most,
// as a restarting containerd loads its shims and its CRI state before it
// serves events again.
var DefaultBackoff = Backoff{Attempts: 12, Initial: 20 * time.Millisecond, Max: 3 * time.Second, Stall: 2 * time.Second}

type item struct {
	env  *types.Envelope
	done chan struct{}
}

// MaxLanes bounds how many containers' events are forwarded at once.
const MaxLanes = 8

// lane is the queue of one container's events. It exists while it holds
// events: either a forwarding goroutine serves it or it waits in
// Sequencer.waiting for one.
type lane struct {
	key     string
	queue   []item
	failing bool // its head event's forward is failing
}

// Sequencer is the single owner of task event order.
type Sequencer struct {
	namespace string
	fwd       Forwarder
	backoff   Backoff
	now       func() time.Time

	mu       sync.Mutex
	lanes    map[string]*lane // by container ID, the lanes holding events
	waiting  []*lane          // lanes holding events that no goroutine serves
	active   int              // forwarding goroutines, at most MaxLanes
	queued   int              // events queued or being forwarded
	closed   bool
	failing  chan struct{} // closed while some lane's forward is failing
	nfailing int           // lanes whose forward is failing
	halted   bool          // stopped is closed

	stopped chan struct{} // closed once Shutdown began and every event left
	abort   chan struct{} // closed when Shutdown gives up waiting
	// fwdCtx is every Forward's context, cancelled with abort so that a
	// forward waiting on a stuck containerd gives up too.
	fwdCtx    context.Context
	cancelFwd context.CancelFunc
}

// New starts a sequencer that stamps events with namespace and hands them to
// fwd, each container's in order. Stop it with Shutdown.
func New(namespace string, fwd Forwarder, backoff Backoff) *Sequencer {
	if backoff.Attempts < 1 {
		backoff.Attempts = 1
	}
	s := &Sequencer{
		namespace: namespace,
		fwd:       fwd,
		backoff:   backoff,
		now:       time.Now,
		lanes:     map[string]*lane{},
		stopped:   make(chan struct{}),
		abort:     make(chan struct{}),
		failing:   make(chan struct{}),
	}
	s.fwdCtx, s.cancelFwd = context.WithCancel(context.Background())
	return s
}

// containerEvent is every task event: each names its container.
type containerEvent interface{ GetContainerID() string }

// Publish appends an event to its container's lane. It never blocks on the
// forward.
func (s *Sequencer) Publish(ctx context.Context, topic string, ev proto.Message) (Ticket, error) {
	any, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal %s event: %w", topic, err)
	}
	var key string
	if ce, ok := ev.(containerEvent); ok {
		key = ce.GetContainerID()
	}
	it := item{
		env: &types.Envelope{
			Timestamp: timestamppb.New(s.now()),
			Namespace: s.namespace,
			Topic:     topic,
			Event:     any,
		},
		done: make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		log.G(ctx).WithField("topic", topic).Error("event published after shutdown; it is lost")
		return nil, ErrClosed
	}
	l := s.lanes[key]
	if l == nil {
		l = &lane{key: key}
		s.lanes[key] = l
		s.waiting = append(s.waiting, l)
	}
	l.queue = append(l.queue, it)
	s.queued++
	var serve *lane
	if s.active < MaxLanes && len(s.waiting) > 0 {
		serve = s.takeWaitingLocked()
		s.active++
	}
	s.mu.Unlock()
	if serve != nil {
		go s.run(serve)
	}
	return it.done, nil
}

func (s *Sequencer) takeWaitingLocked() *lane {
	l := s.waiting[0]
	s.waiting[0] = nil
	s.waiting = s.waiting[1:]
	if len(s.waiting) == 0 {
		s.waiting = nil // let the backing array go
	}
	return l
}

// run serves lanes until none waits: it forwards the head event of its
// lane, and when that lane is empty, or others wait (they take turns, one
// event each), it moves on to the longest-waiting lane. A goroutine exits
// when no lane waits, so an idle shim has none.
func (s *Sequencer) run(l *lane) {
	for {
		s.mu.Lock()
		it := l.queue[0]
		s.mu.Unlock()
		select {
		case <-s.abort:
			log.L.WithFields(log.Fields{"topic": it.env.Topic, "container": l.key}).Error("event not forwarded before shutdown; it is lost")
		default:
			s.deliver(l, it)
		}
		s.mu.Lock()
		l.queue[0] = item{}
		l.queue = l.queue[1:]
		s.queued--
		close(it.done)
		switch {
		case len(l.queue) == 0:
			delete(s.lanes, l.key)
			s.setFailingLocked(l, false)
			l = nil
		case len(s.waiting) > 0:
			s.waiting = append(s.waiting, l)
			l = nil
		}
		if l == nil {
			if len(s.waiting) == 0 {
				s.active--
				s.haltLocked()
				s.mu.Unlock()
				return
			}
			l = s.takeWaitingLocked()
		}
		s.mu.Unlock()
	}
}

// haltLocked closes stopped once Shutdown has begun and no event is left.
func (s *Sequencer) haltLocked() {
	if s.closed && s.queued == 0 && s.active == 0 && !s.halted {
		s.halted = true
		s.cancelFwd()
		close(s.stopped)
	}
}

// deliver forwards one envelope, retrying in place. The event stays at the
// head of its lane for the whole time, which is what keeps its container's
// order.
func (s *Sequencer) deliver(l *lane, it item) {
	ctx := context.Background()
	fields := log.Fields{"topic": it.env.Topic, "container": l.key}
	delay := s.backoff.Initial
	var err error
	for attempt, tries := 1, 1; ; tries++ {
		if err = s.forward(l, it); err == nil {
			s.setFailing(l, false)
			if tries > 1 {
				log.G(ctx).WithFields(fields).WithField("tries", tries).Info("event forwarded after retries")
			}
			return
		}
		s.setFailing(l, true)
		unreachable := errors.Is(err, ErrUnreachable)
		if !unreachable {
			if attempt >= s.backoff.Attempts {
				break
			}
			attempt++
		}
		// One line for the first failures, then one every 20 tries.
		if tries <= 3 || tries%20 == 0 {
			log.G(ctx).WithError(err).WithFields(fields).WithFields(log.Fields{"tries": tries, "unreachable": unreachable}).
				Warn("forward event failed; retrying in place")
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.abort:
			t.Stop()
			log.G(ctx).WithError(err).WithFields(fields).Error("shutdown gave up on event; it is lost")
			return
		}
		if delay *= 2; delay > s.backoff.Max {
			delay = s.backoff.Max
		}
	}
	log.G(ctx).WithError(err).WithFields(fields).WithField("attempts", s.backoff.Attempts).
		Error("forward event failed; retries exhausted, event dropped")
}

// forward makes one attempt. A forward containerd leaves unanswered for
// backoff.Stall marks forwarding as failing, for Flush, and goes on
// waiting: the request is in containerd's hands, and sending it again
// would deliver the event twice once containerd catches up.
func (s *Sequencer) forward(l *lane, it item) error {
	if s.backoff.Stall <= 0 {
		return s.fwd.Forward(s.fwdCtx, it.env)
	}
	var (
		mu       sync.Mutex
		answered bool
	)
	stall := time.AfterFunc(s.backoff.Stall, func() {
		mu.Lock()
		defer mu.Unlock()
		if !answered {
			s.setFailing(l, true)
			log.L.WithFields(log.Fields{"topic": it.env.Topic, "container": l.key}).Warn("containerd has not answered an event forward; still waiting")
		}
	})
	err := s.fwd.Forward(s.fwdCtx, it.env)
	mu.Lock()
	answered = true
	mu.Unlock()
	stall.Stop()
	return err
}

// setFailing records whether l's forward fails, for Flush.
func (s *Sequencer) setFailing(l *lane, failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setFailingLocked(l, failing)
}

func (s *Sequencer) setFailingLocked(l *lane, failing bool) {
	if l.failing == failing {
		return
	}
	l.failing = failing
	if failing {
		if s.nfailing++; s.nfailing == 1 {
			close(s.failing)
		}
		return
	}
	if s.nfailing--; s.nfailing == 0 {
		s.failing = make(chan struct{})
	}
}

// Shutdown refuses new events, waits until every queued event has been
// forwarded (or dropped after its retries) and every forwarding goroutine
// has returned. If ctx ends first, the remaining events are logged as lost
// and ctx's error is returned. It is safe to call more than once.
func (s *Sequencer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.haltLocked()
	s.mu.Unlock()
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	lost := s.queued
	s.mu.Unlock()
	select {
	case <-s.abort:
	default:
		close(s.abort)
		s.cancelFwd()
	}
	<-s.stopped
	if lost == 0 {
		return nil
	}
	log.G(ctx).WithField("events", lost).Error("shutdown timed out before the event queue drained")
	return fmt.Errorf("event: %d events not forwarded: %w", lost, ctx.Err())
}

// Flush waits until every event queued before the call has left the queue,
// or ctx ends. While a forward is failing it returns ErrStalled at once:
// waiting would only wait for containerd, which may itself be waiting for
// the caller (containerd loads shims, and asks them to shut down, before it
// serves events).
func (s *Sequencer) Flush(ctx context.Context) error {
	s.mu.Lock()
	if s.queued == 0 {
		s.mu.Unlock()
		return nil
	}
	// Each lane's last event leaves after all the lane's others.
	lasts := make([]chan struct{}, 0, len(s.lanes))
	for _, l := range s.lanes {
		lasts = append(lasts, l.queue[len(l.queue)-1].done)
	}
	failing := s.failing
	s.mu.Unlock()
	for _, last := range lasts {
		select {
		case <-last:
		case <-failing:
			return ErrStalled
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
