package event

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
)

// recorder is a Forwarder that records topics and fails on demand: fail
// returns how many more times the next forward of a topic should fail.
type recorder struct {
	mu       sync.Mutex
	topics   []string
	attempts map[string]int
	failures map[string]int // refusals to answer before forwarding
	// unreachable: failures as of a containerd that is not there
	unreachable map[string]int
	gate        chan struct{} // if set, each Forward waits for a receive
}

func newRecorder() *recorder {
	return &recorder{attempts: map[string]int{}, failures: map[string]int{}, unreachable: map[string]int{}}
}

func (r *recorder) Forward(ctx context.Context, env *types.Envelope) error {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts[env.Topic]++
	if r.failures[env.Topic] > 0 {
		r.failures[env.Topic]--
		return errors.New("containerd refused the event")
	}
	if r.unreachable[env.Topic] > 0 {
		r.unreachable[env.Topic]--
		return fmt.Errorf("dial containerd: connection refused: %w", ErrUnreachable)
	}
	r.topics = append(r.topics, env.Topic)
	return nil
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.topics...)
}

var fast = Backoff{Attempts: 5, Initial: time.Millisecond, Max: 2 * time.Millisecond}

func publish(t *testing.T, s *Sequencer, topic string) Ticket {
	t.Helper()
	tk, err := s.Publish(context.Background(), topic, &eventstypes.TaskExit{ContainerID: "c"})
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return tk
}

func shutdown(t *testing.T, s *Sequencer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOrderKeptAcrossRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures map[string]int
		want     []string
	}{
		{"no failures", nil, []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"}},
		{"oom fails twice", map[string]int{"/tasks/oom": 2}, []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"}},
		{"exit fails four times", map[string]int{"/tasks/exit": 4}, []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"}},
		{"oom exhausts its retries", map[string]int{"/tasks/oom": 5}, []string{"/tasks/exit", "/tasks/delete"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRecorder()
			for k, v := range tc.failures {
				r.failures[k] = v
			}
			s := New("ns", r, fast)
			var tickets []Ticket
			for _, topic := range []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"} {
				tickets = append(tickets, publish(t, s, topic))
			}
			for _, tk := range tickets {
				<-tk
			}
			if got := r.got(); !equal(got, tc.want) {
				t.Fatalf("forwarded %v, want %v", got, tc.want)
			}
			shutdown(t, s)
		})
	}
}

func TestTicketDoneOnlyAfterForward(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	s := New("ns", r, fast)
	tk := publish(t, s, "/tasks/exit")
	select {
	case <-tk:
		t.Fatal("ticket done before the forward ran")
	default:
	}
	r.gate <- struct{}{}
	<-tk
	if got := r.got(); !equal(got, []string{"/tasks/exit"}) {
		t.Fatalf("forwarded %v", got)
	}
	close(r.gate)
	shutdown(t, s)
}

func TestEnvelopeCarriesNamespace(t *testing.T) {
	var got *types.Envelope
	done := make(chan struct{})
	s := New("k8s.io", forwardFunc(func(_ context.Context, env *types.Envelope) error {
		got = env
		close(done)
		return nil
	}), fast)
	publish(t, s, "/tasks/start")
	<-done
	shutdown(t, s)
	if got.Namespace != "k8s.io" || got.Topic != "/tasks/start" || got.Event == nil || got.Timestamp == nil {
		t.Fatalf("bad envelope %+v", got)
	}
}

type forwardFunc func(context.Context, *types.Envelope) error

func (f forwardFunc) Forward(ctx context.Context, env *types.Envelope) error { return f(ctx, env) }

func TestShutdownDrainsQueue(t *testing.T) {
	r := newRecorder()
	r.failures["/tasks/exit"] = 2
	s := New("ns", r, fast)
	for _, topic := range []string{"/tasks/exit", "/tasks/delete"} {
		publish(t, s, topic)
	}
	shutdown(t, s)
	if got := r.got(); !equal(got, []string{"/tasks/exit", "/tasks/delete"}) {
		t.Fatalf("forwarded %v before shutdown returned", got)
	}
	if _, err := s.Publish(context.Background(), "/tasks/late", &eventstypes.TaskExit{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after shutdown: %v, want ErrClosed", err)
	}
	shutdown(t, s) // idempotent
}

func TestShutdownTimeoutReleasesWaiters(t *testing.T) {
	block := make(chan struct{})
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		<-block
		return errors.New("down")
	}), Backoff{Attempts: 3, Initial: time.Hour, Max: time.Hour})
	first := publish(t, s, "/tasks/exit")
	second := publish(t, s, "/tasks/delete")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	close(block) // the in-flight attempt fails, then waits an hour to retry
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("shutdown with a cancelled context and a stuck queue returned nil")
	}
	<-first
	<-second
}

