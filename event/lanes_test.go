package event

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// containerOf reads the container ID out of an envelope's event.
func containerOf(env *types.Envelope) string {
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return v.(containerEvent).GetContainerID()
}

func publishFor(t *testing.T, s *Sequencer, id, topic string) Ticket {
	t.Helper()
	var ev proto.Message
	switch topic {
	case "/tasks/oom":
		ev = &eventstypes.TaskOOM{ContainerID: id}
	case "/tasks/exit":
		ev = &eventstypes.TaskExit{ContainerID: id, ID: id, Pid: 1, ExitStatus: 137}
	default:
		ev = &eventstypes.TaskDelete{ContainerID: id, ID: id}
	}
	tk, err := s.Publish(context.Background(), topic, ev)
	if err != nil {
		t.Fatalf("publish %s of %s: %v", topic, id, err)
	}
	return tk
}

// Each container's events arrive in the order they were published, however
// the forwards of many containers interleave and fail.
func TestLanesKeepEachContainersOrder(t *testing.T) {
	var (
		mu   sync.Mutex
		got  = map[string][]string{}
		rnd  = rand.New(rand.NewSource(1))
		refs = map[string]int{} // refusals per container and topic
	)
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		id := containerOf(env)
		mu.Lock()
		fail := rnd.Intn(3) == 0 && refs[id+env.Topic] < 2
		if fail {
			refs[id+env.Topic]++
		}
		pause := time.Duration(rnd.Int63n(int64(200 * time.Microsecond)))
		mu.Unlock()
		time.Sleep(pause)
		if fail {
			return errors.New("containerd refused the event")
		}
		mu.Lock()
		got[id] = append(got[id], env.Topic)
		mu.Unlock()
		return nil
	}), fast)
	topics := []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"}
	var tickets []Ticket
	for _, topic := range topics {
		for c := 0; c < 3*MaxLanes; c++ {
			tickets = append(tickets, publishFor(t, s, fmt.Sprintf("c%d", c), topic))
		}
	}
	for _, tk := range tickets {
		<-tk
	}
	shutdown(t, s)
	for c := 0; c < 3*MaxLanes; c++ {
		id := fmt.Sprintf("c%d", c)
		if !equal(got[id], topics) {
			t.Errorf("%s: forwarded %v, want %v", id, got[id], topics)
		}
	}
}

// While containerd holds one container's forward, other containers' events
// go ahead, at most MaxLanes forwards at once; the held container's later
// events wait behind it.
func TestLanesSideBySide(t *testing.T) {
	var (
		inFlight, most atomic.Int32
		release        = make(chan struct{})
		mu             sync.Mutex
		order          []string
	)
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		id := containerOf(env)
		if id == "held" {
			<-release
		}
		mu.Lock()
		order = append(order, id+env.Topic)
		mu.Unlock()
		return nil
	}), fast)
	held := publishFor(t, s, "held", "/tasks/oom")
	heldExit := publishFor(t, s, "held", "/tasks/exit")
	var others []Ticket
	for c := 0; c < 4*MaxLanes; c++ {
		others = append(others, publishFor(t, s, fmt.Sprintf("c%d", c), "/tasks/exit"))
	}
	for _, tk := range others {
		select {
		case <-tk:
		case <-time.After(10 * time.Second):
			t.Fatal("another container's event waited for the held one")
		}
	}
	select {
	case <-heldExit:
		t.Fatal("the held container's exit overtook its OOM")
	default:
	}
	close(release)
	<-held
	<-heldExit
	shutdown(t, s)
	if m := most.Load(); m > MaxLanes || m < 2 {
		t.Fatalf("at most %d forwards at once, want 2..%d", m, MaxLanes)
	}
	if n := len(order); order[n-2] != "held/tasks/oom" || order[n-1] != "held/tasks/exit" {
		t.Fatalf("the held container's events came %v", order[n-2:])
	}
}

