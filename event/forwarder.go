package event

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// namespaceHeader is the ttrpc metadata key containerd reads the namespace
// from.
const namespaceHeader = "containerd-namespace-ttrpc"

const (
	// dialTimeout bounds connecting to containerd.
	dialTimeout = 5 * time.Second
	// answerTimeout bounds the wait for containerd's answer to one
	// forward on a live connection. containerd that is alive but stuck
	// (stopped, swapping, starting up) answers when it comes back, and a
	// forward sent again on a new connection would reach it twice; a
	// containerd that died closes the connection, which ends the wait at
	// once. So the wait is long, and only a request lost by a containerd
	// that still runs costs this much delay.
	answerTimeout = 2 * time.Minute
)

// TTRPCForwarder forwards envelopes to containerd's ttrpc events service.
// It dials lazily and redials after a failure of the connection, so a
// containerd restart costs one failed attempt, not the shim. The forwards
// of different containers' events share the connection.
type TTRPCForwarder struct {
	address string

	mu     sync.Mutex
	client *ttrpc.Client
}

// NewTTRPCForwarder returns a forwarder for containerd's ttrpc address
// (a socket path, with or without a unix:// prefix).
func NewTTRPCForwarder(address string) *TTRPCForwarder {
	return &TTRPCForwarder{address: strings.TrimPrefix(address, "unix://")}
}

// Forward implements Forwarder.
func (f *TTRPCForwarder) Forward(ctx context.Context, env *types.Envelope) error {
	c, err := f.connect()
	if err != nil {
		return err
	}
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{namespaceHeader: []string{env.Namespace}})
	ctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	_, err = eventsapi.NewTTRPCEventsClient(c).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	if err != nil {
		if !rejected(err) {
			// The connection may be broken: the next attempt dials
			// afresh. A refusal leaves it to the forwards of other
			// containers' events still in flight on it.
			f.drop(c)
			err = fmt.Errorf("%w: %w", err, ErrUnreachable)
		}
		return fmt.Errorf("forward %s: %w", env.Topic, err)
	}
	return nil
}

// rejected tells containerd's answer refusing an event from a transport
// failure (a closed connection, a timeout: containerd gone, restarting or
// stuck), after which it is worth trying again.
func rejected(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return false
	}
	return true
}

func (f *TTRPCForwarder) connect() (*ttrpc.Client, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.client != nil {
		return f.client, nil
	}
	if f.address == "" {
		return nil, fmt.Errorf("event: no containerd ttrpc address")
	}
	conn, err := net.DialTimeout("unix", f.address, dialTimeout)
	if err != nil {
		return nil, fmt.Errorf("dial containerd at %s: %w: %w", f.address, err, ErrUnreachable)
	}
	f.client = ttrpc.NewClient(conn)
	return f.client, nil
}

// drop closes c if it is still the current client, so the next attempt
// dials afresh.
func (f *TTRPCForwarder) drop(c *ttrpc.Client) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.client == c {
		f.client.Close()
		f.client = nil
	}
}

// Close releases the connection.
func (f *TTRPCForwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.client == nil {
		return nil
	}
	err := f.client.Close()
	f.client = nil
	return err
}