func TestFlush(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	s := New("ns", r, fast)
	publish(t, s, "/tasks/exit")
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush(context.Background()) }()
	select {
	case <-flushed:
		t.Fatal("flush returned while an event was queued")
	default:
	}
	r.gate <- struct{}{}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	close(r.gate)
	shutdown(t, s)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("flush of an empty queue: %v", err)
	}
}

// While forwards fail (containerd not serving events), Flush returns
// ErrStalled instead of waiting; the events stay queued, in order, and
// leave once forwarding works again.
func TestFlushStalled(t *testing.T) {
	r := newRecorder()
	r.failures["/tasks/exit"] = 3
	r.gate = make(chan struct{})
	s := New("ns", r, fast)
	publish(t, s, "/tasks/exit")
	publish(t, s, "/tasks/delete")
	r.gate <- struct{}{} // the first attempt fails
	if err := s.Flush(context.Background()); !errors.Is(err, ErrStalled) {
		t.Fatalf("flush while forwarding fails: %v, want ErrStalled", err)
	}
	close(r.gate) // retries go ahead: two more failures, then success
	if err := s.Flush(context.Background()); err != nil && !errors.Is(err, ErrStalled) {
		t.Fatal(err)
	}
	shutdown(t, s)
	if got := r.got(); !equal(got, []string{"/tasks/exit", "/tasks/delete"}) {
		t.Fatalf("forwarded %v", got)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("flush after recovery: %v", err)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		s := New("ns", newRecorder(), fast)
		publish(t, s, "/tasks/exit")
		shutdown(t, s)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// An unreachable containerd is waited for beyond the attempts a refusal
// gets: the event and those behind it arrive, in order, once it answers.
func TestUnreachableRetriedWithoutLimit(t *testing.T) {
	r := newRecorder()
	r.unreachable["/tasks/oom"] = 10 * fast.Attempts
	s := New("ns", r, fast)
	publish(t, s, "/tasks/oom")
	last := publish(t, s, "/tasks/exit")
	<-last
	if got := r.got(); !equal(got, []string{"/tasks/oom", "/tasks/exit"}) {
		t.Fatalf("forwarded %v", got)
	}
	if n := r.attempts["/tasks/oom"]; n != 10*fast.Attempts+1 {
		t.Fatalf("%d attempts for the event", n)
	}
	shutdown(t, s)
}

// A forward containerd leaves unanswered (alive but stuck) is waited for,
// not sent again: each event reaches containerd once. Meanwhile Flush
// reports the stall, and Shutdown's abort ends the wait.
func TestStalledForwardNotResent(t *testing.T) {
	var (
		mu    sync.Mutex
		calls = map[string]int{}
	)
	answer := make(chan struct{})
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		mu.Lock()
		calls[env.Topic]++
		mu.Unlock()
		select {
		case <-answer:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}), Backoff{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, Stall: 20 * time.Millisecond})
	first := publish(t, s, "/tasks/exit")
	publish(t, s, "/tasks/delete")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		err := s.Flush(ctx)
		if errors.Is(err, ErrStalled) {
			break
		}
		if err != nil {
			t.Fatalf("flush while containerd does not answer: %v, want ErrStalled", err)
		}
	}
	close(answer)
	<-first
	shutdown(t, s)
	mu.Lock()
	defer mu.Unlock()
	if calls["/tasks/exit"] != 1 || calls["/tasks/delete"] != 1 {
		t.Fatalf("forwards per event: %v, want one each", calls)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("flush once containerd answered: %v", err)
	}
}

// Shutdown that gives up cancels a forward still waiting for containerd.
func TestShutdownAbortsWaitingForward(t *testing.T) {
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		<-ctx.Done()
		return fmt.Errorf("%w: %w", ctx.Err(), ErrUnreachable)
	}), Backoff{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, Stall: time.Millisecond})
	tk := publish(t, s, "/tasks/exit")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("shutdown with containerd never answering returned nil")
	}
	<-tk
}
