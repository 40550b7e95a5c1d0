// Package event owns the order in which the shim's task events reach
// containerd.
//
// Every task event (create, start, exec, OOM, exit, delete) goes through one
// Sequencer: a single goroutine forwards a single ordered queue. A failed
// forward is retried in place, with bounded backoff, so a later event can
// never overtake an earlier one. Publish returns a Ticket that is done once
// the event has been forwarded (or its retries ran out, which is logged);
// callers that must not answer before an event is out (Wait) block on it.
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

// Sequencer is the single owner of task event order.
type Sequencer struct {
	namespace string
	fwd       Forwarder
	backoff   Backoff
	now       func() time.Time

	mu      sync.Mutex
	queue   []item
	closed  bool
	failing chan struct{} // closed while the head event's forward is failing
	failed  bool

	wake    chan struct{} // cap 1: queue became non-empty or closed
	stopped chan struct{} // closed when the loop has returned
	abort   chan struct{} // closed when Shutdown gives up waiting
	// fwdCtx is every Forward's context, cancelled with abort so that a
	// forward waiting on a stuck containerd gives up too.
	fwdCtx    context.Context
	cancelFwd context.CancelFunc
}

// New starts a sequencer that stamps events with namespace and hands them to
// fwd in order. Stop it with Shutdown.
func New(namespace string, fwd Forwarder, backoff Backoff) *Sequencer {
	if backoff.Attempts < 1 {
		backoff.Attempts = 1
	}
	s := &Sequencer{
		namespace: namespace,
		fwd:       fwd,
		backoff:   backoff,
		now:       time.Now,
		wake:      make(chan struct{}, 1),
		stopped:   make(chan struct{}),
		abort:     make(chan struct{}),
		failing:   make(chan struct{}),
	}
	s.fwdCtx, s.cancelFwd = context.WithCancel(context.Background())
	go s.loop()
	return s
}

// Publish appends an event to the queue. It never blocks on the forward.
func (s *Sequencer) Publish(ctx context.Context, topic string, ev proto.Message) (Ticket, error) {
	any, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal %s event: %w", topic, err)
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
	s.queue = append(s.queue, it)
	s.mu.Unlock()
	s.signal()
	return it.done, nil
}

func (s *Sequencer) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next returns the head of the queue without removing it, or ok=false when
// the queue is empty; closed reports whether Shutdown has begun.
func (s *Sequencer) next() (it item, ok, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return item{}, false, s.closed
	}
	return s.queue[0], true, s.closed
}

func (s *Sequencer) pop() {
	s.mu.Lock()
	s.queue[0] = item{}
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	}
	s.mu.Unlock()
}

func (s *Sequencer) loop() {
	defer close(s.stopped)
	defer s.cancelFwd()
	defer s.release()
	for {
		it, ok, closed := s.next()
		if !ok {
			if closed {
				return
			}
			select {
			case <-s.wake:
			case <-s.abort:
				return
			}
			continue
		}
		s.deliver(it)
		s.pop()
		close(it.done)
	}
}

// release marks whatever is still queued as done, so no caller waits on an
// event that will never be forwarded. It only has work after an abort.
func (s *Sequencer) release() {
	s.mu.Lock()
	rest := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, it := range rest {
		log.L.WithField("topic", it.env.Topic).Error("event not forwarded before shutdown; it is lost")
		close(it.done)
	}
}

// deliver forwards one envelope, retrying in place. The event stays at the
// head of the queue for the whole time, which is what keeps order.
func (s *Sequencer) deliver(it item) {
	ctx := context.Background()
	delay := s.backoff.Initial
	var err error
	for attempt, tries := 1, 1; ; tries++ {
		if err = s.forward(it); err == nil {
			s.setFailing(false)
			if tries > 1 {
				log.G(ctx).WithFields(log.Fields{"topic": it.env.Topic, "tries": tries}).Info("event forwarded after retries")
			}
			return
		}
		s.setFailing(true)
		unreachable := errors.Is(err, ErrUnreachable)
		if !unreachable {
			if attempt >= s.backoff.Attempts {
				break
			}
			attempt++
		}
		// One line for the first failures, then one every 20 tries.
		if tries <= 3 || tries%20 == 0 {
			log.G(ctx).WithError(err).WithFields(log.Fields{"topic": it.env.Topic, "tries": tries, "unreachable": unreachable}).
				Warn("forward event failed; retrying in place")
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.abort:
			t.Stop()
			log.G(ctx).WithError(err).WithField("topic", it.env.Topic).Error("shutdown gave up on event; it is lost")
			return
		}
		if delay *= 2; delay > s.backoff.Max {
			delay = s.backoff.Max
		}
	}
	log.G(ctx).WithError(err).WithFields(log.Fields{"topic": it.env.Topic, "attempts": s.backoff.Attempts}).
		Error("forward event failed; retries exhausted, event dropped")
}

// forward makes one attempt. A forward containerd leaves unanswered for
// backoff.Stall marks forwarding as failing, for Flush, and goes on
// waiting: the request is in containerd's hands, and sending it again
// would deliver the event twice once containerd catches up.
func (s *Sequencer) forward(it item) error {
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
			s.setFailing(true)
			log.L.WithField("topic", it.env.Topic).Warn("containerd has not answered an event forward; still waiting")
		}
	})
	err := s.fwd.Forward(s.fwdCtx, it.env)
	mu.Lock()
	answered = true
	mu.Unlock()
	stall.Stop()
	return err
}

// setFailing records whether forwarding fails, for Flush.
func (s *Sequencer) setFailing(failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case failing && !s.failed:
		close(s.failing)
	case !failing && s.failed:
		s.failing = make(chan struct{})
	}
	s.failed = failing
}

// Shutdown refuses new events, waits until every queued event has been
// forwarded (or dropped after its retries) and stops the goroutine. If ctx
// ends first, the remaining events are logged as lost and ctx's error is
// returned. It is safe to call more than once.
func (s *Sequencer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	first := !s.closed
	s.closed = true
	s.mu.Unlock()
	if first {
		s.signal()
	}
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	lost := len(s.queue)
	s.mu.Unlock()
	select {
	case <-s.abort:
	default:
		close(s.abort)
		s.cancelFwd()
	}
	<-s.stopped
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
	if len(s.queue) == 0 {
		s.mu.Unlock()
		return nil
	}
	last, failing := s.queue[len(s.queue)-1].done, s.failing
	s.mu.Unlock()
	select {
	case <-last:
		return nil
	case <-failing:
		return ErrStalled
	case <-ctx.Done():
		return ctx.Err()
	}
}