// A container whose event containerd refuses (retried with backoff) holds
// back neither Flush's answer for the others nor their events; Flush
// reports the stall.
func TestRefusedEventHoldsBackOnlyItsContainer(t *testing.T) {
	r := newRecorder()
	r.failures["/tasks/oom"] = 3
	s := New("ns", r, Backoff{Attempts: 5, Initial: 200 * time.Millisecond, Max: time.Second})
	oom := publishFor(t, s, "refused", "/tasks/oom")
	exit := publishFor(t, s, "refused", "/tasks/exit")
	other := publishFor(t, s, "other", "/tasks/delete")
	select {
	case <-other:
	case <-oom:
		t.Fatal("the refused event went through before the other container's")
	}
	if err := s.Flush(context.Background()); !errors.Is(err, ErrStalled) {
		t.Fatalf("flush while an event is refused: %v, want ErrStalled", err)
	}
	<-oom
	<-exit
	if got := r.got(); !equal(got, []string{"/tasks/delete", "/tasks/oom", "/tasks/exit"}) {
		t.Fatalf("forwarded %v", got)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("flush once every event is out: %v", err)
	}
	shutdown(t, s)
}

// Flush waits for every container's events queued before it.
func TestFlushWaitsForEveryLane(t *testing.T) {
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	s := New("ns", forwardFunc(func(ctx context.Context, env *types.Envelope) error {
		<-gates[containerOf(env)]
		return nil
	}), fast)
	publishFor(t, s, "a", "/tasks/exit")
	publishFor(t, s, "b", "/tasks/exit")
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush(context.Background()) }()
	close(gates["a"])
	select {
	case err := <-flushed:
		t.Fatalf("flush returned (%v) with b's event queued", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gates["b"])
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	shutdown(t, s)
}

// eventsServer is containerd's ttrpc events service, for the forwarder:
// it refuses the topics in refuse and counts connections.
type eventsServer struct {
	refuse string
	mu     sync.Mutex
	got    []string
}

func (e *eventsServer) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if r.Envelope.Topic == e.refuse {
		return nil, errgrpc.ToGRPC(fmt.Errorf("topic %s: %w", r.Envelope.Topic, errdefs.ErrInvalidArgument))
	}
	e.mu.Lock()
	e.got = append(e.got, r.Envelope.Topic)
	e.mu.Unlock()
	return &emptypb.Empty{}, nil
}

type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// A refusal leaves the connection up (other containers' forwards may be in
// flight on it); the forwarder dials again only after the connection
// failed.
func TestForwarderKeepsConnectionOnRefusal(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ttrpc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	es := &eventsServer{refuse: "/tasks/refused"}
	eventsapi.RegisterTTRPCEventsService(srv, es)
	go srv.Serve(context.Background(), cl)
	defer srv.Close()

	f := NewTTRPCForwarder("unix://" + sock)
	defer f.Close()
	env := func(topic string) *types.Envelope {
		return &types.Envelope{Namespace: "ns", Topic: topic}
	}
	ctx := context.Background()
	if err := f.Forward(ctx, env("/tasks/start")); err != nil {
		t.Fatal(err)
	}
	err = f.Forward(ctx, env("/tasks/refused"))
	if err == nil || errors.Is(err, ErrUnreachable) {
		t.Fatalf("refused forward: %v, want a refusal", err)
	}
	if err := f.Forward(ctx, env("/tasks/exit")); err != nil {
		t.Fatal(err)
	}
	if n := cl.accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want 1: a refusal dropped the connection", n)
	}
	f.mu.Lock()
	f.client.Close() // the connection breaks
	f.mu.Unlock()
	if err := f.Forward(ctx, env("/tasks/delete")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("forward on a closed connection: %v, want ErrUnreachable", err)
	}
	if err := f.Forward(ctx, env("/tasks/delete")); err != nil {
		t.Fatalf("forward after redial: %v", err)
	}
	if n := cl.accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	if !equal(es.got, []string{"/tasks/start", "/tasks/exit", "/tasks/delete"}) {
		t.Fatalf("containerd got %v", es.got)
	}
}
